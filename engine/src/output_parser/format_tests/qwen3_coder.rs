use serde_json::json;

use super::super::ToolParser;
use super::support::*;

fn qwen(tools: Vec<crate::core::ToolSpec>) -> super::super::ParserSetup {
    setup(ToolParser::Qwen3Coder, true, tools)
}

#[test]
fn the_templates_own_example() {
    // The format the template tells the model to use, as its system prompt shows it.
    let template = fixture("qwen3_coder.jinja");
    let from = template.find("NO suffix:\\n\\n").unwrap() + "NO suffix:\\n\\n".len();
    let to = template.find("\\n\\n<IMPORTANT>").unwrap();
    let example = template[from..to].replace("\\n", "\n");
    assert!(example.starts_with("<tool_call>\n<function=example_function_name>\n"));
    check(
        &qwen(vec![typed_tool()]),
        &example,
        &[
            start(0, "example_function_name"),
            args(
                0,
                r#"{"example_parameter_1": "value_1", "example_parameter_2": "This is the value for the second parameter\nthat can span\nmultiple lines"}"#,
            ),
        ],
    );
}

#[test]
fn calls_rendered_by_the_template_come_back() {
    let tools = vec![
        typed_tool(),
        tool(
            "write_file",
            json!({"path": {"type": "string"}, "content": {"type": "string"}}),
        ),
    ];
    let calls = [
        (
            "write_file",
            json!({"path": "src/a.py", "content": "def f(x):\n    if x < 2:\n        return \"</div>\"\n    return x\n"}),
        ),
        (
            "configure",
            json!({"path": "a b", "count": 3, "ratio": 0.25, "force": true, "tags": ["x", "y"], "options": {"deep": {"n": 1}}, "note": null}),
        ),
    ];
    let rendered = render(
        "qwen3_coder.jinja",
        &conversation(&calls),
        &tools,
        json!({}),
    );
    let from = rendered.rfind("<|im_start|>assistant").unwrap() + "<|im_start|>assistant".len();
    let to = rendered.rfind("<|im_end|>").unwrap();
    let transcript = &rendered[from..to];
    assert!(
        transcript.contains("<parameter=content>\ndef f(x):"),
        "{transcript}"
    );
    let (events, saw) = run(&qwen(tools.clone()), &[transcript]);
    assert!(saw);
    let expected: Vec<(String, serde_json::Value)> = calls
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    assert_eq!(calls_of(&events), expected);
    check(&qwen(tools), transcript, &events);
}

#[test]
fn values_are_typed_by_the_schema() {
    let input = "<tool_call>\n<function=configure>\n<parameter=path>\nsrc/main.rs\n</parameter>\n<parameter=count>\n3\n</parameter>\n<parameter=ratio>\n0.5\n</parameter>\n<parameter=force>\nTrue\n</parameter>\n<parameter=tags>\n['a', 'b']\n</parameter>\n<parameter=options>\n{\"depth\": 2, \"fast\": false}\n</parameter>\n<parameter=note>\nnull\n</parameter>\n<parameter=extra>\n42\n</parameter>\n</function>\n</tool_call>";
    check(
        &qwen(vec![typed_tool()]),
        input,
        &[
            start(0, "configure"),
            args(
                0,
                r#"{"path": "src/main.rs", "count": 3, "ratio": 0.5, "force": true, "tags": ["a","b"], "options": {"depth":2,"fast":false}, "note": null, "extra": "42"}"#,
            ),
        ],
    );
    // Text that fits no allowed type stays a string rather than being lost.
    check(
        &qwen(vec![typed_tool()]),
        "<tool_call>\n<function=configure>\n<parameter=count>\nthree\n</parameter>\n</function>\n</tool_call>",
        &[start(0, "configure"), args(0, r#"{"count": "three"}"#)],
    );
}

#[test]
fn the_opening_tag_may_be_missing() {
    let tools = vec![typed_tool()];
    check(
        &qwen(tools.clone()),
        "I'll check.\n\n<function=configure>\n<parameter=path>\n/tmp/a.txt\n</parameter>\n</function>\n</tool_call>",
        &[
            text("I'll check."),
            start(0, "configure"),
            args(0, r#"{"path": "/tmp/a.txt"}"#),
        ],
    );
    check(
        &qwen(tools),
        "<function=configure>\n<parameter=count>\n1\n</parameter>\n</function>\nDone.",
        &[
            start(0, "configure"),
            args(0, r#"{"count": 1}"#),
            text("Done."),
        ],
    );
}

#[test]
fn reasoning_several_calls_and_json_calls() {
    let input = "<think>\nTwo files.\n</think>\n\n<tool_call>\n<function=read>\n<parameter=path>\na\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=read>\n</function>\n</tool_call>\n<tool_call>\n{\"name\": \"read\", \"arguments\": {\"path\": \"c\"}}\n</tool_call>";
    check(
        &qwen(vec![typed_tool()]),
        input,
        &[
            reasoning("Two files."),
            start(0, "read"),
            args(0, r#"{"path": "a"}"#),
            start(1, "read"),
            args(1, "{}"),
            start(2, "read"),
            args(2, r#"{"path": "c"}"#),
        ],
    );
    // Two functions in one block; a value ended by the next parameter's tag (vLLM's reading).
    check(
        &qwen(vec![typed_tool()]),
        "<tool_call>\n<function=a>\n<parameter=x>\n1\n<parameter=y>\n2\n</parameter>\n</function>\n<function=b>\n</function>\n</tool_call>",
        &[
            start(0, "a"),
            args(0, r#"{"x": "1", "y": "2"}"#),
            start(1, "b"),
            args(1, "{}"),
        ],
    );
}

#[test]
fn string_values_stream_and_keep_their_whitespace() {
    let tools = vec![tool("write", json!({"content": {"type": "string"}}))];
    let mut parser = super::super::OutputParser::with_setup(qwen(tools));
    let mut joined = String::new();
    let mut fragments = 0;
    let input = "<tool_call>\n<function=write>\n<parameter=content>\n\n  indented\n\tline\n\n</parameter>\n</function>\n</tool_call>";
    for c in input.chars() {
        for e in parser.push(&c.to_string()) {
            if let crate::core::Event::ToolCallArguments { fragment, .. } = e {
                fragments += 1;
                joined.push_str(&fragment);
            }
        }
    }
    for e in parser.finish() {
        if let crate::core::Event::ToolCallArguments { fragment, .. } = e {
            joined.push_str(&fragment);
        }
    }
    assert!(
        fragments > 10,
        "the value streamed in {fragments} fragments"
    );
    assert_eq!(joined, r#"{"content": "\n  indented\n\tline\n"}"#);
}

#[test]
fn malformed_markup_stays_text() {
    let setup = qwen(vec![typed_tool()]);
    for input in [
        "<tool_call>\nnot a call\n</tool_call> ok",
        "See <function=the docs> for more.",
        "a <function=\nb",
        "<tool_call>\n<function=read",
    ] {
        let (events, saw) = run(&setup, &[input]);
        assert!(!saw, "{input:?}");
        let all: String = events
            .iter()
            .map(|e| match e {
                crate::core::Event::Text(t) => t.as_str(),
                other => panic!("{other:?} from {input:?}"),
            })
            .collect();
        // Only the whitespace right before the markup goes (as with Hermes calls).
        assert_eq!(all.replace(' ', ""), input.replace(' ', ""), "{input:?}");
    }
    check(
        &setup,
        "<tool_call>\nnot a call\n</tool_call>",
        &[text("<tool_call>\nnot a call\n</tool_call>")],
    );
    // Cut inside a value: the call stands with what arrived, its JSON closed.
    check(
        &setup,
        "<tool_call>\n<function=configure>\n<parameter=path>\nsrc/ma",
        &[start(0, "configure"), args(0, r#"{"path": "src/ma"}"#)],
    );
    // Without tools offered, nothing is a call.
    let input = "<tool_call>\n<function=f>\n</function>\n</tool_call>";
    check(&qwen(vec![]), input, &[text(input)]);
}
