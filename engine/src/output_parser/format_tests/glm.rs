use serde_json::json;

use super::super::{ParserSetup, ToolParser};
use super::support::*;

fn glm(tools: Vec<crate::core::ToolSpec>) -> ParserSetup {
    setup(ToolParser::Glm45, true, tools)
}

#[test]
fn calls_rendered_by_the_template_come_back() {
    let tools = vec![
        typed_tool(),
        tool(
            "get_weather",
            json!({"city": {"type": "string"}, "days": {"type": "integer"}}),
        ),
    ];
    let calls = [
        ("get_weather", json!({"city": "Beijing", "days": 3})),
        (
            "configure",
            json!({"path": "7", "count": 2, "ratio": 0.5, "force": true, "tags": ["a", "b"], "options": {"x": null}, "note": "multi\nline"}),
        ),
    ];
    let mut messages = conversation(&calls);
    messages[1]["reasoning_content"] = json!("Weather first.");
    let rendered = render("glm4.6.jinja", &messages, &tools, json!({}));
    let from = rendered.rfind("<|assistant|>").unwrap() + "<|assistant|>".len();
    let transcript = &rendered[from..];
    assert!(
        transcript.contains(
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>\n"
        ),
        "{transcript}"
    );
    let setup = glm(tools);
    let (events, saw) = run(&setup, &[transcript]);
    assert!(saw);
    assert_eq!(events[0], reasoning("Weather first."));
    let expected: Vec<(String, serde_json::Value)> = calls
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    assert_eq!(calls_of(&events), expected);
    check(&setup, transcript, &events);
}

#[test]
fn glm_4_5_layout_and_4_7_layout() {
    let tools = vec![tool(
        "get_weather",
        json!({"city": {"type": "string"}, "days": {"type": "integer"}}),
    )];
    let expected = [
        reasoning("Need weather."),
        start(0, "get_weather"),
        args(0, r#"{"city": "Beijing", "days": 3}"#),
    ];
    check(
        &glm(tools.clone()),
        "<think>Need weather.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
        &expected,
    );
    check(
        &glm(tools),
        "<think>Need weather.</think><tool_call>get_weather<arg_key>city</arg_key><arg_value>Beijing</arg_value><arg_key>days</arg_key><arg_value>3</arg_value></tool_call>",
        &expected,
    );
}

#[test]
fn undescribed_values_are_read_as_json() {
    // GLM's template writes non-strings with `tojson`, so its parsers decode what the schema
    // does not call a string.
    check(
        &glm(vec![tool("f", json!({"s": {"type": "string"}}))]),
        "<tool_call>f\n<arg_key>s</arg_key>\n<arg_value>42</arg_value>\n<arg_key>n</arg_key>\n<arg_value>42</arg_value>\n<arg_key>l</arg_key>\n<arg_value>[1, \"a\"]</arg_value>\n<arg_key>w</arg_key>\n<arg_value>some words</arg_value>\n</tool_call>",
        &[
            start(0, "f"),
            args(0, r#"{"s": "42", "n": 42, "l": [1,"a"], "w": "some words"}"#),
        ],
    );
    // A call without arguments, and one holding Hermes-style JSON.
    check(
        &glm(vec![tool("f", json!({}))]),
        "<tool_call>f\n</tool_call><tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>",
        &[start(0, "f"), args(0, "{}"), start(1, "f"), args(1, r#"{"a": 1}"#)],
    );
}

#[test]
fn malformed_markup_stays_text() {
    let setup = glm(vec![tool("f", json!({}))]);
    for input in [
        "<tool_call>not a name here</tool_call>",
        "<tool_call>f",
        "<tool_call>",
    ] {
        check(&setup, input, &[text(input)]);
    }
    check(
        &setup,
        "<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>cut",
        &[start(0, "f"), args(0, r#"{"a": "cut"}"#)],
    );
}
