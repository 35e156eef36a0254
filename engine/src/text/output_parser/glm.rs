//! GLM-4.5/4.6/4.7's calls, as their chat templates render them (4.7 drops the newlines):
//!
//! ```text
//! <tool_call>NAME
//! <arg_key>K</arg_key>
//! <arg_value>V</arg_value>
//! </tool_call>
//! ```
//!
//! Values are trimmed of whitespace; a parameter the schema does not describe is read as JSON
//! when it is JSON (the template writes non-strings with `tojson`), as GLM's reference parsers
//! do. A `<tool_call>` holding JSON is a Hermes call.

use super::emit::{take_until_tag, Emitter};
use super::schema::Untyped;
use super::tagged::TOOL_CLOSE;
use super::xml_call::{
    ahead, end_call, next_tag, read_value, valid_name, Ahead, Next, Step, Trim, ValueRead, XmlArgs,
};
use crate::core::ToolSpec;

const KEY_OPEN: &str = "<arg_key>";
const KEY_CLOSE: &str = "</arg_key>";
const VALUE_OPEN: &str = "<arg_value>";
const VALUE_CLOSE: &str = "</arg_value>";

/// A name longer than this is prose, not a function name.
const MAX_NAME: usize = 256;

#[derive(Debug)]
enum State {
    /// After `<tool_call>`: the function name, up to a line break or the first tag.
    Name,
    /// Between arguments.
    Args,
    /// After `<arg_key>`: the key, up to `</arg_key>`.
    Key,
    /// After `</arg_key>`: `<arg_value>` after whitespace.
    BeforeValue,
    Value,
}

#[derive(Debug)]
pub(super) struct Call {
    state: State,
    /// Text read since `<tool_call>` while no call is announced, for the text fallback.
    raw: String,
    key: String,
    args: Option<XmlArgs>,
}

impl Call {
    /// Just after `<tool_call>`.
    pub fn new() -> Self {
        Self {
            state: State::Name,
            raw: super::tagged::TOOL_OPEN.to_string(),
            key: String::new(),
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
            State::Name => self.step_name(buf, emit, at_end),
            State::Args => match next_tag(buf, &[KEY_OPEN, TOOL_CLOSE], at_end) {
                Next::Tag(KEY_OPEN) => {
                    self.key.clear();
                    self.state = State::Key;
                    Step::Progress
                }
                Next::Tag(_) | Next::End => {
                    end_call(&mut self.args, emit);
                    Step::Done
                }
                Next::Wait => Step::Wait,
                Next::Skipped => Step::Progress,
            },
            State::Key => {
                let (text, tag) = take_until_tag(buf, &[KEY_CLOSE], at_end);
                self.key.push_str(&text);
                match tag {
                    Some(_) => {
                        self.state = State::BeforeValue;
                        Step::Progress
                    }
                    None if at_end => {
                        end_call(&mut self.args, emit);
                        Step::Done
                    }
                    None => Step::Wait,
                }
            }
            State::BeforeValue => match ahead(buf, &[VALUE_OPEN], at_end) {
                Ahead::Tag { tag, ws } => {
                    buf.drain(..ws + tag.len());
                    let key = self.key.trim();
                    let args = self.args.as_mut().expect("a call is open");
                    args.param_start(key, tools, &mut emit.out);
                    self.state = State::Value;
                    Step::Progress
                }
                Ahead::Wait => Step::Wait,
                // A key without a value is dropped.
                Ahead::Other { .. } => {
                    self.state = State::Args;
                    Step::Progress
                }
            },
            State::Value => {
                let args = self.args.as_mut().expect("a call is open");
                let also = [KEY_OPEN, TOOL_CLOSE];
                match read_value(args, buf, &mut emit.out, VALUE_CLOSE, &also, at_end) {
                    ValueRead::Ended => {
                        self.state = State::Args;
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

    /// The name ends at a line break, `<arg_key>` or `</tool_call>`; the call is announced then.
    fn step_name(&mut self, buf: &mut String, emit: &mut Emitter, at_end: bool) -> Step {
        let rest = buf.trim_start();
        if rest.starts_with('{') {
            return Step::Json;
        }
        let ws = buf.len() - rest.len();
        let end = [rest.find('\n'), rest.find(KEY_OPEN), rest.find(TOOL_CLOSE)]
            .into_iter()
            .flatten()
            .min();
        let Some(end) = end else {
            if at_end || rest.len() > MAX_NAME || rest.contains('<') && !may_be_tag(rest) {
                return Step::NotACall(std::mem::take(&mut self.raw));
            }
            return Step::Wait;
        };
        let name = rest[..end].trim();
        if !valid_name(name) {
            return Step::NotACall(std::mem::take(&mut self.raw));
        }
        let name = name.to_string();
        buf.drain(..ws + end);
        self.raw.clear();
        self.args = Some(XmlArgs::start(name, Trim::Whitespace, Untyped::Json, emit));
        self.state = State::Args;
        Step::Progress
    }
}

/// Whether the `<` in a name being read may still begin `<arg_key>` or `</tool_call>`.
fn may_be_tag(rest: &str) -> bool {
    let from = &rest[rest.find('<').unwrap_or(0)..];
    KEY_OPEN.starts_with(from) || TOOL_CLOSE.starts_with(from)
}
