//! Formats whose markup is tags inside free text: answer text, `<think>` reasoning, and tool
//! calls opened by a tag (`<tool_call>`, `<minimax:tool_call>`, …) or, for Llama, a JSON
//! object at the answer's start. The calls' own grammars live in their modules.

use super::emit::{find_first, partial_tag_len, Emitter};
use super::json_call::{Outcome, ToolScan};
use super::xml_call::Step;
use super::{glm, minimax, qwen3_coder, ParserConfig, ToolParser};
use crate::core::{Event, ToolSpec};

pub(super) const THINK_OPEN: &str = "<think>";
pub(super) const THINK_CLOSE: &str = "</think>";
pub(super) const TOOL_OPEN: &str = "<tool_call>";
pub(super) const TOOL_CLOSE: &str = "</tool_call>";
pub(super) const PYTHON_TAG: &str = "<|python_tag|>";

#[derive(Debug)]
enum Mode {
    Content,
    Reasoning,
    /// Inside `<tool_call>`; `body` is everything read since the tag (for the text fallback).
    Hermes {
        scan: ToolScan,
        body: String,
    },
    /// A JSON object at the start of the answer that may be a Llama tool call.
    Llama {
        scan: ToolScan,
    },
    /// Inside one of the XML call formats' markup.
    Xml(XmlCall),
}

#[derive(Debug)]
enum XmlCall {
    Qwen3Coder(qwen3_coder::Call),
    MiniMax(minimax::Call),
    Glm(glm::Call),
}

impl XmlCall {
    fn step(
        &mut self,
        buf: &mut String,
        emit: &mut Emitter,
        tools: &[ToolSpec],
        at_end: bool,
    ) -> Step {
        match self {
            Self::Qwen3Coder(call) => call.step(buf, emit, tools, at_end),
            Self::MiniMax(call) => call.step(buf, emit, tools, at_end),
            Self::Glm(call) => call.step(buf, emit, tools, at_end),
        }
    }

    fn announced(&self) -> bool {
        match self {
            Self::Qwen3Coder(call) => call.announced(),
            Self::MiniMax(call) => call.announced(),
            Self::Glm(call) => call.announced(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Tagged {
    cfg: ParserConfig,
    format: ToolParser,
    /// The offered tools, whose schemas type the XML formats' values.
    tools: Vec<ToolSpec>,
    mode: Mode,
    /// Text received but not yet decided.
    buf: String,
    emit: Emitter,
    /// No answer text has been emitted yet, so a Llama JSON tool call may still start.
    llama_possible: bool,
    /// The previous thing was a Llama tool call, so `;` separators are skipped.
    after_llama_call: bool,
}

impl Tagged {
    pub fn new(cfg: ParserConfig, format: ToolParser, tools: Vec<ToolSpec>) -> Self {
        let in_reasoning = cfg.reasoning && cfg.starts_in_reasoning;
        let llama = cfg.tools && matches!(format, ToolParser::Hermes | ToolParser::Llama3);
        Self {
            cfg,
            format,
            tools,
            mode: if in_reasoning {
                Mode::Reasoning
            } else {
                Mode::Content
            },
            buf: String::new(),
            emit: Emitter::new(in_reasoning),
            llama_possible: llama,
            after_llama_call: false,
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Event> {
        self.buf.push_str(text);
        self.process(false);
        self.emit.take()
    }

    pub fn finish(&mut self) -> Vec<Event> {
        self.process(true);
        match std::mem::replace(&mut self.mode, Mode::Content) {
            Mode::Content | Mode::Reasoning => {}
            Mode::Hermes { mut scan, body } => {
                if scan.committed {
                    self.emit.next_index += 1;
                    scan.flush_arguments(&mut self.emit.out);
                } else {
                    let raw = format!("{TOOL_OPEN}{body}");
                    self.content(&raw);
                }
            }
            Mode::Llama { mut scan } => {
                if scan.committed {
                    self.emit.next_index += 1;
                    scan.flush_arguments(&mut self.emit.out);
                } else {
                    let raw = std::mem::take(&mut scan.raw);
                    self.content(&raw);
                }
            }
            // At the end the XML formats never wait, so `process` has settled them.
            Mode::Xml(_) => debug_assert!(false, "an XML call left open at the end"),
        }
        self.emit.finish()
    }

    pub fn saw_tool_calls(&self) -> bool {
        let open_call = match &self.mode {
            Mode::Hermes { scan, .. } | Mode::Llama { scan } => scan.committed,
            Mode::Xml(call) => call.announced(),
            Mode::Content | Mode::Reasoning => false,
        };
        self.emit.next_index > 0 || open_call
    }

    fn process(&mut self, at_end: bool) {
        loop {
            let progressed = match self.mode {
                Mode::Content => self.step_content(at_end),
                Mode::Reasoning => self.step_reasoning(at_end),
                Mode::Hermes { .. } => self.step_hermes(at_end),
                Mode::Llama { .. } => self.step_llama(),
                Mode::Xml(_) => self.step_xml(at_end),
            };
            if !progressed {
                return;
            }
        }
    }

    /// Tags that switch modes out of `Content`.
    fn content_tags(&self) -> Vec<&'static str> {
        let mut tags = Vec::with_capacity(3);
        if self.cfg.reasoning {
            tags.push(THINK_OPEN);
        }
        if self.cfg.tools {
            tags.extend(match self.format {
                ToolParser::Hermes | ToolParser::Glm45 => &[TOOL_OPEN][..],
                ToolParser::Qwen3Coder => &[TOOL_OPEN, qwen3_coder::FUNCTION_OPEN],
                ToolParser::MiniMax => &[minimax::BLOCK_OPEN],
                ToolParser::Llama3 | ToolParser::Harmony | ToolParser::None => &[],
            });
        }
        tags
    }

    /// Whether a Llama JSON call may open the answer.
    fn llama_enabled(&self) -> bool {
        self.cfg.tools && matches!(self.format, ToolParser::Hermes | ToolParser::Llama3)
    }

    /// Returns whether the mode changed (so the loop should go on).
    fn step_content(&mut self, at_end: bool) -> bool {
        if self.llama_possible {
            let after_llama = self.after_llama_call;
            let trimmed = self
                .buf
                .trim_start_matches(|c: char| c.is_whitespace() || (after_llama && c == ';'));
            let skipped = self.buf.len() - trimmed.len();
            let maybe_think = self.cfg.reasoning
                && !trimmed.is_empty()
                && (trimmed.starts_with(THINK_OPEN) || THINK_OPEN.starts_with(trimmed));
            if trimmed.is_empty() {
                let ws: String = self.buf.drain(..).filter(|c| *c != ';').collect();
                self.content(&ws);
                return false;
            } else if trimmed.starts_with('{') {
                let ws: String = self.buf.drain(..skipped).filter(|c| *c != ';').collect();
                self.content(&ws);
                self.start_llama();
                return true;
            } else if let Some(rest) = trimmed.strip_prefix(PYTHON_TAG) {
                let rest = rest.to_string();
                self.buf = rest;
                self.start_llama();
                return true;
            } else if PYTHON_TAG.starts_with(trimmed) && !at_end {
                return false;
            } else if !maybe_think {
                self.llama_possible = false;
                if after_llama {
                    // Text after Llama tool calls: drop the separators before it.
                    let ws: String = self.buf.drain(..skipped).filter(|c| *c != ';').collect();
                    self.content(&ws);
                }
            }
        }
        let tags = self.content_tags();
        match find_first(&self.buf, &tags) {
            Some((at, tag)) => {
                let before: String = self.buf.drain(..at).collect();
                self.content(&before);
                self.buf.drain(..tag.len());
                self.emit.markup_follows();
                self.mode = match (tag, self.format) {
                    (THINK_OPEN, _) => {
                        self.emit.strip_reasoning_ws = true;
                        Mode::Reasoning
                    }
                    (TOOL_OPEN, ToolParser::Qwen3Coder) => {
                        Mode::Xml(XmlCall::Qwen3Coder(qwen3_coder::Call::in_block()))
                    }
                    (qwen3_coder::FUNCTION_OPEN, _) => {
                        Mode::Xml(XmlCall::Qwen3Coder(qwen3_coder::Call::bare()))
                    }
                    (TOOL_OPEN, ToolParser::Glm45) => Mode::Xml(XmlCall::Glm(glm::Call::new())),
                    (minimax::BLOCK_OPEN, _) => Mode::Xml(XmlCall::MiniMax(minimax::Call::new())),
                    _ => self.hermes_mode(),
                };
                true
            }
            None => {
                let keep = if at_end {
                    0
                } else {
                    partial_tag_len(&self.buf, &tags)
                };
                let emit: String = self.buf.drain(..self.buf.len() - keep).collect();
                self.content(&emit);
                false
            }
        }
    }

    fn step_reasoning(&mut self, at_end: bool) -> bool {
        match self.buf.find(THINK_CLOSE) {
            Some(at) => {
                let before: String = self.buf.drain(..at).collect();
                self.emit.reasoning(&before);
                self.buf.drain(..THINK_CLOSE.len());
                self.emit.reasoning_ended();
                self.mode = Mode::Content;
                self.emit.strip_content_ws = true;
                self.llama_possible = self.llama_enabled() && !self.emit.content_emitted;
                true
            }
            None => {
                let keep = if at_end {
                    0
                } else {
                    partial_tag_len(&self.buf, &[THINK_CLOSE])
                };
                let emit: String = self.buf.drain(..self.buf.len() - keep).collect();
                self.emit.reasoning(&emit);
                false
            }
        }
    }

    fn step_hermes(&mut self, at_end: bool) -> bool {
        let close = self.buf.find(TOOL_CLOSE);
        let feed_len = match close {
            Some(at) => at,
            None if at_end => self.buf.len(),
            None => self.buf.len() - partial_tag_len(&self.buf, &[TOOL_CLOSE]),
        };
        let fed: String = self.buf.drain(..feed_len).collect();
        let Mode::Hermes { scan, body } = &mut self.mode else {
            unreachable!("step_hermes runs in Hermes mode")
        };
        body.push_str(&fed);
        if scan.outcome == Outcome::Pending {
            scan.feed(&fed, &mut self.emit.out);
        }
        if scan.committed {
            scan.flush_arguments(&mut self.emit.out);
        }
        if close.is_none() {
            return false;
        }
        self.buf.drain(..TOOL_CLOSE.len());
        let Mode::Hermes { mut scan, body } = std::mem::replace(&mut self.mode, Mode::Content)
        else {
            unreachable!()
        };
        scan.close(&mut self.emit.out);
        if scan.committed {
            self.emit.call_ended();
        } else {
            let raw = format!("{TOOL_OPEN}{body}{TOOL_CLOSE}");
            self.content(&raw);
        }
        true
    }

    fn step_llama(&mut self) -> bool {
        let Mode::Llama { scan } = &mut self.mode else {
            unreachable!("step_llama runs in Llama mode")
        };
        let used = scan.feed(&self.buf, &mut self.emit.out);
        self.buf.drain(..used);
        if scan.committed {
            scan.flush_arguments(&mut self.emit.out);
        }
        match scan.outcome {
            Outcome::Pending => false,
            Outcome::Done | Outcome::Failed => {
                let Mode::Llama { mut scan } = std::mem::replace(&mut self.mode, Mode::Content)
                else {
                    unreachable!()
                };
                if scan.committed {
                    scan.close(&mut self.emit.out);
                    self.emit.call_ended();
                    self.emit.markup_follows();
                    // Another call may follow (`;`-separated), unless the JSON broke.
                    self.llama_possible = scan.outcome == Outcome::Done;
                    self.after_llama_call = true;
                } else {
                    self.llama_possible = false;
                    let raw = std::mem::take(&mut scan.raw);
                    self.content(&raw);
                }
                true
            }
        }
    }

    fn step_xml(&mut self, at_end: bool) -> bool {
        let Mode::Xml(call) = &mut self.mode else {
            unreachable!("step_xml runs in Xml mode")
        };
        match call.step(&mut self.buf, &mut self.emit, &self.tools, at_end) {
            Step::Wait => false,
            Step::Progress => true,
            Step::Done => {
                self.mode = Mode::Content;
                true
            }
            Step::NotACall(text) => {
                self.mode = Mode::Content;
                self.content(&text);
                true
            }
            Step::Json => {
                self.mode = self.hermes_mode();
                true
            }
        }
    }

    /// Inside `<tool_call>` holding a JSON call.
    fn hermes_mode(&self) -> Mode {
        Mode::Hermes {
            scan: ToolScan::new(self.emit.next_index, false),
            body: String::new(),
        }
    }

    fn start_llama(&mut self) {
        self.mode = Mode::Llama {
            scan: ToolScan::new(self.emit.next_index, true),
        };
    }

    /// Answer text; once there is some, a Llama call can no longer start.
    fn content(&mut self, text: &str) {
        if self.emit.content(text) {
            self.llama_possible = false;
            self.after_llama_call = false;
        }
    }
}
