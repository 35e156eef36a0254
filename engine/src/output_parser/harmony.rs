//! gpt-oss's harmony format (OpenAI's harmony guide): the output is a series of messages, each
//! a header and a body, after the prompt's `<|start|>assistant`:
//!
//! ```text
//! <|channel|>analysis<|message|>Need the weather.<|end|>
//! <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>
//! <|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>
//! ```
//!
//! A header names the channel and, for a tool call, the recipient (`to=`, before or after the
//! channel) and the content type. `analysis` is reasoning, `final` the answer, `commentary`
//! to `functions.NAME` a tool call (when tools were offered), and other commentary a preamble
//! meant for the user, so answer text. `<|call|>` and `<|return|>` are end-of-sequence tokens:
//! generation normally stops on them.
//!
//! Decisions: a message to another recipient (the built-in `python` and `browser` tools, never
//! offered here) goes where its channel goes; a call's body is its arguments as written (JSON,
//! `<|constrain|>json`), `{}` when empty; output that does not begin like a header is answer
//! text as written; a header cut off by the end of the generation is dropped (it holds names,
//! no text).

use super::emit::{may_start_with, take_until_tag, Emitter};
use super::new_tool_call_id;
use crate::core::Event;

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const CONSTRAIN: &str = "<|constrain|>";
const END: &str = "<|end|>";
const CALL: &str = "<|call|>";
const RETURN: &str = "<|return|>";

/// The special tokens the parser reads (the detokenizer must keep them).
pub(super) const MARKUP: [&str; 7] = [START, CHANNEL, MESSAGE, CONSTRAIN, END, CALL, RETURN];

/// Headers are a few names; anything longer is text that merely looked like one.
const MAX_HEADER: usize = 256;

#[derive(Debug)]
enum State {
    /// Reading a header. `strict`: no `<|start|>` came first (the output's first message, or
    /// after an end token), so it must begin with the channel or the recipient.
    Header {
        text: String,
        strict: bool,
    },
    Body(Route),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Reasoning,
    Answer,
    Call { index: usize, empty: bool },
}

#[derive(Debug)]
pub(super) struct Harmony {
    tools: bool,
    buf: String,
    state: State,
    emit: Emitter,
}

impl Harmony {
    pub fn new(tools: bool) -> Self {
        Self {
            tools,
            buf: String::new(),
            state: State::Header {
                text: String::new(),
                strict: true,
            },
            emit: Emitter::default(),
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Event> {
        self.buf.push_str(text);
        while self.step(false) {}
        self.emit.take()
    }

    pub fn finish(&mut self) -> Vec<Event> {
        while self.step(true) {}
        // A call cut off stays a call; cut-off text keeps its trailing whitespace.
        if matches!(self.state, State::Body(Route::Call { .. })) {
            self.close();
        }
        self.emit.finish()
    }

    pub fn saw_tool_calls(&self) -> bool {
        self.emit.next_index > 0 || matches!(self.state, State::Body(Route::Call { .. }))
    }

    /// Returns whether it made progress.
    fn step(&mut self, at_end: bool) -> bool {
        match &mut self.state {
            State::Header { text, strict } => {
                let tags = [MESSAGE, START, CHANNEL, CONSTRAIN];
                let (chunk, tag) = take_until_tag(&mut self.buf, &tags, at_end);
                text.push_str(&chunk);
                if let Some(marker @ (CHANNEL | CONSTRAIN)) = tag {
                    text.push_str(marker);
                }
                if !plausible(text, *strict) {
                    // Not a header: what was read is answer text.
                    let mut raw = if *strict {
                        String::new()
                    } else {
                        START.to_string()
                    };
                    raw.push_str(text);
                    if let Some(tag @ (MESSAGE | START)) = tag {
                        self.buf.insert_str(0, tag);
                    }
                    self.state = State::Body(Route::Answer);
                    self.emit.content(&raw);
                    return true;
                }
                match tag {
                    Some(MESSAGE) => {
                        let header = std::mem::take(text);
                        self.open(&header);
                        true
                    }
                    Some(START) => {
                        text.clear();
                        *strict = false;
                        true
                    }
                    Some(_) => true,
                    None => false,
                }
            }
            State::Body(_) => {
                let tags = [END, CALL, RETURN, START];
                let (chunk, tag) = take_until_tag(&mut self.buf, &tags, at_end);
                self.body_text(&chunk);
                let Some(tag) = tag else {
                    return false;
                };
                self.close();
                self.state = State::Header {
                    text: String::new(),
                    strict: tag != START,
                };
                true
            }
        }
    }

    /// Starts the body of a message with this header.
    fn open(&mut self, header: &str) {
        let word_after = |marker: &str| {
            header.find(marker).map(|at| {
                let rest = &header[at + marker.len()..];
                let end = rest.find([' ', '<']).unwrap_or(rest.len());
                &rest[..end]
            })
        };
        let function = word_after("to=")
            .and_then(|r| r.strip_prefix("functions."))
            .filter(|name| self.tools && !name.is_empty());
        let route = match (function, word_after(CHANNEL)) {
            (Some(name), _) => {
                let index = self.emit.next_index;
                self.emit.out.push(Event::ToolCallStart {
                    index,
                    id: new_tool_call_id(),
                    name: name.to_string(),
                });
                Route::Call { index, empty: true }
            }
            (None, Some("analysis")) => {
                self.emit.strip_reasoning_ws = true;
                Route::Reasoning
            }
            (None, _) => {
                self.emit.strip_content_ws = true;
                Route::Answer
            }
        };
        self.state = State::Body(route);
    }

    fn body_text(&mut self, text: &str) {
        let State::Body(route) = &mut self.state else {
            return;
        };
        match route {
            Route::Reasoning => self.emit.reasoning(text),
            Route::Answer => {
                self.emit.content(text);
            }
            Route::Call { index, empty } => {
                if !text.is_empty() {
                    *empty = false;
                    self.emit.out.push(Event::ToolCallArguments {
                        index: *index,
                        fragment: text.to_string(),
                    });
                }
            }
        }
    }

    /// Ends the message being read, if any.
    fn close(&mut self) {
        let State::Body(route) = self.state else {
            return;
        };
        match route {
            Route::Reasoning => self.emit.reasoning_ended(),
            // Whitespace before the end of a message is layout.
            Route::Answer => self.emit.markup_follows(),
            Route::Call { index, empty } => {
                if empty {
                    self.emit.out.push(Event::ToolCallArguments {
                        index,
                        fragment: "{}".into(),
                    });
                }
                self.emit.call_ended();
            }
        }
    }
}

/// Whether `text` can be (the start of) a header: names, `to=`, the channel and constrain
/// markers, on one line. A strict header begins with the channel or the recipient.
fn plausible(text: &str, strict: bool) -> bool {
    // Line breaks between messages are layout (the harmony guide prints messages one a line).
    let text = if strict { text.trim_start() } else { text };
    let words = text.replace(CHANNEL, " ").replace(CONSTRAIN, " ");
    let names = words
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-' | '=' | ':' | '/'));
    let begins = !strict
        || text.is_empty()
        || [CHANNEL, " to=", "to="]
            .iter()
            .any(|start| may_start_with(text, start));
    text.len() <= MAX_HEADER && names && begins
}
