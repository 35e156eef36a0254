//! Splits a model's streamed text into answer text, reasoning and tool calls.
//!
//! The parser is fed detokenized text in arbitrary fragments (a tag may be split anywhere) and
//! returns [`Event`]s as soon as they are certain. It holds back only what could still turn
//! out to be markup: a partial tag, whitespace next to markup, or a JSON object at the start
//! of the answer that may be a Llama-style tool call.
//!
//! Understood markup:
//! - reasoning: `<think>` … `</think>` (when [`ParserConfig::reasoning`]); a prompt that ends
//!   inside `<think>` starts the output in reasoning ([`ParserConfig::starts_in_reasoning`]).
//! - Hermes/Qwen tool calls: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, any number.
//! - Llama 3 tool calls: the answer (optionally after `<|python_tag|>`) is
//!   `{"name": …, "parameters": {…}}`, possibly several separated by `;`.
//!
//! Tool calls are only recognized when tools were offered ([`ParserConfig::tools`]).
//!
//! Decisions on malformed or cut-off output (documented here because clients see them):
//! - A tool call is announced (`ToolCallStart`) once its name is known and its arguments
//!   begin; from then on it is a tool call whatever follows. If the generation stops inside
//!   the arguments, the call stays a tool call with the arguments received so far (the finish
//!   reason, `length`, tells the client they are cut).
//! - Markup that never became a tool call (bad JSON, no `name`, or output ending before the
//!   call was announced) is returned as text, tags included, so nothing the model wrote is
//!   lost silently.
//! - A `<think>` that is never closed stays reasoning.
//! - Whitespace around markup is dropped: leading/trailing whitespace of reasoning, the
//!   whitespace between `</think>` and the answer, and whitespace around tool calls.

mod emit;
mod json_call;
mod tagged;

use rand::Rng;
#[cfg(test)]
use serde_json::Value;

use crate::core::Event;
#[cfg(test)]
use emit::merge_events;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParserConfig {
    /// The model writes its reasoning inside `<think>…</think>`.
    pub reasoning: bool,
    /// The prompt ended inside an open `<think>` (the template opened it).
    pub starts_in_reasoning: bool,
    /// Tools were offered, so tool-call markup is parsed.
    pub tools: bool,
}

/// A fresh tool call id in OpenAI's style.
pub fn new_tool_call_id() -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("call_{suffix}")
}

/// One generation's parser: fed text as it is detokenized, it returns events as soon as they
/// are certain.
#[derive(Debug)]
pub struct OutputParser {
    inner: tagged::Tagged,
}

impl OutputParser {
    pub fn new(cfg: ParserConfig) -> Self {
        Self {
            inner: tagged::Tagged::new(cfg),
        }
    }

    /// Feeds detokenized text; returns the events it settles.
    pub fn push(&mut self, text: &str) -> Vec<Event> {
        self.inner.push(text)
    }

    /// Ends the generation: flushes everything held back (see the module docs for how
    /// unterminated markup ends).
    pub fn finish(&mut self) -> Vec<Event> {
        self.inner.finish()
    }

    /// Whether any tool call has been announced.
    pub fn saw_tool_calls(&self) -> bool {
        self.inner.saw_tool_calls()
    }
}

#[cfg(test)]
mod tests;
