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
