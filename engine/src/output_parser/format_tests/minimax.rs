use serde_json::json;

use super::super::{ParserConfig, ParserSetup, ToolParser};
use super::support::*;

fn search_web() -> crate::core::ToolSpec {
    // The tool of MiniMax-M2's tool-calling guide.
    tool(
        "search_web",
        json!({
            "query_list": {"description": "Keywords for search, list should contain 1 element.",
                           "items": {"type": "string"}, "type": "array"},
            "query_tag": {"description": "Category of query", "items": {"type": "string"}, "type": "array"}
        }),
    )
}

fn get_weather() -> crate::core::ToolSpec {
    tool(
        "get_weather",
        json!({"location": {"type": "string"}, "unit": {"type": "string"}}),
    )
}

fn minimax(tools: Vec<crate::core::ToolSpec>) -> ParserSetup {
    setup(ToolParser::MiniMax, true, tools)
}

#[test]
fn the_guides_examples() {
    let input = "<minimax:tool_call>\n<invoke name=\"search_web\">\n<parameter name=\"query_tag\">[\"technology\", \"events\"]</parameter>\n<parameter name=\"query_list\">[\"\\\"OpenAI\\\" \\\"latest\\\" \\\"release\\\"\"]</parameter>\n</invoke>\n<invoke name=\"search_web\">\n<parameter name=\"query_tag\">[\"technology\", \"events\"]</parameter>\n<parameter name=\"query_list\">[\"\\\"Gemini\\\" \\\"latest\\\" \\\"release\\\"\"]</parameter>\n</invoke>\n</minimax:tool_call>";
    check(
        &minimax(vec![search_web()]),
        input,
        &[
            start(0, "search_web"),
            args(
                0,
                r#"{"query_tag": ["technology","events"], "query_list": ["\"OpenAI\" \"latest\" \"release\""]}"#,
            ),
            start(1, "search_web"),
            args(
                1,
                r#"{"query_tag": ["technology","events"], "query_list": ["\"Gemini\" \"latest\" \"release\""]}"#,
            ),
        ],
    );
    let input = "Let me help you query the weather.\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"location\">San Francisco</parameter>\n<parameter name=\"unit\">celsius</parameter>\n</invoke>\n</minimax:tool_call>";
    check(
        &minimax(vec![get_weather()]),
        input,
        &[
            text("Let me help you query the weather."),
            start(0, "get_weather"),
            args(0, r#"{"location": "San Francisco", "unit": "celsius"}"#),
        ],
    );
}

#[test]
fn thinking_opened_by_the_prompt() {
    // The template's generation prompt ends with `<think>\n`.
    let mut setup = minimax(vec![get_weather()]);
    setup.config = ParserConfig {
        reasoning: true,
        starts_in_reasoning: true,
        tools: true,
    };
    check(
        &setup,
        "The user wants Paris.\n</think>\n\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"location\">\nParis\n</parameter>\n</invoke>\n</minimax:tool_call>",
        &[
            reasoning("The user wants Paris."),
            start(0, "get_weather"),
            args(0, r#"{"location": "Paris"}"#),
        ],
    );
}

#[test]
fn calls_rendered_by_the_template_come_back() {
    let tools = vec![typed_tool(), get_weather()];
    let calls = [
        (
            "get_weather",
            json!({"location": "Zürich", "unit": "celsius"}),
        ),
        (
            "configure",
            json!({"path": "x/y.rs", "count": 2, "ratio": 1.5, "force": false, "tags": ["a"], "options": {"k": [1, 2]}}),
        ),
    ];
    let mut messages = conversation(&calls);
    messages[1]["content"] = json!("Checking both.");
    messages[1]["reasoning_content"] = json!("Two tools needed.");
    let rendered = render("minimax_m2.jinja", &messages, &tools, json!({}));
    let from = rendered.rfind("]~b]ai\n").unwrap() + "]~b]ai\n".len();
    let to = rendered.rfind("[e~[").unwrap();
    let transcript = &rendered[from..to];
    assert!(
        transcript.starts_with("<think>\nTwo tools needed.\n</think>"),
        "{transcript}"
    );
    let setup = minimax(tools);
    let (events, saw) = run(&setup, &[transcript]);
    assert!(saw);
    assert_eq!(events[0], reasoning("Two tools needed."));
    assert_eq!(events[1], text("Checking both."));
    let expected: Vec<(String, serde_json::Value)> = calls
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    assert_eq!(calls_of(&events), expected);
    check(&setup, transcript, &events);
}

#[test]
fn malformed_markup_stays_text() {
    let setup = minimax(vec![get_weather()]);
    for input in [
        "<minimax:tool_call>\nno call here\n</minimax:tool_call>",
        "<minimax:tool_call><invoke name=\"bad name\"></invoke></minimax:tool_call>",
        "<minimax:tool_call>\n<invoke name=\"get_wea",
    ] {
        check(&setup, input, &[text(input)]);
    }
    // Cut inside a call: it stands, its JSON closed.
    check(
        &setup,
        "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"location\">Par",
        &[start(0, "get_weather"), args(0, r#"{"location": "Par"}"#)],
    );
    // Unquoted names; a block ended by the end of the generation.
    check(
        &setup,
        "<minimax:tool_call><invoke name=get_weather><parameter name=unit>c</parameter></invoke>",
        &[start(0, "get_weather"), args(0, r#"{"unit": "c"}"#)],
    );
}
