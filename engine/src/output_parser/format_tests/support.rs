//! What the format tests share: building a parser, feeding it in every split, and rendering
//! the real chat templates (fixtures) to get transcripts the models were trained on.

use serde_json::{json, Map, Value};

use super::super::emit::merge_events;
use super::super::{OutputParser, ParserConfig, ParserSetup, ToolParser};
use crate::chat_template::ChatTemplates;
use crate::core::{Event, ToolSpec};

pub fn setup(format: ToolParser, reasoning: bool, tools: Vec<ToolSpec>) -> ParserSetup {
    ParserSetup {
        config: ParserConfig {
            reasoning,
            starts_in_reasoning: false,
            tools: !tools.is_empty(),
        },
        format,
        tools,
    }
}

pub fn tool(name: &str, properties: Value) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: Some(format!("The {name} tool")),
        parameters: json!({"type": "object", "properties": properties}),
    }
}

/// A tool with parameters of every type.
pub fn typed_tool() -> ToolSpec {
    tool(
        "configure",
        json!({
            "path": {"type": "string"},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "force": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "object"},
            "note": {"type": ["string", "null"]}
        }),
    )
}

pub fn text(s: &str) -> Event {
    Event::Text(s.into())
}
pub fn reasoning(s: &str) -> Event {
    Event::Reasoning(s.into())
}
pub fn start(index: usize, name: &str) -> Event {
    Event::ToolCallStart {
        index,
        id: "call_X".into(),
        name: name.into(),
    }
}
pub fn args(index: usize, fragment: &str) -> Event {
    Event::ToolCallArguments {
        index,
        fragment: fragment.into(),
    }
}

/// Feeds `pieces` and returns the merged events (ids checked, then replaced) and whether
/// the parser saw tool calls.
pub fn run(setup: &ParserSetup, pieces: &[&str]) -> (Vec<Event>, bool) {
    let mut parser = OutputParser::with_setup(setup.clone());
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
                start(index, &name)
            }
            other => other,
        })
        .collect();
    (events, parser.saw_tool_calls())
}

/// The whole input, every split into two pieces, one char at a time and (for short inputs)
/// every split into three pieces all give `expected`; every call's arguments are JSON.
pub fn check(setup: &ParserSetup, input: &str, expected: &[Event]) {
    check_splits(setup, input, expected);
    let calls = expected
        .iter()
        .filter(|e| matches!(e, Event::ToolCallStart { .. }))
        .count();
    for index in 0..calls {
        let arguments = arguments_of(expected, index);
        assert!(
            serde_json::from_str::<Value>(&arguments).is_ok_and(|v| v.is_object()),
            "arguments of call {index} are not a JSON object: {arguments}"
        );
    }
}

/// [`check`] for output cut inside a call whose arguments stream as written.
pub fn check_splits(setup: &ParserSetup, input: &str, expected: &[Event]) {
    let (whole, saw) = run(setup, &[input]);
    assert_eq!(whole, expected, "whole input {input:?}");
    let calls = expected
        .iter()
        .filter(|e| matches!(e, Event::ToolCallStart { .. }))
        .count();
    assert_eq!(saw, calls > 0, "saw_tool_calls for {input:?}");
    let bounds: Vec<usize> = (0..=input.len())
        .filter(|i| input.is_char_boundary(*i))
        .collect();
    for &i in &bounds {
        let (got, _) = run(setup, &[&input[..i], &input[i..]]);
        assert_eq!(got, expected, "split at {i} of {input:?}");
    }
    let chars: Vec<String> = input.chars().map(String::from).collect();
    let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(run(setup, &pieces).0, expected, "char by char {input:?}");
    if bounds.len() <= 120 {
        for (n, &i) in bounds.iter().enumerate() {
            for &j in &bounds[n..] {
                let (got, _) = run(setup, &[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, expected, "split at {i},{j} of {input:?}");
            }
        }
    }
}

/// Arguments of call `index`, concatenated.
pub fn arguments_of(events: &[Event], index: usize) -> String {
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

pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/templates")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders fixture `template` the way the registry does (HF-style messages and tools).
pub fn render(template: &str, messages: &Value, tools: &[ToolSpec], extra: Value) -> String {
    let templates = ChatTemplates::new(vec![("default".into(), fixture(template))]).unwrap();
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters}})
        })
        .collect();
    let Value::Object(extra) = extra else {
        panic!("extra kwargs must be an object")
    };
    templates
        .render(
            messages.as_array().unwrap(),
            (!tools.is_empty()).then_some(tools.as_slice()),
            false,
            &Map::new(),
            &extra,
        )
        .unwrap()
}

/// An assistant turn calling `calls` (name, arguments), after a user turn.
pub fn conversation(calls: &[(&str, Value)]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            json!({"id": format!("call_{i}"), "type": "function",
                   "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    json!([
        {"role": "user", "content": "Please do it."},
        {"role": "assistant", "content": "", "tool_calls": calls}
    ])
}

/// The calls in `events`, as (name, parsed arguments).
pub fn calls_of(events: &[Event]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCallStart { index, name, .. } => {
                let arguments = arguments_of(events, *index);
                let value = serde_json::from_str(&arguments)
                    .unwrap_or_else(|e| panic!("call {index} arguments {arguments:?}: {e}"));
                Some((name.clone(), value))
            }
            _ => None,
        })
        .collect()
}
