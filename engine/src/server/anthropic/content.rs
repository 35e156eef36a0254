//! Anthropic's content blocks as typed serde enums, and the flattening of a conversation's
//! messages into canonical [`ChatMessage`]s.
//!
//! A block whose `type` is unknown, or whose fields do not have their types, fails to
//! deserialize: the request is a 400 naming the block (`messages[2].content[0]`). What serde
//! cannot say (image input, a block in the wrong role, empty ids) is checked while flattening.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::super::errors::ApiError;
use crate::core::{ChatMessage, Role, ToolCall};

/// Claude Code (before 2.1.181) starts `system` with a block that changes on every request
/// (`x-anthropic-billing-header: cc_version=…; cch=…;`). It means nothing to a local model and
/// would defeat prefix reuse, so it is dropped.
const BILLING_HEADER_PREFIX: &str = "x-anthropic-billing-header";

/// A message's (or `system`'s) content: a string, or a list of blocks.
#[derive(Debug)]
pub enum Content<B> {
    Text(String),
    Blocks(Vec<B>),
}

impl<'de, B: Deserialize<'de>> Deserialize<'de> for Content<B> {
    // By hand rather than `#[serde(untagged)]`, so that a bad block reports its own path and
    // error instead of "did not match any variant".
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor<B>(std::marker::PhantomData<B>);

        impl<'de, B: Deserialize<'de>> Visitor<'de> for ContentVisitor<B> {
            type Value = Content<B>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of content blocks")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(s.to_string()))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Content::Text(s))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(block) = seq.next_element()? {
                    blocks.push(block);
                }
                Ok(Content::Blocks(blocks))
            }
        }

        deserializer.deserialize_any(ContentVisitor(std::marker::PhantomData))
    }
}

/// A block of a message's content.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    /// Refused: the served models have no vision.
    Image {},
    Document(Document),
    Thinking {
        /// Required in assistant turns (earlier reasoning); ignored in user turns.
        thinking: Option<String>,
    },
    /// Opaque: never shown to the model.
    RedactedThinking {},
    ToolUse {
        id: String,
        name: String,
        /// An object (the call's arguments); checked while flattening.
        input: Option<Value>,
    },
    ToolResult {
        tool_use_id: String,
        content: Option<Content<ResultBlock>>,
        #[serde(default, deserialize_with = "true_or_not")]
        is_error: bool,
    },
}

/// A block of a `tool_result`'s content.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResultBlock {
    Text {
        text: String,
    },
    Image {},
    Document(Document),
    /// Not shown to the model (it has nothing to read in them).
    SearchResult {},
    ToolReference {},
}

/// A `document` block (plain-text sources only).
#[derive(Debug, Deserialize)]
pub struct Document {
    source: DocumentSource,
    title: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DocumentSource {
    Text { data: String },
    Content { content: Content<SourceBlock> },
    Base64 {},
    Url {},
    File {},
}

/// A block of a `content` document source.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum SourceBlock {
    Text { text: String },
    Image {},
}

/// `is_error` counts only when it is `true`; anything else reads as false.
fn true_or_not<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Value::deserialize(deserializer)? == Value::Bool(true))
}

fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

fn image_unsupported(param: &str) -> ApiError {
    ApiError::unsupported(
        format!("{param}.type"),
        "image content is not supported: the served model has no vision (text only)",
    )
}

fn non_empty<'a>(value: &'a str, field: &str, param: &str) -> Result<&'a str, ApiError> {
    if value.is_empty() {
        return Err(invalid(
            format!("{param}.{field}"),
            format!("`{field}` must be a non-empty string"),
        ));
    }
    Ok(value)
}

impl Document {
    /// The document's text, its title first.
    fn text(&self, param: &str) -> Result<String, ApiError> {
        let text = match &self.source {
            DocumentSource::Text { data } => data.clone(),
            DocumentSource::Content {
                content: Content::Text(s),
            } => s.clone(),
            DocumentSource::Content {
                content: Content::Blocks(blocks),
            } => {
                let mut parts = Vec::with_capacity(blocks.len());
                for (k, b) in blocks.iter().enumerate() {
                    match b {
                        SourceBlock::Text { text } => parts.push(text.clone()),
                        SourceBlock::Image {} => {
                            return Err(image_unsupported(&format!("{param}.source.content[{k}]")))
                        }
                    }
                }
                parts.join("\n")
            }
            other => {
                let kind = match other {
                    DocumentSource::Base64 {} => "base64",
                    DocumentSource::Url {} => "url",
                    _ => "file",
                };
                return Err(ApiError::unsupported(
                    format!("{param}.source.type"),
                    format!("document sources of type '{kind}' are not supported (text only)"),
                ));
            }
        };
        Ok(match self.title.as_deref() {
            Some(title) if !title.is_empty() => format!("{title}\n\n{text}"),
            _ => text,
        })
    }
}

/// A `tool_result`'s content as text (`is_error` results are marked so the model can tell).
fn tool_result_text(
    content: &Option<Content<ResultBlock>>,
    is_error: bool,
    param: &str,
) -> Result<String, ApiError> {
    let text = match content {
        None => String::new(),
        Some(Content::Text(s)) => s.clone(),
        Some(Content::Blocks(parts)) => {
            let mut texts = Vec::new();
            for (k, part) in parts.iter().enumerate() {
                let p = format!("{param}.content[{k}]");
                match part {
                    ResultBlock::Text { text } => texts.push(text.clone()),
                    ResultBlock::Document(d) => texts.push(d.text(&p)?),
                    ResultBlock::Image {} => return Err(image_unsupported(&p)),
                    ResultBlock::SearchResult {} | ResultBlock::ToolReference {} => {}
                }
            }
            texts.join("\n")
        }
    };
    Ok(if is_error {
        format!("Error: {text}")
    } else {
        text
    })
}

/// Adds the system prompt of `content` (text only, billing header dropped) to `out`; `param`
/// names `content` in errors.
pub fn system_texts(
    content: &Content<Block>,
    param: &str,
    out: &mut Vec<String>,
) -> Result<(), ApiError> {
    let keep =
        |text: &str| !text.is_empty() && !text.trim_start().starts_with(BILLING_HEADER_PREFIX);
    match content {
        Content::Text(s) => {
            if keep(s) {
                out.push(s.clone());
            }
        }
        Content::Blocks(blocks) => {
            for (i, block) in blocks.iter().enumerate() {
                let Block::Text { text } = block else {
                    return Err(invalid(
                        format!("{param}[{i}].type"),
                        "`system` blocks must be of type 'text'",
                    ));
                };
                if keep(text) {
                    out.push(text.clone());
                }
            }
        }
    }
    Ok(())
}

/// One message of the request.
#[derive(Debug, Deserialize)]
pub struct InMessage {
    role: String,
    content: Content<Block>,
}

/// Flattens Anthropic's messages into canonical ones. `role: "system"` messages join the
/// system prompt; `tool_result` blocks become `Role::Tool` messages (in place, so that a
/// template sees them right after the call they answer).
pub fn messages_from(
    system: &Option<Content<Block>>,
    messages: &[InMessage],
) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "`messages` must not be empty"));
    }
    let mut system_parts = Vec::new();
    if let Some(system) = system {
        system_texts(system, "system", &mut system_parts)?;
    }
    let mut out: Vec<ChatMessage> = Vec::new();
    // tool_use id → tool name, so that results can name their tool.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err(invalid(
                    format!("{param}.role"),
                    format!("unknown role '{other}' (expected user or assistant)"),
                ))
            }
        };
        if role == Role::System {
            system_texts(&m.content, &format!("{param}.content"), &mut system_parts)?;
            continue;
        }
        let text_block;
        let blocks: &[Block] = match &m.content {
            Content::Text(s) => {
                text_block = [Block::Text { text: s.clone() }];
                &text_block
            }
            Content::Blocks(blocks) => blocks,
        };
        let mut current = ChatMessage {
            role: Some(role),
            ..ChatMessage::default()
        };
        let mut texts: Vec<String> = Vec::new();
        let mut reasoning: Vec<String> = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let p = format!("{param}.content[{j}]");
            match (block, role) {
                (Block::Text { text }, _) => texts.push(text.clone()),
                (Block::Image {}, _) => return Err(image_unsupported(&p)),
                (Block::Document(d), _) => texts.push(d.text(&p)?),
                (Block::Thinking { thinking }, Role::Assistant) => match thinking {
                    Some(t) => reasoning.push(t.clone()),
                    None => {
                        return Err(invalid(
                            format!("{p}.thinking"),
                            "a thinking block needs a string `thinking`",
                        ))
                    }
                },
                // Earlier thinking is not shown to the model again from a user turn; redacted
                // thinking is opaque.
                (Block::Thinking { .. } | Block::RedactedThinking {}, _) => {}
                (Block::ToolUse { id, name, input }, Role::Assistant) => {
                    let id = non_empty(id, "id", &p)?;
                    let name = non_empty(name, "name", &p)?;
                    let arguments = match input {
                        Some(input @ Value::Object(_)) => input.to_string(),
                        None => {
                            return Err(invalid(
                                format!("{p}.input"),
                                "a tool_use block needs `input` (an object)",
                            ))
                        }
                        Some(_) => {
                            return Err(invalid(
                                format!("{p}.input"),
                                "`input` of a tool_use must be an object",
                            ))
                        }
                    };
                    call_names.push((id.to_string(), name.to_string()));
                    current.tool_calls.push(ToolCall {
                        id: id.to_string(),
                        name: name.to_string(),
                        arguments,
                    });
                }
                (
                    Block::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    },
                    Role::User,
                ) => {
                    let id = non_empty(tool_use_id, "tool_use_id", &p)?;
                    let content = tool_result_text(content, *is_error, &p)?;
                    // Text before a result stays before it.
                    if !texts.is_empty() {
                        current.content = std::mem::take(&mut texts).join("\n");
                        out.push(std::mem::replace(
                            &mut current,
                            ChatMessage {
                                role: Some(role),
                                ..ChatMessage::default()
                            },
                        ));
                    }
                    let name = call_names
                        .iter()
                        .rev()
                        .find(|(call, _)| call == id)
                        .map(|(_, name)| name.clone());
                    out.push(ChatMessage {
                        role: Some(Role::Tool),
                        content,
                        tool_call_id: Some(id.to_string()),
                        name,
                        ..ChatMessage::default()
                    });
                }
                (Block::ToolUse { .. }, _) => {
                    return Err(invalid(
                        format!("{p}.type"),
                        "`tool_use` blocks belong in assistant messages",
                    ))
                }
                (Block::ToolResult { .. }, _) => {
                    return Err(invalid(
                        format!("{p}.type"),
                        "`tool_result` blocks belong in user messages",
                    ))
                }
            }
        }
        current.content = texts.join("\n");
        if !reasoning.is_empty() {
            current.reasoning = Some(reasoning.join("\n"));
        }
        let empty = current.content.is_empty()
            && current.tool_calls.is_empty()
            && current.reasoning.is_none();
        // A user turn made only of tool results has nothing left to send.
        let only_results = empty
            && role == Role::User
            && blocks.iter().any(|b| matches!(b, Block::ToolResult { .. }));
        if !only_results {
            out.push(current);
        }
    }
    if !system_parts.is_empty() {
        out.insert(
            0,
            ChatMessage {
                role: Some(Role::System),
                content: system_parts.join("\n\n"),
                ..ChatMessage::default()
            },
        );
    }
    Ok(out)
}
