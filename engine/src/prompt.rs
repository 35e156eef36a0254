//! Canonical chat messages and tools in the shape Hugging Face chat templates expect.

use serde_json::{json, Map, Value};

use crate::core::{ChatMessage, Role, ToolChoice, ToolSpec};

/// `messages` for a chat template. Tool-call arguments become objects when they are valid
/// JSON, since templates serialise them themselves (`arguments | tojson`).
pub fn hf_messages(messages: &[ChatMessage]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let role = match m.role.unwrap_or(Role::User) {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let mut o = Map::new();
            o.insert("role".into(), role.into());
            o.insert("content".into(), m.content.clone().into());
            if let Some(r) = &m.reasoning {
                o.insert("reasoning_content".into(), r.clone().into());
            }
            if !m.tool_calls.is_empty() {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let args = serde_json::from_str::<Value>(&c.arguments)
                            .ok()
                            .filter(Value::is_object)
                            .unwrap_or_else(|| c.arguments.clone().into());
                        json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": args}})
                    })
                    .collect();
                o.insert("tool_calls".into(), calls.into());
            }
            if let Some(id) = &m.tool_call_id {
                o.insert("tool_call_id".into(), id.clone().into());
            }
            if let Some(name) = &m.name {
                o.insert("name".into(), name.clone().into());
            }
            Value::Object(o)
        })
        .collect()
}

/// `tools` for a chat template, honouring `tool_choice` (`None` offers no tools; a named
/// choice offers only that tool). `None` when no tool is offered.
pub fn hf_tools(tools: &[ToolSpec], choice: &ToolChoice) -> Option<Vec<Value>> {
    let offered: Vec<&ToolSpec> = match choice {
        ToolChoice::None => return None,
        ToolChoice::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    if offered.is_empty() {
        return None;
    }
    Some(
        offered
            .into_iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name,
                    "description": t.description.clone().unwrap_or_default(),
                    "parameters": t.parameters,
                }})
            })
            .collect(),
    )
}

/// For chat templates that ignore `tools`: the tool definitions as a system-prompt preamble,
/// asking for the Hermes `<tool_call>` format the output parser reads. Prepended to the first
/// system message (or added as one), so the model still learns what it may call.
pub fn describe_tools_in_system(messages: &mut Vec<Value>, tools: &[Value]) {
    let mut text =
        String::from("You may call functions. Available functions, as JSON schemas:\n<tools>\n");
    for t in tools {
        text.push_str(&t.to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\nTo call a function, reply with one JSON object per call inside \
         <tool_call></tool_call> tags: <tool_call>{\"name\": <name>, \"arguments\": <object>}</tool_call>",
    );
    match messages.first_mut() {
        Some(Value::Object(first))
            if first.get("role").and_then(Value::as_str) == Some("system") =>
        {
            let old = first
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            first.insert(
                "content".into(),
                Value::String(format!("{old}\n\n{text}").trim_start().to_string()),
            );
        }
        _ => messages.insert(0, json!({"role": "system", "content": text})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_join_an_existing_system_message_or_create_one() {
        let tools = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
        let mut with_system = vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "hi"}),
        ];
        describe_tools_in_system(&mut with_system, &tools);
        assert_eq!(with_system.len(), 2);
        let sys = with_system[0]["content"].as_str().unwrap();
        assert!(
            sys.starts_with("Be brief.")
                && sys.contains("get_weather")
                && sys.contains("<tool_call>")
        );
        let mut bare = vec![json!({"role": "user", "content": "hi"})];
        describe_tools_in_system(&mut bare, &tools);
        assert_eq!(bare[0]["role"], "system");
        assert_eq!(bare[1]["role"], "user");
    }
}
