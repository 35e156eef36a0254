//! Bad MLX-format model folders fail with a clear error naming the file at fault, never a
//! panic: missing or truncated weights, a shard listed in the index but absent, an unknown
//! model_type, a missing tokenizer, a malformed config.

mod common;

use std::fs;
use std::path::Path;

use common::{python, root};
use wuwei::model::{load_model_dir, WeightsMode};

/// A small random-weight llama folder written by mlx-lm's own classes.
fn model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = root().join("tests/reference/make_random_model.py");
    python(&[
        script.to_str().unwrap(),
        "llama",
        dir.path().to_str().unwrap(),
    ]);
    dir
}

fn load_error(dir: &Path) -> String {
    match load_model_dir(dir, WeightsMode::Native) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_random_model_itself_loads() {
    let dir = model();
    load_model_dir(dir.path(), WeightsMode::Native).expect("a complete folder loads");
}

#[test]
fn missing_weights_name_the_file() {
    let dir = model();
    fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn truncated_weights_name_the_file() {
    let dir = model();
    let path = dir.path().join("model.safetensors");
    let len = fs::metadata(&path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn shard_listed_in_index_but_missing_is_named() {
    let dir = model();
    fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}});
    fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn unknown_model_type_is_named() {
    let dir = model();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    config["model_type"] = "bloom".into();
    fs::write(&path, config.to_string()).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("bloom") && e.contains("config.json"), "{e}");
}

#[test]
fn malformed_config_is_named() {
    let dir = model();
    fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\",",
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("config.json"), "{e}");
    fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\"}",
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer_is_named() {
    let dir = model();
    let e = match wuwei::loader::load(dir.path(), WeightsMode::Native) {
        Ok(_) => panic!("a folder without tokenizer.json must not load"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("tokenizer.json"), "{e}");
}
