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

use super::emit::Emitter;
use super::schema::Untyped;
use super::tagged::{TOOL_CLOSE, TOOL_OPEN};
use super::xml_call::{
    ahead, attr, end_call, next_tag, read_param_name, read_value, valid_name, Ahead, Attr, Next,
    Step, Trim, ValueRead, XmlArgs,
};
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
            State::Params => match next_tag(buf, &[PARAM_OPEN, FUNCTION_CLOSE, TOOL_CLOSE], at_end)
            {
                Next::Tag(PARAM_OPEN) => {
                    self.state = State::ParamName;
                    Step::Progress
                }
                Next::Tag(FUNCTION_CLOSE) => {
                    end_call(&mut self.args, emit);
                    self.state = State::AfterFunction;
                    Step::Progress
                }
                // `</tool_call>` with `</function>` missing, or the end of the text.
                Next::Tag(_) | Next::End => {
                    end_call(&mut self.args, emit);
                    Step::Done
                }
                Next::Wait => Step::Wait,
                Next::Skipped => Step::Progress,
            },
            State::ParamName => {
                let args = self.args.as_mut().expect("a call is open");
                match read_param_name(args, buf, tools, &mut emit.out, at_end, str::trim) {
                    Some(true) => self.state = State::Value,
                    // A `<parameter=` that names nothing is stray text.
                    Some(false) => self.state = State::Params,
                    None => return Step::Wait,
                }
                Step::Progress
            }
            State::Value => {
                let args = self.args.as_mut().expect("a call is open");
                let also = [PARAM_OPEN, FUNCTION_CLOSE, TOOL_CLOSE];
                match read_value(args, buf, &mut emit.out, PARAM_CLOSE, &also, at_end) {
                    ValueRead::Ended => {
                        self.state = State::Params;
                        Step::Progress
                    }
                    ValueRead::Truncated => {
                        end_call(&mut self.args, emit);
                        Step::Done
                    }
                    ValueRead::Wait => Step::Wait,
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
}
