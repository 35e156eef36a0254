//! What the XML call formats (Qwen3-Coder, MiniMax-M2, GLM-4.5) share: the arguments, which
//! arrive as named text values and leave as one JSON object streamed in fragments, and the
//! small scanning steps their grammars are made of.
//!
//! A value whose schema type is string streams as it arrives (a file's content written by a
//! coding agent can be long); any other value is held until its end, then typed by the schema
//! ([`schema`](super::schema)).

use super::emit::{take_until_tag, Emitter};
use super::new_tool_call_id;
use super::schema::{self, Types, Untyped};
use crate::core::{Event, ToolSpec};

/// What a call's state machine did with the text it was given.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// It needs more text.
    Wait,
    /// It consumed some; call it again.
    Progress,
    /// The call markup ended; what follows is answer text again.
    Done,
    /// The markup never became a call: this text (tags included) is answer text.
    NotACall(String),
    /// The block holds a Hermes-style JSON call (`<tool_call>{"name": …}`): the caller reads
    /// the rest of the buffer as one.
    Json,
}

/// How a format trims a parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trim {
    /// One newline after the opening tag and one before the closing tag (Qwen3-Coder writes
    /// each on its own line; other whitespace is the value's).
    OneNewline,
    /// All whitespace at both ends (MiniMax's and GLM's parsers `strip()`).
    Whitespace,
}

/// One call's arguments, from its announcement to its closing brace.
#[derive(Debug)]
pub(super) struct XmlArgs {
    index: usize,
    name: String,
    trim: Trim,
    untyped: Untyped,
    params: usize,
    value: Option<ParamValue>,
}

#[derive(Debug)]
struct ParamValue {
    types: Types,
    /// Leading whitespace has been dealt with.
    started: bool,
    /// A streamed string whose opening quote is out.
    opened: bool,
    /// Text received and not yet emitted (all of it, for a value held to its end).
    text: String,
}

impl XmlArgs {
    /// Announces call `name` (its index is the emitter's next).
    pub fn start(name: String, trim: Trim, untyped: Untyped, emit: &mut Emitter) -> Self {
        let index = emit.next_index;
        emit.out.push(Event::ToolCallStart {
            index,
            id: new_tool_call_id(),
            name: name.clone(),
        });
        Self {
            index,
            name,
            trim,
            untyped,
            params: 0,
            value: None,
        }
    }

    pub fn param_start(&mut self, param: &str, tools: &[ToolSpec], out: &mut Vec<Event>) {
        self.param_end(out);
        let lead = if self.params == 0 { "{" } else { ", " };
        self.params += 1;
        self.fragment(out, format!("{lead}{}: ", json_string(param)));
        self.value = Some(ParamValue {
            types: schema::param_types(tools, &self.name, param, self.untyped),
            started: false,
            opened: false,
            text: String::new(),
        });
    }

    /// More of the current value (nothing of the markup around it).
    pub fn param_text(&mut self, text: &str, out: &mut Vec<Event>) {
        let trim = self.trim;
        let Some(v) = self.value.as_mut() else {
            return;
        };
        v.text.push_str(text);
        if !v.started {
            match trim {
                Trim::OneNewline if v.text.is_empty() => return,
                Trim::OneNewline => {
                    if v.text.starts_with('\n') {
                        v.text.remove(0);
                    }
                }
                Trim::Whitespace => {
                    let rest = v.text.trim_start();
                    if rest.is_empty() {
                        v.text.clear();
                        return;
                    }
                    v.text = rest.to_string();
                }
            }
            v.started = true;
        }
        if !v.types.is_string() {
            return;
        }
        if !v.opened {
            // A nullable string's null (see `schema::NULL_WORDS`) must not go out as a string.
            let body = match trim {
                Trim::OneNewline => v.text.strip_suffix('\n').unwrap_or(&v.text),
                Trim::Whitespace => v.text.trim_end(),
            }
            .to_ascii_lowercase();
            let maybe_null =
                v.types.allows_null() && schema::NULL_WORDS.iter().any(|w| w.starts_with(&body));
            if maybe_null {
                return;
            }
        }
        let open = !std::mem::replace(&mut v.opened, true);
        // Whitespace at the end may be the trim before the closing tag.
        let keep = match trim {
            Trim::OneNewline => usize::from(v.text.ends_with('\n')),
            Trim::Whitespace => v.text.len() - v.text.trim_end().len(),
        };
        let ready: String = v.text.drain(..v.text.len() - keep).collect();
        let quote = if open { "\"" } else { "" };
        let fragment = format!("{quote}{}", json_string_body(&ready));
        self.fragment(out, fragment);
    }

    /// The current value ended: what was held back goes out, typed.
    pub fn param_end(&mut self, out: &mut Vec<Event>) {
        let Some(v) = self.value.take() else {
            return;
        };
        let fragment = if v.opened {
            // What is left is the trimmed whitespace.
            "\"".to_string()
        } else {
            let raw = match self.trim {
                Trim::OneNewline => v.text.strip_suffix('\n').unwrap_or(&v.text),
                Trim::Whitespace => v.text.trim_end(),
            };
            schema::convert(raw, v.types).to_string()
        };
        self.fragment(out, fragment);
    }

    /// Closes the arguments object; the call is complete.
    pub fn finish(mut self, emit: &mut Emitter) {
        self.param_end(&mut emit.out);
        let close = if self.params == 0 { "{}" } else { "}" };
        self.fragment(&mut emit.out, close.to_string());
        emit.call_ended();
    }

    fn fragment(&self, out: &mut Vec<Event>, fragment: String) {
        if !fragment.is_empty() {
            out.push(Event::ToolCallArguments {
                index: self.index,
                fragment,
            });
        }
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// `text` escaped as inside a JSON string, without the quotes.
fn json_string_body(text: &str) -> String {
    let quoted = json_string(text);
    quoted[1..quoted.len() - 1].to_string()
}

/// What `buf` starts with, after whitespace.
#[derive(Debug, PartialEq)]
pub(super) enum Ahead {
    /// This tag, after `ws` bytes of whitespace.
    Tag { tag: &'static str, ws: usize },
    /// Nothing decisive yet (whitespace, or the start of a tag).
    Wait,
    /// Something else, after `ws` bytes of whitespace.
    Other { ws: usize },
}

pub(super) fn ahead(buf: &str, tags: &[&'static str], at_end: bool) -> Ahead {
    let rest = buf.trim_start();
    let ws = buf.len() - rest.len();
    if let Some(tag) = tags.iter().find(|t| rest.starts_with(**t)) {
        return Ahead::Tag { tag, ws };
    }
    let partial = rest.is_empty() || tags.iter().any(|t| t.starts_with(rest));
    if partial && !at_end {
        Ahead::Wait
    } else {
        Ahead::Other { ws }
    }
}

/// An attribute ending a tag (`NAME>` after `<function=`): its text, and the bytes it takes
/// with the `>`.
#[derive(Debug, PartialEq)]
pub(super) enum Attr {
    Done {
        value: String,
        len: usize,
    },
    Wait,
    /// Not an attribute: a line break or another tag came first, or it runs on too long.
    Bad,
}

/// Attributes are names; anything longer is prose that happened to contain a tag.
const MAX_ATTR: usize = 256;

pub(super) fn attr(buf: &str, at_end: bool) -> Attr {
    match buf.find(['>', '<', '\n']) {
        Some(at) if buf.as_bytes()[at] == b'>' && at <= MAX_ATTR => Attr::Done {
            value: buf[..at].trim().to_string(),
            len: at + 1,
        },
        Some(_) => Attr::Bad,
        None if at_end || buf.len() > MAX_ATTR => Attr::Bad,
        None => Attr::Wait,
    }
}

/// Whether `name` can be a function or parameter name.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | '{' | '}' | '"' | '\''))
}

/// Ignores text between a call's tags that belongs to no value (up to the next tag), as the
/// reference parsers' regexes do.
pub(super) fn skip_stray(buf: &mut String) {
    let end = buf
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '<')
        .map_or(buf.len(), |(at, _)| at);
    buf.drain(..end);
}

/// The next tag between a call's parameters (the grammars differ only in their tags).
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// This tag, read (consumed with the whitespace before it).
    Tag(&'static str),
    Wait,
    /// The text ended with no tag: the call ends there.
    End,
    /// Stray text, up to the next tag, was skipped; call again.
    Skipped,
}

pub(super) fn next_tag(buf: &mut String, tags: &[&'static str], at_end: bool) -> Next {
    match ahead(buf, tags, at_end) {
        Ahead::Tag { tag, ws } => {
            buf.drain(..ws + tag.len());
            Next::Tag(tag)
        }
        Ahead::Wait => Next::Wait,
        Ahead::Other { .. } if at_end => Next::End,
        Ahead::Other { ws } => {
            buf.drain(..ws);
            skip_stray(buf);
            Next::Skipped
        }
    }
}

/// How reading a parameter's value went.
#[derive(Debug, PartialEq)]
pub(super) enum ValueRead {
    /// The value ended (at `close`, or at another tag that is put back to be read next).
    Ended,
    Wait,
    /// The text ended inside the value: the call ends there.
    Truncated,
}

/// Reads the current value up to `close` or any of `also`, which end it too (a model that
/// forgets the closing tag still closes the value with the next tag of the call).
pub(super) fn read_value(
    args: &mut XmlArgs,
    buf: &mut String,
    out: &mut Vec<crate::core::Event>,
    close: &'static str,
    also: &[&'static str],
    at_end: bool,
) -> ValueRead {
    let ends: Vec<&str> = std::iter::once(close).chain(also.iter().copied()).collect();
    let (text, tag) = take_until_tag(buf, &ends, at_end);
    args.param_text(&text, out);
    match tag {
        Some(tag) => {
            args.param_end(out);
            if tag != close {
                buf.insert_str(0, tag);
            }
            ValueRead::Ended
        }
        None if at_end => ValueRead::Truncated,
        None => ValueRead::Wait,
    }
}

/// Reads a parameter's name (`P>` after its opening tag, `clean` undoing a format's quoting)
/// and starts its value: `Some(true)` when started, `Some(false)` for a name that names
/// nothing (stray text; the parameter is dropped), `None` to wait.
pub(super) fn read_param_name(
    args: &mut XmlArgs,
    buf: &mut String,
    tools: &[ToolSpec],
    out: &mut Vec<crate::core::Event>,
    at_end: bool,
    clean: fn(&str) -> &str,
) -> Option<bool> {
    match attr(buf, at_end) {
        Attr::Done { value, len } => {
            buf.drain(..len);
            let name = clean(&value);
            let ok = valid_name(name);
            if ok {
                args.param_start(name, tools, out);
            }
            Some(ok)
        }
        Attr::Wait => None,
        Attr::Bad => Some(false),
    }
}

/// Closes the open call, if any.
pub(super) fn end_call(args: &mut Option<XmlArgs>, emit: &mut Emitter) {
    if let Some(args) = args.take() {
        args.finish(emit);
    }
}
