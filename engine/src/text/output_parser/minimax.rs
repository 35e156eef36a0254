//! MiniMax-M2's calls, as its tool-calling guide documents them (any number of `<invoke>` in
//! one block):
//!
//! ```text
//! <minimax:tool_call>
//! <invoke name="NAME">
//! <parameter name="P">VALUE</parameter>
//! </invoke>
//! </minimax:tool_call>
//! ```
//!
//! Names may be quoted or not; values are trimmed of whitespace at both ends (the guide's
//! parser strips them).

use super::emit::Emitter;
use super::schema::Untyped;
use super::xml_call::{
    ahead, attr, end_call, next_tag, read_param_name, read_value, skip_stray, valid_name, Ahead,
    Attr, Next, Step, Trim, ValueRead, XmlArgs,
};
use crate::core::ToolSpec;

pub(super) const BLOCK_OPEN: &str = "<minimax:tool_call>";
pub(super) const BLOCK_CLOSE: &str = "</minimax:tool_call>";
const INVOKE_OPEN: &str = "<invoke name=";
const INVOKE_CLOSE: &str = "</invoke>";
const PARAM_OPEN: &str = "<parameter name=";
const PARAM_CLOSE: &str = "</parameter>";

#[derive(Debug, Clone, Copy)]
enum State {
    /// Inside the block, between calls.
    Block,
    /// After `<invoke name=`: the name, up to `>`.
    Name,
    /// Inside `<invoke>`, between parameters.
    Params,
    /// After `<parameter name=`: its name, up to `>`.
    ParamName,
    Value,
}

#[derive(Debug)]
pub(super) struct Call {
    state: State,
    /// The markup read while no call is announced, for the text fallback.
    raw: String,
    args: Option<XmlArgs>,
    /// Calls this block has announced.
    calls: usize,
}

impl Call {
    /// Just after `<minimax:tool_call>`.
    pub fn new() -> Self {
        Self {
            state: State::Block,
            raw: BLOCK_OPEN.to_string(),
            args: None,
            calls: 0,
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
            State::Block => match ahead(buf, &[INVOKE_OPEN, BLOCK_CLOSE], at_end) {
                Ahead::Tag {
                    tag: INVOKE_OPEN,
                    ws,
                } => {
                    self.raw.extend(buf.drain(..ws + INVOKE_OPEN.len()));
                    self.state = State::Name;
                    Step::Progress
                }
                Ahead::Tag { tag, ws } if self.calls > 0 => {
                    buf.drain(..ws + tag.len());
                    Step::Done
                }
                Ahead::Wait => Step::Wait,
                _ if self.calls > 0 && !at_end => {
                    buf.drain(..buf.len() - buf.trim_start().len());
                    skip_stray(buf);
                    Step::Progress
                }
                _ if self.calls > 0 => Step::Done,
                // A block with no call in it is not markup after all.
                _ => Step::NotACall(std::mem::take(&mut self.raw)),
            },
            State::Name => match attr(buf, at_end) {
                Attr::Done { value, len } if valid_name(unquote(&value)) => {
                    buf.drain(..len);
                    self.raw.clear();
                    let name = unquote(&value).to_string();
                    self.args = Some(XmlArgs::start(
                        name,
                        Trim::Whitespace,
                        Untyped::String,
                        emit,
                    ));
                    self.calls += 1;
                    self.state = State::Params;
                    Step::Progress
                }
                Attr::Wait => Step::Wait,
                _ if self.calls > 0 => {
                    // A broken `<invoke` after good calls: the block's calls stand.
                    self.state = State::Block;
                    Step::Progress
                }
                _ => Step::NotACall(std::mem::take(&mut self.raw)),
            },
            State::Params => {
                match next_tag(buf, &[PARAM_OPEN, INVOKE_CLOSE, BLOCK_CLOSE], at_end) {
                    Next::Tag(PARAM_OPEN) => {
                        self.state = State::ParamName;
                        Step::Progress
                    }
                    Next::Tag(INVOKE_CLOSE) => {
                        end_call(&mut self.args, emit);
                        self.state = State::Block;
                        Step::Progress
                    }
                    Next::Tag(_) | Next::End => {
                        end_call(&mut self.args, emit);
                        Step::Done
                    }
                    Next::Wait => Step::Wait,
                    Next::Skipped => Step::Progress,
                }
            }
            State::ParamName => {
                let args = self.args.as_mut().expect("a call is open");
                match read_param_name(args, buf, tools, &mut emit.out, at_end, unquote) {
                    Some(true) => self.state = State::Value,
                    Some(false) => self.state = State::Params,
                    None => return Step::Wait,
                }
                Step::Progress
            }
            State::Value => {
                let args = self.args.as_mut().expect("a call is open");
                let also = [PARAM_OPEN, INVOKE_CLOSE, BLOCK_CLOSE];
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
        }
    }
}

/// `"name"` or `'name'` without the quotes (the guide's `extract_name`).
fn unquote(name: &str) -> &str {
    let quoted = |q: char| name.len() >= 2 && name.starts_with(q) && name.ends_with(q);
    if quoted('"') || quoted('\'') {
        &name[1..name.len() - 1]
    } else {
        name
    }
}
