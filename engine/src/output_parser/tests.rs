use super::*;

const PLAIN: ParserConfig = ParserConfig {
    reasoning: false,
    starts_in_reasoning: false,
    tools: false,
};
const THINK: ParserConfig = ParserConfig {
    reasoning: true,
    starts_in_reasoning: false,
    tools: false,
};
const TOOLS: ParserConfig = ParserConfig {
    reasoning: false,
    starts_in_reasoning: false,
    tools: true,
};
const ALL: ParserConfig = ParserConfig {
    reasoning: true,
    starts_in_reasoning: false,
    tools: true,
};

fn text(s: &str) -> Event {
    Event::Text(s.into())
}
fn reasoning(s: &str) -> Event {
    Event::Reasoning(s.into())
}
fn start(index: usize, name: &str) -> Event {
    Event::ToolCallStart {
        index,
        id: "call_X".into(),
        name: name.into(),
    }
}
fn args(index: usize, fragment: &str) -> Event {
    Event::ToolCallArguments {
        index,
        fragment: fragment.into(),
    }
}

/// Feeds `pieces`, checks the ids, and returns the merged events with ids replaced.
fn run(cfg: ParserConfig, pieces: &[&str]) -> (Vec<Event>, bool) {
    let mut parser = OutputParser::new(cfg);
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(parser.push(piece));
    }
    events.extend(parser.finish());
    let events = merge_events(events)
        .into_iter()
        .map(|e| match e {
            Event::ToolCallStart { index, id, name } => {
                assert!(id.starts_with("call_") && id.len() == 29, "{id}");
                Event::ToolCallStart {
                    index,
                    id: "call_X".into(),
                    name,
                }
            }
            other => other,
        })
        .collect();
    (events, parser.saw_tool_calls())
}

fn char_bounds(s: &str) -> Vec<usize> {
    (0..=s.len()).filter(|i| s.is_char_boundary(*i)).collect()
}

/// The whole input, every split into two and three pieces, and one char at a time all
/// give `expected`.
fn check(cfg: ParserConfig, input: &str, expected: &[Event]) {
    let (whole, saw) = run(cfg, &[input]);
    assert_eq!(whole, expected, "whole input {input:?}");
    let expect_saw = expected
        .iter()
        .any(|e| matches!(e, Event::ToolCallStart { .. }));
    assert_eq!(saw, expect_saw, "saw_tool_calls for {input:?}");
    let bounds = char_bounds(input);
    for &i in &bounds {
        let (got, _) = run(cfg, &[&input[..i], &input[i..]]);
        assert_eq!(got, expected, "split at {i} of {input:?}");
    }
    if bounds.len() <= 160 {
        for (n, &i) in bounds.iter().enumerate() {
            for &j in &bounds[n..] {
                let (got, _) = run(cfg, &[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, expected, "split at {i},{j} of {input:?}");
            }
        }
    }
    let chars: Vec<String> = input.chars().map(String::from).collect();
    let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
    let (got, _) = run(cfg, &pieces);
    assert_eq!(got, expected, "char by char {input:?}");
}

/// Arguments of call `index`, concatenated.
fn arguments_of(events: &[Event], index: usize) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCallArguments { index: i, fragment } if *i == index => {
                Some(fragment.as_str())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn plain_text_passes_through() {
    check(PLAIN, "Hello, world!", &[text("Hello, world!")]);
    check(PLAIN, "  a <b> c\n", &[text("  a <b> c\n")]);
    // Markup is not parsed when the model does not use it.
    check(PLAIN, "<think>x</think>", &[text("<think>x</think>")]);
    check(
        PLAIN,
        "<tool_call>{\"name\":\"f\"}</tool_call>",
        &[text("<tool_call>{\"name\":\"f\"}</tool_call>")],
    );
    check(TOOLS, "é😀 ünïcode", &[text("é😀 ünïcode")]);
    check(PLAIN, "", &[]);
}

#[test]
fn reasoning_blocks() {
    check(
        THINK,
        "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
        &[reasoning("Let me think."), text("The answer is 4.")],
    );
    check(
        THINK,
        "Before <think>mid</think> after",
        &[text("Before"), reasoning("mid"), text("after")],
    );
    // Never closed: stays reasoning.
    check(
        THINK,
        "<think>still thinking",
        &[reasoning("still thinking")],
    );
    // Partial tag at the end that never completes is text.
    check(THINK, "a <thi", &[text("a <thi")]);
    check(THINK, "x < y", &[text("x < y")]);
}

#[test]
fn reasoning_opened_by_the_prompt() {
    let cfg = ParserConfig {
        reasoning: true,
        starts_in_reasoning: true,
        tools: false,
    };
    check(
        cfg,
        "\nhmm, 2+2\n</think>\n\n4",
        &[reasoning("hmm, 2+2"), text("4")],
    );
    check(cfg, "never closed <b>", &[reasoning("never closed <b>")]);
    check(cfg, "</think>answer", &[text("answer")]);
}

#[test]
fn hermes_single_call() {
    let input = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
    let expected = [
        start(0, "get_weather"),
        args(0, "{\"city\": \"Paris\", \"unit\": \"c\"}"),
    ];
    check(TOOLS, input, &expected);
    // Text before the call is kept, the whitespace before the tag is not.
    let with_text = format!("Let me check.\n{input}");
    let mut expected_text = vec![text("Let me check.")];
    expected_text.extend(expected.iter().cloned());
    check(TOOLS, &with_text, &expected_text);
}

#[test]
fn hermes_several_calls_and_reasoning() {
    let input = "<think>need two</think>\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"q\": [1, {\"x\": \"}\"}]}}\n</tool_call>\n";
    check(
        ALL,
        input,
        &[
            reasoning("need two"),
            start(0, "a"),
            args(0, "{}"),
            start(1, "b"),
            args(1, "{\"q\": [1, {\"x\": \"}\"}]}"),
        ],
    );
}

#[test]
fn hermes_arguments_stream_before_the_call_closes() {
    let mut parser = OutputParser::new(TOOLS);
    let mut events = parser.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": ");
    assert!(matches!(&events[0], Event::ToolCallStart { index: 0, name, .. } if name == "f"));
    assert_eq!(events[1], args(0, "{\"a\": "));
    events = parser.push("\"long");
    assert_eq!(events, vec![args(0, "\"long")]);
    events = parser.push(" text\"}}\n</tool_call>");
    assert_eq!(events, vec![args(0, " text\"}")]);
    assert!(parser.finish().is_empty());
    assert!(parser.saw_tool_calls());
}

#[test]
fn hermes_odd_shapes() {
    // Arguments before the name, as a string, missing, or null.
    check(
        TOOLS,
        "<tool_call>{\"arguments\": {\"k\": 1}, \"name\": \"f\"}</tool_call>",
        &[start(0, "f"), args(0, "{\"k\": 1}")],
    );
    check(
        TOOLS,
        "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"k\\\": 1}\"}</tool_call>",
        &[start(0, "f"), args(0, "{\"k\": 1}")],
    );
    check(
        TOOLS,
        "<tool_call>{\"name\": \"f\"}</tool_call>",
        &[start(0, "f"), args(0, "{}")],
    );
    check(
        TOOLS,
        "<tool_call>{\"name\": \"f\", \"arguments\": null}</tool_call>",
        &[start(0, "f"), args(0, "{}")],
    );
    check(
        TOOLS,
        "<tool_call>{\"name\": \"f\\u00e9\", \"id\": 3, \"arguments\": {}}</tool_call>",
        &[start(0, "fé"), args(0, "{}")],
    );
}

#[test]
fn broken_tool_calls_fall_back_to_text() {
    check(
        TOOLS,
        "<tool_call>not json</tool_call> ok",
        &[text("<tool_call>not json</tool_call> ok")],
    );
    check(
        TOOLS,
        "<tool_call>{\"arguments\": {}}</tool_call>",
        &[text("<tool_call>{\"arguments\": {}}</tool_call>")],
    );
    // Cut before the call was announced.
    check(
        TOOLS,
        "<tool_call>\n{\"name\": \"f\"",
        &[text("<tool_call>\n{\"name\": \"f\"")],
    );
    // Cut inside the arguments: stays a call with what arrived.
    check(
        TOOLS,
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1,",
        &[start(0, "f"), args(0, "{\"a\": [1,")],
    );
}

#[test]
fn llama_json_calls() {
    let input = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
    let expected = [start(0, "get_weather"), args(0, "{\"city\": \"Oslo\"}")];
    check(TOOLS, input, &expected);
    check(TOOLS, &format!("<|python_tag|>{input}"), &expected);
    check(TOOLS, &format!("\n {input}\n"), &expected);
    let two =
        "{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}";
    check(
        TOOLS,
        two,
        &[
            start(0, "a"),
            args(0, "{\"x\": 1}"),
            start(1, "b"),
            args(1, "{}"),
        ],
    );
    // After thinking.
    check(
        ALL,
        &format!("<think>call it</think>\n\n{input}"),
        &[
            reasoning("call it"),
            start(0, "get_weather"),
            args(0, "{\"city\": \"Oslo\"}"),
        ],
    );
}

#[test]
fn json_answers_that_are_not_calls_stay_text() {
    for input in [
        "{\"name\": \"Bob\", \"age\": 3}",
        "{\"a\": 1} and more",
        "{not json at all",
        "{\"name\": 5, \"parameters\": {}}",
    ] {
        check(TOOLS, input, &[text(input)]);
    }
    // Without tools, JSON is never a call.
    let call = "{\"name\": \"f\", \"parameters\": {}}";
    check(PLAIN, call, &[text(call)]);
    // JSON later in the answer is not a Llama call.
    let later = format!("Here: {call}");
    check(TOOLS, &later, &[text(&later)]);
    // Text after a Llama call is text.
    check(
        TOOLS,
        "{\"name\": \"f\", \"parameters\": {}}\nDone.",
        &[start(0, "f"), args(0, "{}"), text("Done.")],
    );
}

#[test]
fn concatenated_arguments_are_the_original_json() {
    let arguments = "{\"query\": \"a \\\"quoted\\\" {brace}\", \"n\": [1, 2.5e3, true, null], \"o\": {\"p\": \"</tool_call\"}}";
    let input =
        format!("<tool_call>\n{{\"name\": \"search\", \"arguments\": {arguments}}}\n</tool_call>");
    let (events, _) = run(TOOLS, &[&input]);
    assert_eq!(arguments_of(&events, 0), arguments);
    let value: Value = serde_json::from_str(&arguments_of(&events, 0)).unwrap();
    assert_eq!(value["n"][1], 2500.0);
    // Char by char streams many fragments that still join to the same text.
    let mut parser = OutputParser::new(TOOLS);
    let mut fragments = 0;
    let mut joined = String::new();
    for c in input.chars() {
        for e in parser.push(&c.to_string()) {
            if let Event::ToolCallArguments { fragment, .. } = e {
                fragments += 1;
                joined.push_str(&fragment);
            }
        }
    }
    parser.finish();
    assert!(fragments > 10);
    assert_eq!(joined, arguments);
}

#[test]
fn ids_are_unique() {
    let (mut a, mut b) = (OutputParser::new(TOOLS), OutputParser::new(TOOLS));
    let input = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
    let id = |events: Vec<Event>| match &events[0] {
        Event::ToolCallStart { id, .. } => id.clone(),
        other => panic!("{other:?}"),
    };
    assert_ne!(id(a.push(input)), id(b.push(input)));
}
