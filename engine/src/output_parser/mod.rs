//! Splits a model's streamed text into answer text, reasoning and tool calls.
//!
//! The parser is fed detokenized text in arbitrary fragments (a tag may be split anywhere) and
//! returns [`Event`]s as soon as they are certain. It holds back only what could still turn
//! out to be markup: a partial tag, whitespace next to markup, a JSON object at the start of
//! the answer that may be a Llama-style tool call, or a parameter value that is not a string
//! (it is typed once complete).
//!
//! Understood markup, by [`ToolParser`] (chosen per model by [`choose`]):
//! - reasoning: `<think>` … `</think>` (when [`ParserConfig::reasoning`]); a prompt that ends
//!   inside `<think>` starts the output in reasoning ([`ParserConfig::starts_in_reasoning`]).
//! - `hermes`: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, any number; and
//!   Llama 3 calls: the answer (optionally after `<|python_tag|>`) is
//!   `{"name": …, "parameters": {…}}`, possibly several separated by `;` (`llama3`: only these).
//! - `qwen3_coder`, `minimax`, `glm45`: XML calls (`qwen3_coder.rs`, `minimax.rs`, `glm.rs`), whose
//!   values are typed by the offered tool's JSON schema (`schema.rs`).
//! - `harmony`: gpt-oss's channels (`harmony.rs`); its analysis channel is reasoning whatever
//!   [`ParserConfig::reasoning`] says.
//!
//! Tool calls are only recognized when tools were offered ([`ParserConfig::tools`]).
//!
//! Decisions on malformed or cut-off output (documented here because clients see them):
//! - A tool call is announced (`ToolCallStart`) once its name is known and its arguments
//!   begin; from then on it is a tool call whatever follows. If the generation stops inside
//!   the arguments, the call stays a tool call with the arguments received so far (the finish
//!   reason, `length`, tells the client they are cut); the XML formats close their JSON.
//! - Markup that never became a tool call (bad JSON, no `name`, a name that is not one, or
//!   output ending before the call was announced) is returned as text, tags included, so
//!   nothing the model wrote is lost silently.
//! - Inside an XML call, text outside any parameter is ignored, as the reference parsers'
//!   regexes ignore it; a value that fits none of its schema's types stays a string.
//! - A `<think>` that is never closed stays reasoning.
//! - Whitespace around markup is dropped: leading/trailing whitespace of reasoning, the
//!   whitespace between `</think>` and the answer, and whitespace around tool calls.

mod emit;
mod glm;
mod harmony;
mod json_call;
mod minimax;
mod pyliteral;
mod qwen3_coder;
mod schema;
mod select;
mod tagged;
mod xml_call;

use rand::Rng;
use serde::{Deserialize, Serialize};
#[cfg(test)]
use serde_json::Value;

use crate::core::{Event, ToolSpec};
#[cfg(test)]
use emit::merge_events;
pub use select::choose;

/// How a model writes tool calls (and, for harmony, all of its output). Chosen per model
/// ([`choose`]); `tool_parser` in a model's config settings overrides it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolParser {
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Hermes, Qwen 2.5/3), and Llama 3's
    /// bare JSON calls at the start of the answer.
    #[default]
    Hermes,
    /// Llama 3's bare JSON calls only (`{"name": …, "parameters": …}`, `<|python_tag|>`).
    Llama3,
    /// Qwen3-Coder's `<function=NAME><parameter=P>…` XML calls.
    Qwen3Coder,
    /// MiniMax-M2's `<minimax:tool_call><invoke name=…>` XML calls.
    #[serde(rename = "minimax")]
    MiniMax,
    /// GLM-4.5/4.6/4.7's `<tool_call>NAME<arg_key>…</arg_key><arg_value>…` calls.
    Glm45,
    /// gpt-oss's harmony channels: analysis, final, and commentary calls to `functions.NAME`.
    Harmony,
    /// No tool calls are read (reasoning still is).
    None,
}

/// Everything one generation's parser needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParserSetup {
    pub config: ParserConfig,
    pub format: ToolParser,
    /// The tools the request offered: their schemas type the XML formats' values.
    pub tools: Vec<ToolSpec>,
}

/// Hermes/Llama parsing with these settings and no tool schemas.
impl From<ParserConfig> for ParserSetup {
    fn from(config: ParserConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }
}

impl ParserSetup {
    /// The markup the parser reads. Some models' tokenizers mark these tokens special (all of
    /// harmony's are), so the detokenizer must keep them rather than skip them.
    pub fn markup(&self) -> Vec<&'static str> {
        if self.format == ToolParser::Harmony {
            return harmony::MARKUP.to_vec();
        }
        let mut tags = Vec::new();
        if self.config.reasoning {
            tags.extend([tagged::THINK_OPEN, tagged::THINK_CLOSE]);
        }
        if self.config.tools {
            tags.extend(match self.format {
                ToolParser::Hermes => {
                    &[tagged::TOOL_OPEN, tagged::TOOL_CLOSE, tagged::PYTHON_TAG][..]
                }
                ToolParser::Llama3 => &[tagged::PYTHON_TAG],
                ToolParser::Qwen3Coder | ToolParser::Glm45 => {
                    &[tagged::TOOL_OPEN, tagged::TOOL_CLOSE]
                }
                ToolParser::MiniMax => &[minimax::BLOCK_OPEN, minimax::BLOCK_CLOSE],
                ToolParser::Harmony | ToolParser::None => &[],
            });
        }
        tags
    }
}

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
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Tagged(tagged::Tagged),
    Harmony(harmony::Harmony),
}

impl OutputParser {
    /// A parser for `<think>` reasoning and Hermes/Llama JSON calls.
    pub fn new(cfg: ParserConfig) -> Self {
        Self::with_setup(cfg.into())
    }

    pub fn with_setup(setup: ParserSetup) -> Self {
        let inner = match setup.format {
            ToolParser::Harmony => Inner::Harmony(harmony::Harmony::new(setup.config.tools)),
            format => Inner::Tagged(tagged::Tagged::new(setup.config, format, setup.tools)),
        };
        Self { inner }
    }

    /// Feeds detokenized text; returns the events it settles.
    pub fn push(&mut self, text: &str) -> Vec<Event> {
        match &mut self.inner {
            Inner::Tagged(p) => p.push(text),
            Inner::Harmony(p) => p.push(text),
        }
    }

    /// Ends the generation: flushes everything held back (see the module docs for how
    /// unterminated markup ends).
    pub fn finish(&mut self) -> Vec<Event> {
        match &mut self.inner {
            Inner::Tagged(p) => p.finish(),
            Inner::Harmony(p) => p.finish(),
        }
    }

    /// Whether any tool call has been announced.
    pub fn saw_tool_calls(&self) -> bool {
        match &self.inner {
            Inner::Tagged(p) => p.saw_tool_calls(),
            Inner::Harmony(p) => p.saw_tool_calls(),
        }
    }
}

#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod tests;
