//! What the model reads: a canonical prompt rendered through the model's chat template (its
//! messages and tools in the shape Hugging Face chat templates expect) and tokenized.

use serde_json::{json, Map, Value};

use crate::core::{ChatMessage, CoreError, Prompt, Role, ToolChoice, ToolSpec};
use crate::text::tokenizer::{Tokenizer, TokenizerError};

/// A prompt as token ids, and what the output parser must know about how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPrompt {
    pub tokens: Vec<u32>,
    /// The rendered chat ends inside an open `<think>`: the model's first tokens are reasoning.
    pub starts_in_reasoning: bool,
    /// Tools were offered to the model, so its output may hold tool calls.
    pub tools: bool,
    /// Tokens before the chat's first message that is not a system one (its system prompt
    /// and tools as the template renders them): where conversations that share a system
    /// prompt part ways. 0 when not asked for (`PromptRenderer::mark_head`) or not a chat.
    pub head: usize,
}

/// One model's way of reading prompts: its tokenizer and chat template, and whether it
/// reasons (writes `<think>`).
pub struct PromptRenderer<'a> {
    /// The model's id, for errors.
    pub model: &'a str,
    pub tokenizer: &'a Tokenizer,
    /// Whether the model writes `<think>` reasoning.
    pub reasoning: bool,
    /// The model's default for `enable_thinking` when the request does not set it.
    pub thinking: bool,
    /// Whether to find where a chat's head ends (`RenderedPrompt::head`): for models whose
    /// prefix cache restores only where it took a snapshot, which then takes one there.
    pub mark_head: bool,
}

impl PromptRenderer<'_> {
    /// Renders and tokenizes `prompt`: chats through the chat template (tools described in
    /// the system prompt when the template ignores them), text with the tokenizer's special
    /// tokens (like mlx-lm), token ids as they are (checked against the vocabulary).
    pub fn render(&self, prompt: &Prompt) -> Result<RenderedPrompt, CoreError> {
        let tok = self.tokenizer;
        let bad = |e: TokenizerError| CoreError::Invalid(e.to_string());
        let plain = |tokens| RenderedPrompt {
            tokens,
            starts_in_reasoning: false,
            tools: false,
            head: 0,
        };
        match prompt {
            Prompt::Text(text) => Ok(plain(tok.encode(text, true).map_err(bad)?)),
            Prompt::Tokens(ids) => {
                let vocab = tok.vocab_size();
                if let Some(bad_id) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(CoreError::Invalid(format!(
                        "token id {bad_id} is outside the vocabulary (size {vocab})"
                    )));
                }
                Ok(plain(ids.clone()))
            }
            Prompt::Chat {
                messages,
                tools,
                tool_choice,
                template_kwargs,
                continue_final,
            } => {
                if !tok.has_chat_template() {
                    return Err(CoreError::Unsupported(format!(
                        "model '{}' has no chat template; use the completions endpoint",
                        self.model
                    )));
                }
                let tools_json = hf_tools(tools, tool_choice);
                let mut kwargs: Map<String, Value> = template_kwargs.clone();
                kwargs
                    .entry("enable_thinking")
                    .or_insert(Value::Bool(self.thinking));
                let mut hf = hf_messages(messages);
                if let Some(tools) = tools_json
                    .as_deref()
                    .filter(|_| !tok.template_renders_tools())
                {
                    describe_tools_in_system(&mut hf, tools);
                }
                let prefill = match messages.last() {
                    Some(last) if *continue_final && last.role == Some(Role::Assistant) => {
                        Some(last.content.as_str())
                    }
                    _ => None,
                };
                let text = match prefill {
                    None => tok
                        .apply_chat_template(&hf, tools_json.as_deref(), true, &kwargs)
                        .map_err(bad)?,
                    Some(partial) => {
                        // The whole chat without a generation prompt, cut right after the
                        // partial answer (dropping the template's end of turn); a template
                        // that changes the text (trimming it) gets the generation prompt of
                        // the chat before it, then the text.
                        let whole = tok
                            .apply_chat_template(&hf, tools_json.as_deref(), false, &kwargs)
                            .map_err(bad)?;
                        match whole.rfind(partial).filter(|_| !partial.is_empty()) {
                            Some(at) => whole[..at + partial.len()].to_string(),
                            None => {
                                let head = tok
                                    .apply_chat_template(
                                        &hf[..hf.len() - 1],
                                        tools_json.as_deref(),
                                        true,
                                        &kwargs,
                                    )
                                    .map_err(bad)?;
                                format!("{head}{partial}")
                            }
                        }
                    }
                };
                let starts_in_reasoning = self.reasoning && {
                    let t = text.trim_end();
                    t.rfind("<think>")
                        .is_some_and(|open| !t[open..].contains("</think>"))
                };
                let tokens = tok.encode(&text, false).map_err(bad)?;
                let head = match prefill {
                    None if self.mark_head => {
                        shared_head(tok, &hf, tools_json.as_deref(), &kwargs, &tokens)
                    }
                    _ => 0,
                };
                Ok(RenderedPrompt {
                    tokens,
                    head,
                    starts_in_reasoning,
                    tools: tools_json.is_some() && *tool_choice != ToolChoice::None,
                })
            }
        }
    }
}

/// How many of `tokens` (the rendered chat `hf`) come before its first message that is not a
/// system one: the chat rendered with that message's content replaced by a marker, cut at the
/// marker and tokenized, agrees with `tokens` that far. 0 when the template does not show the
/// marker (or fails).
fn shared_head(
    tok: &Tokenizer,
    hf: &[Value],
    tools: Option<&[Value]>,
    kwargs: &Map<String, Value>,
    tokens: &[u32],
) -> usize {
    const MARKER: &str = "\u{1}wuwei-head\u{1}";
    let is_system = |m: &Value| m.get("role").and_then(Value::as_str) == Some("system");
    let Some(first) = hf.iter().position(|m| !is_system(m)) else {
        return 0;
    };
    let mut marked = hf.to_vec();
    marked[first]["content"] = Value::String(MARKER.into());
    let Ok(text) = tok.apply_chat_template(&marked, tools, true, kwargs) else {
        return 0;
    };
    let Some(at) = text.find(MARKER) else {
        return 0;
    };
    let Ok(head) = tok.encode(&text[..at], false) else {
        return 0;
    };
    head.iter().zip(tokens).take_while(|(a, b)| a == b).count()
}

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

    /// A chat's head ends where two chats with its system prompt and tools but other first
    /// messages part ways; without a system prompt it is what the template puts before the
    /// first message; and it is found only when asked for.
    #[test]
    fn the_head_is_what_chats_sharing_a_system_prompt_share() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.deps/test-models/SmolLM2-135M-Instruct");
        let tok = Tokenizer::from_dir(&dir).expect("the test model's tokenizer");
        let message = |role, content: &str| ChatMessage {
            role: Some(role),
            content: content.into(),
            reasoning: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        };
        let chat = |messages: Vec<ChatMessage>| Prompt::Chat {
            messages,
            tools: vec![ToolSpec {
                name: "read_file".into(),
                description: Some("Reads a file.".into()),
                parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
            }],
            tool_choice: ToolChoice::Auto,
            template_kwargs: Map::new(),
            continue_final: false,
        };
        let system = "You are a careful coding agent. Follow the project's conventions.";
        let renderer = |mark_head| PromptRenderer {
            model: "m",
            tokenizer: &tok,
            reasoning: false,
            thinking: false,
            mark_head,
        };
        let render = |first: &str, mark_head| {
            let messages = vec![
                message(Role::System, system),
                message(Role::User, first),
                message(Role::Assistant, "Done."),
                message(Role::User, "Now the tests."),
            ];
            renderer(mark_head).render(&chat(messages)).unwrap()
        };
        let a = render("Fix the build.", true);
        let b = render("Write the docs.", true);
        let shared = a
            .tokens
            .iter()
            .zip(&b.tokens)
            .take_while(|(x, y)| x == y)
            .count();
        assert!(a.head > 20, "{}", a.head);
        assert_eq!((a.head, b.head), (shared, shared));
        assert_eq!(render("Fix the build.", false).head, 0);
        let bare = renderer(true)
            .render(&chat(vec![message(Role::User, "hi")]))
            .unwrap();
        let text = renderer(true)
            .render(&chat(vec![message(Role::User, "bye")]))
            .unwrap();
        let shared = bare
            .tokens
            .iter()
            .zip(&text.tokens)
            .take_while(|(x, y)| x == y)
            .count();
        assert_eq!(bare.head, shared);
    }
}
