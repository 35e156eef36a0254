//! Qwen3-Coder's XML calls (Qwen3.5 writes the same), as its chat template renders them:
//!
//! ```text
//! <tool_call>
//! <function=NAME>
//! <parameter=P>
//! VALUE
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! A value loses one newline at each end, and also ends where a `<parameter=` or `</function>`
//! begins (vLLM's qwen3coder reading). The model sometimes drops the opening `<tool_call>` (a
//! peer, oMLX, leaks such calls into the answer), so a `<function=` in the answer opens a call
//! too and the `</tool_call>` after it is optional. A `<tool_call>` holding JSON is a Hermes
//! call, which Qwen models also write.

use super::emit::{take_until_tag, Emitter};
use super::schema::Untyped;
use super::tagged::{TOOL_CLOSE, TOOL_OPEN};
use super::xml_call::{ahead, attr, skip_stray, valid_name, Ahead, Attr, Step, Trim, XmlArgs};
use crate::core::ToolSpec;

pub(super) const FUNCTION_OPEN: &str = "<function=";
const FUNCTION_CLOSE: &str = "</function>";
const PARAM_OPEN: &str = "<parameter=";
const PARAM_CLOSE: &str = "</parameter>";

#[derive(Debug, Clone, Copy)]
enum State {
    /// After `<tool_call>`: `<function=` (or `{`, a JSON call) after whitespace.
    BlockStart,
    /// After `<function=`: the name, up to `>`.
    Name,
    /// Between parameters.
    Params,
    /// After `<parameter=`: its name, up to `>`.
    ParamName,
    Value,
    /// After `</function>`: `</tool_call>`, another `<function=` in the same block, or the end.
    AfterFunction,
}

#[derive(Debug)]
pub(super) struct Call {
    state: State,
    /// The markup read while no call is announced, for the text fallback.
    raw: String,
    args: Option<XmlArgs>,
}

impl Call {
    /// Just after `<tool_call>`.
    pub fn in_block() -> Self {
        Self::new(State::BlockStart, TOOL_OPEN)
    }

    /// Just after a bare `<function=`.
    pub fn bare() -> Self {
        Self::new(State::Name, FUNCTION_OPEN)
    }

    fn new(state: State, opened_by: &str) -> Self {
        Self {
            state,
            raw: opened_by.to_string(),
            args: None,
        }
    }

    pub fn announced(&self) -> bool {
        self.args.is_some()
    }

    pub fn step(
        &mut self,
        buf: &mut String,
        emit: &mut Emitter,
        tools: &[ToolSpec],
        at_end: bool,
    ) -> Step {
        match self.state {
            State::BlockStart => match ahead(buf, &[FUNCTION_OPEN], at_end) {
                Ahead::Tag { tag, ws } => {
                    self.raw.extend(buf.drain(..ws + tag.len()));
                    self.state = State::Name;
                    Step::Progress
                }
                Ahead::Wait => Step::Wait,
                Ahead::Other { ws } if buf[ws..].starts_with('{') => Step::Json,
                Ahead::Other { .. } => Step::NotACall(std::mem::take(&mut self.raw)),
            },
            State::Name => match attr(buf, at_end) {
                Attr::Done { value, len } if valid_name(&value) => {
                    buf.drain(..len);
                    self.raw.clear();
                    let args = XmlArgs::start(value, Trim::OneNewline, Untyped::String, emit);
                    self.args = Some(args);
                    self.state = State::Params;
                    Step::Progress
                }
                Attr::Wait => Step::Wait,
                _ => Step::NotACall(std::mem::take(&mut self.raw)),
            },
            State::Params => match ahead(buf, &[PARAM_OPEN, FUNCTION_CLOSE, TOOL_CLOSE], at_end) {
                Ahead::Tag { tag, ws } => {
                    buf.drain(..ws + tag.len());
                    match tag {
                        PARAM_OPEN => {
                            self.state = State::ParamName;
                            Step::Progress
                        }
                        FUNCTION_CLOSE => {
                            self.end_call(emit);
                            self.state = State::AfterFunction;
                            Step::Progress
                        }
                        // `</tool_call>` with `</function>` missing.
                        _ => {
                            self.end_call(emit);
                            Step::Done
                        }
                    }
                }
                Ahead::Wait => Step::Wait,
                Ahead::Other { .. } if at_end => {
                    self.end_call(emit);
                    Step::Done
                }
                Ahead::Other { ws } => {
                    buf.drain(..ws);
                    skip_stray(buf);
                    Step::Progress
                }
            },
            State::ParamName => match attr(buf, at_end) {
                Attr::Done { value, len } => {
                    buf.drain(..len);
                    if valid_name(&value) {
                        let args = self.args.as_mut().expect("a call is open");
                        args.param_start(&value, tools, &mut emit.out);
                        self.state = State::Value;
                    } else {
                        self.state = State::Params;
                    }
                    Step::Progress
                }
                Attr::Wait => Step::Wait,
                // A `<parameter=` that names nothing is stray text.
                Attr::Bad => {
                    self.state = State::Params;
                    Step::Progress
                }
            },
            State::Value => {
                let ends = [PARAM_CLOSE, PARAM_OPEN, FUNCTION_CLOSE, TOOL_CLOSE];
                let (text, tag) = take_until_tag(buf, &ends, at_end);
                let args = self.args.as_mut().expect("a call is open");
                args.param_text(&text, &mut emit.out);
                match tag {
                    Some(tag) => {
                        args.param_end(&mut emit.out);
                        if tag != PARAM_CLOSE {
                            // It ends the value and is read next.
                            buf.insert_str(0, tag);
                        }
                        self.state = State::Params;
                        Step::Progress
                    }
                    None if at_end => {
                        self.end_call(emit);
                        Step::Done
                    }
                    None => Step::Wait,
                }
            }
            State::AfterFunction => match ahead(buf, &[TOOL_CLOSE, FUNCTION_OPEN], at_end) {
                Ahead::Tag { tag, ws } => {
                    buf.drain(..ws + tag.len());
                    if tag == TOOL_CLOSE {
                        Step::Done
                    } else {
                        self.raw = FUNCTION_OPEN.to_string();
                        self.state = State::Name;
                        Step::Progress
                    }
                }
                Ahead::Wait => Step::Wait,
                Ahead::Other { .. } => Step::Done,
            },
        }
    }

    fn end_call(&mut self, emit: &mut Emitter) {
        if let Some(args) = self.args.take() {
            args.finish(emit);
        }
    }
}
