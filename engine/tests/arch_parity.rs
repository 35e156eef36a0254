//! Each supported architecture, with small random weights written by mlx-lm's own model classes
//! (dense and 4-bit quantized), gives the same logits as mlx-lm over a prompt and several
//! cached decode steps. Also checks that chunked prefill and batching with another sequence do
//! not change a sequence's logits.

use std::path::{Path, PathBuf};
use std::process::Command;

use mlx_rs::Array;
use serde_json::{json, Value};
use wuwei::kv_cache::DenseKvCache;
use wuwei::model::{load_model_dir, BatchSeq, LanguageModel, Logits, WeightsMode};

const TOLERANCE: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn python(args: &[&str]) -> String {
    let out = Command::new(root().join(".venv/bin/python"))
        .args(args)
        .output()
        .expect("run .venv/bin/python (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "python {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn make_model(arch: &str, bits: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = root().join("tests/reference/make_random_model.py");
    let mut args = vec![
        script.to_str().unwrap().to_string(),
        arch.into(),
        dir.path().to_str().unwrap().into(),
    ];
    if bits > 0 {
        args.extend([
            "--bits".into(),
            bits.to_string(),
            "--group-size".into(),
            "32".into(),
        ]);
    }
    python(&args.iter().map(String::as_str).collect::<Vec<_>>());
    dir
}

fn to_vec(a: &Array) -> Vec<f32> {
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn tokens(ids: &[u32]) -> Array {
    let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    Array::from_slice(&ids, &[1, ids.len() as i32])
}

fn assert_close(what: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let worst = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= TOLERANCE,
        "{what}: max |diff| {worst} > {TOLERANCE}"
    );
}

fn flatten(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flatten).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        _ => panic!("not numeric"),
    }
}

/// Prefill of `prompt` then one-token decode steps; returns (prompt logits, per-step logits).
fn run_ours(
    model: &dyn LanguageModel,
    prompt: &[u32],
    decode: &[u32],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut cache = DenseKvCache::new(model.num_layers());
    let mut batch = [BatchSeq {
        len: prompt.len(),
        cache: &mut cache,
    }];
    let p = to_vec(
        &model
            .forward(&tokens(prompt), &mut batch, Logits::All)
            .unwrap(),
    );
    let steps = decode
        .iter()
        .map(|&t| {
            let mut batch = [BatchSeq {
                len: 1,
                cache: &mut cache,
            }];
            to_vec(
                &model
                    .forward(&tokens(&[t]), &mut batch, Logits::Last)
                    .unwrap(),
            )
        })
        .collect();
    (p, steps)
}

fn check(arch: &str, bits: u32) {
    let dir = make_model(arch, bits);
    let prompt: Vec<u32> = vec![1, 17, 300, 42, 7, 99, 256, 3, 511, 64, 128];
    let decode: Vec<u32> = vec![5, 400, 33, 2];
    let spec = json!({"prompt": prompt, "decode": decode}).to_string();
    let script = root().join("tests/reference/mlx_lm_logits.py");
    let reference: Value = serde_json::from_str(&python(&[
        script.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        &spec,
    ]))
    .unwrap();

    let (_, model) = load_model_dir(dir.path(), WeightsMode::Native).unwrap();
    let (p, steps) = run_ours(model.as_ref(), &prompt, &decode);
    let what = format!("{arch} bits={bits}");
    assert_close(
        &format!("{what} prompt"),
        &p,
        &flatten(&reference["prompt"]),
    );
    for (i, step) in steps.iter().enumerate() {
        assert_close(
            &format!("{what} decode {i}"),
            step,
            &flatten(&reference["decode"][i]),
        );
    }

    // Chunked prefill (4 + rest) gives the same last-position logits.
    let mut cache = DenseKvCache::new(model.num_layers());
    let mut b = [BatchSeq {
        len: 4,
        cache: &mut cache,
    }];
    model
        .forward(&tokens(&prompt[..4]), &mut b, Logits::Last)
        .unwrap();
    let mut b = [BatchSeq {
        len: prompt.len() - 4,
        cache: &mut cache,
    }];
    let chunked = to_vec(
        &model
            .forward(&tokens(&prompt[4..]), &mut b, Logits::Last)
            .unwrap(),
    );
    let vocab = chunked.len();
    assert_close(
        &format!("{what} chunked prefill"),
        &chunked,
        &p[p.len() - vocab..],
    );

    // Batched with another sequence that is mid-decode: our sequence's logits are unchanged.
    let mut other = DenseKvCache::new(model.num_layers());
    let mut b = [BatchSeq {
        len: 3,
        cache: &mut other,
    }];
    model
        .forward(&tokens(&[9, 8, 7]), &mut b, Logits::Last)
        .unwrap();
    let mut mine = DenseKvCache::new(model.num_layers());
    let mut both: Vec<u32> = vec![6];
    both.extend(&prompt);
    let mut b = [
        BatchSeq {
            len: 1,
            cache: &mut other,
        },
        BatchSeq {
            len: prompt.len(),
            cache: &mut mine,
        },
    ];
    let batched = to_vec(&model.forward(&tokens(&both), &mut b, Logits::Last).unwrap());
    assert_close(
        &format!("{what} batched"),
        &batched[vocab..],
        &p[p.len() - vocab..],
    );
}

#[test]
fn llama_dense() {
    check("llama", 0);
}
#[test]
fn llama_q4() {
    check("llama", 4);
}
#[test]
fn llama3_rope_scaling_q8() {
    check("llama3", 8);
}
#[test]
fn qwen2_dense() {
    check("qwen2", 0);
}
#[test]
fn qwen2_q4() {
    check("qwen2", 4);
}
#[test]
fn qwen3_dense() {
    check("qwen3", 0);
}
#[test]
fn qwen3_q4() {
    check("qwen3", 4);
}
