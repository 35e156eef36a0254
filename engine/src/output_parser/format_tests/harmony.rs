use serde_json::json;

use super::super::{ParserSetup, ToolParser};
use super::support::*;

fn harmony(tools: Vec<crate::core::ToolSpec>) -> ParserSetup {
    // gpt-oss has no `<think>`: reasoning is its analysis channel whatever the config says.
    setup(ToolParser::Harmony, false, tools)
}

fn get_weather() -> crate::core::ToolSpec {
    tool("get_weather", json!({"location": {"type": "string"}}))
}

#[test]
fn the_guides_examples() {
    // OpenAI's harmony guide, "Example output" and "Receiving tool calls".
    let answer = [
        reasoning("User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer."),
        text("2 + 2 = 4."),
    ];
    let output = "<|channel|>analysis<|message|>User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer.<|end|><|start|>assistant<|channel|>final<|message|>2 + 2 = 4.";
    check(&harmony(vec![]), output, &answer);
    // As the guide prints it, a line per message, and with the stop token.
    let printed = output.replace("<|end|><|start|>", "<|end|>\n<|start|>") + "<|return|>";
    check(&harmony(vec![get_weather()]), &printed, &answer);
    check(
        &harmony(vec![get_weather()]),
        "<|channel|>analysis<|message|>Need to use function get_weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"San Francisco\"}<|call|>",
        &[
            reasoning("Need to use function get_weather."),
            start(0, "get_weather"),
            args(0, r#"{"location":"San Francisco"}"#),
        ],
    );
}

#[test]
fn a_preamble_is_answer_text() {
    // The guide's "Preambles" example: commentary without a recipient is meant for the user.
    let tools = vec![tool(
        "generate_file",
        json!({"template": {"type": "string"}, "path": {"type": "string"}}),
    )];
    check(
        &harmony(tools),
        "<|channel|>analysis<|message|>{long chain of thought}<|end|><|start|>assistant<|channel|>commentary<|message|>**Action plan**:\n1. Generate an HTML file\n2. Generate a JavaScript for the Node.js server\n3. Start the server\n---\nWill start executing the plan step by step<|end|><|start|>assistant<|channel|>commentary to=functions.generate_file<|constrain|>json<|message|>{\"template\": \"basic_html\", \"path\": \"index.html\"}<|call|>",
        &[
            reasoning("{long chain of thought}"),
            text("**Action plan**:\n1. Generate an HTML file\n2. Generate a JavaScript for the Node.js server\n3. Start the server\n---\nWill start executing the plan step by step"),
            start(0, "generate_file"),
            args(0, r#"{"template": "basic_html", "path": "index.html"}"#),
        ],
    );
}

#[test]
fn calls_rendered_by_the_template_come_back() {
    // The template writes the recipient before the channel and `json` without `<|constrain|>`.
    let tools = vec![get_weather()];
    let messages = conversation(&[("get_weather", json!({"location": "Tokyo"}))]);
    let rendered = render("gpt_oss.jinja", &messages, &tools, json!({}));
    let prompt_end = "<|start|>user<|message|>Please do it.<|end|><|start|>assistant";
    let transcript = &rendered[rendered.find(prompt_end).unwrap() + prompt_end.len()..];
    assert_eq!(
        transcript,
        " to=functions.get_weather<|channel|>commentary json<|message|>{\"location\": \"Tokyo\"}<|call|>"
    );
    check(
        &harmony(tools),
        transcript,
        &[start(0, "get_weather"), args(0, r#"{"location": "Tokyo"}"#)],
    );
}

#[test]
fn without_tools_calls_are_text_and_odd_output_is_kept() {
    check(
        &harmony(vec![]),
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"a\":1}<|call|>",
        &[text("{\"a\":1}")],
    );
    // Output that never looks like harmony is answer text as written.
    check(
        &harmony(vec![]),
        "Hello there, friend.",
        &[text("Hello there, friend.")],
    );
    check(
        &harmony(vec![get_weather()]),
        "<|channel|>final<|message|>Hi.<|end|>Stray text",
        &[text("Hi.Stray text")],
    );
    // A header cut off by the end holds no text; a call cut off stays a call.
    check(
        &harmony(vec![]),
        "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>fin",
        &[reasoning("hm")],
    );
    check_splits(
        &harmony(vec![get_weather()]),
        "<|channel|>commentary to=functions.get_weather<|message|>{\"loc",
        &[start(0, "get_weather"), args(0, "{\"loc")],
    );
    check(
        &harmony(vec![get_weather()]),
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|><|call|>",
        &[start(0, "get_weather"), args(0, "{}")],
    );
    // Built-in tools are not offered: their messages go where their channel goes.
    check(
        &harmony(vec![get_weather()]),
        "<|channel|>analysis to=python code<|message|>print(1)<|end|>",
        &[reasoning("print(1)")],
    );
}

#[test]
fn the_template_renders_tools_and_effort() {
    // Tools as the harmony guide's TypeScript namespace; Anthropic's thinking budget as effort.
    let tools = vec![get_weather()];
    let messages = json!([{"role": "user", "content": "Weather?"}]);
    let rendered = render(
        "gpt_oss.jinja",
        &messages,
        &tools,
        json!({"reasoning_budget": 31999}),
    );
    assert!(rendered.contains("Reasoning: high\n"), "{rendered}");
    assert!(
        rendered.contains("Calls to these tools must go to the commentary channel: 'functions'.")
    );
    assert!(rendered.contains("namespace functions {\n\n// The get_weather tool\ntype get_weather = (_: {\nlocation?: string,\n}) => any;"), "{rendered}");
    let effort = render(
        "gpt_oss.jinja",
        &messages,
        &[],
        json!({"reasoning_effort": "low"}),
    );
    assert!(effort.contains("Reasoning: low\n"));
}
