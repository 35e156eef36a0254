//! The JSON tool-call object (`{"name": …, "arguments": {…}}`, or Llama's `"parameters"`),
//! read incrementally: its arguments stream out as they arrive, without parsing the JSON.

use serde_json::Value;

use super::new_tool_call_id;
use crate::core::Event;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Pending,
    /// The object closed.
    Done,
    /// The text is not the JSON object we expected.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    ExpectOpen,
    ExpectKey,
    InKey,
    ExpectColon,
    ExpectValue,
    InValue,
    ExpectCommaOrClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRole {
    Name,
    Arguments,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// Object or array: ends at the matching bracket.
    Compound,
    /// String: ends at the closing quote.
    Str,
    /// Number, `true`, `false`, `null`: ends before the next delimiter.
    Scalar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueStep {
    Continue,
    /// The value ended with this character.
    EndWith,
    /// The value ended just before this character.
    EndBefore,
}

/// Tracks where one JSON value ends, without parsing it.
#[derive(Debug, Clone, Copy)]
struct ValueScan {
    kind: ValueKind,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl ValueScan {
    fn start(first: char) -> Self {
        match first {
            '{' | '[' => Self {
                kind: ValueKind::Compound,
                depth: 1,
                in_string: false,
                escaped: false,
            },
            '"' => Self {
                kind: ValueKind::Str,
                depth: 0,
                in_string: true,
                escaped: false,
            },
            _ => Self {
                kind: ValueKind::Scalar,
                depth: 0,
                in_string: false,
                escaped: false,
            },
        }
    }

    fn next(&mut self, c: char) -> ValueStep {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = false;
                if self.kind == ValueKind::Str {
                    return ValueStep::EndWith;
                }
            }
            return ValueStep::Continue;
        }
        match self.kind {
            ValueKind::Compound => match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return ValueStep::EndWith;
                    }
                }
                _ => {}
            },
            ValueKind::Scalar if c == ',' || c == '}' || c == ']' || c.is_whitespace() => {
                return ValueStep::EndBefore
            }
            _ => {}
        }
        ValueStep::Continue
    }
}

/// Incrementally reads one tool-call object `{"name": "...", "arguments": {...}}` and streams
/// its arguments as they arrive.
#[derive(Debug)]
pub(super) struct ToolScan {
    index: usize,
    id: String,
    /// Llama form: a JSON answer is only a tool call if it has both a name and arguments
    /// (`parameters`), since a plain JSON answer may well have a `name` field.
    require_arguments: bool,
    state: ScanState,
    pub(super) outcome: Outcome,
    /// Everything consumed, for the text fallback.
    pub(super) raw: String,
    key: String,
    key_escaped: bool,
    role: KeyRole,
    value: ValueScan,
    name_raw: String,
    name: Option<String>,
    args_kind: Option<ValueKind>,
    /// Argument text not yet emitted (raw JSON for objects, JSON string literal for strings).
    args_pending: String,
    args_done: bool,
    pub(super) committed: bool,
}

impl ToolScan {
    pub(super) fn new(index: usize, require_arguments: bool) -> Self {
        Self {
            index,
            id: new_tool_call_id(),
            require_arguments,
            state: ScanState::ExpectOpen,
            outcome: Outcome::Pending,
            raw: String::new(),
            key: String::new(),
            key_escaped: false,
            role: KeyRole::Other,
            value: ValueScan::start('0'),
            name_raw: String::new(),
            name: None,
            args_kind: None,
            args_pending: String::new(),
            args_done: false,
            committed: false,
        }
    }

    /// Consumes text until the object ends or turns out not to be one; returns the bytes used.
    pub(super) fn feed(&mut self, text: &str, out: &mut Vec<Event>) -> usize {
        for (at, c) in text.char_indices() {
            if self.outcome != Outcome::Pending {
                return at;
            }
            self.raw.push(c);
            self.step(c, out);
        }
        text.len()
    }

    fn step(&mut self, c: char, out: &mut Vec<Event>) {
        match self.state {
            ScanState::ExpectOpen => match c {
                '{' => self.state = ScanState::ExpectKey,
                c if c.is_whitespace() => {}
                _ => self.outcome = Outcome::Failed,
            },
            ScanState::ExpectKey => match c {
                '"' => {
                    self.key.clear();
                    self.key_escaped = false;
                    self.state = ScanState::InKey;
                }
                '}' => self.on_object_end(out),
                c if c.is_whitespace() => {}
                _ => self.outcome = Outcome::Failed,
            },
            ScanState::InKey => {
                if self.key_escaped {
                    self.key_escaped = false;
                    self.key.push(c);
                } else if c == '\\' {
                    self.key_escaped = true;
                    self.key.push(c);
                } else if c == '"' {
                    let key: String = serde_json::from_str(&format!("\"{}\"", self.key))
                        .unwrap_or_else(|_| self.key.clone());
                    self.role = match key.as_str() {
                        "name" => KeyRole::Name,
                        "arguments" | "parameters" => KeyRole::Arguments,
                        _ => KeyRole::Other,
                    };
                    self.state = ScanState::ExpectColon;
                } else {
                    self.key.push(c);
                }
            }
            ScanState::ExpectColon => match c {
                ':' => self.state = ScanState::ExpectValue,
                c if c.is_whitespace() => {}
                _ => self.outcome = Outcome::Failed,
            },
            ScanState::ExpectValue => {
                if c.is_whitespace() {
                    return;
                }
                if matches!(c, '}' | ']' | ',' | ':') {
                    self.outcome = Outcome::Failed;
                    return;
                }
                self.value = ValueScan::start(c);
                match self.role {
                    KeyRole::Name => {
                        if self.value.kind != ValueKind::Str {
                            self.outcome = Outcome::Failed;
                            return;
                        }
                        self.name_raw.clear();
                        self.name_raw.push(c);
                    }
                    KeyRole::Arguments => {
                        self.args_kind = Some(self.value.kind);
                        self.args_pending.clear();
                        self.args_pending.push(c);
                        self.try_commit(out);
                    }
                    KeyRole::Other => {}
                }
                self.state = ScanState::InValue;
            }
            ScanState::InValue => match self.value.next(c) {
                ValueStep::Continue => self.value_char(c),
                ValueStep::EndWith => {
                    self.value_char(c);
                    self.on_value_end(out);
                    self.state = ScanState::ExpectCommaOrClose;
                }
                ValueStep::EndBefore => {
                    self.on_value_end(out);
                    self.state = ScanState::ExpectCommaOrClose;
                    self.step(c, out);
                }
            },
            ScanState::ExpectCommaOrClose => match c {
                ',' => self.state = ScanState::ExpectKey,
                '}' => self.on_object_end(out),
                c if c.is_whitespace() => {}
                _ => self.outcome = Outcome::Failed,
            },
        }
    }

    fn value_char(&mut self, c: char) {
        match self.role {
            KeyRole::Name => self.name_raw.push(c),
            KeyRole::Arguments => self.args_pending.push(c),
            KeyRole::Other => {}
        }
    }

    fn on_value_end(&mut self, out: &mut Vec<Event>) {
        match self.role {
            KeyRole::Name => match serde_json::from_str::<String>(&self.name_raw) {
                Ok(name) if !name.is_empty() => {
                    self.name = Some(name);
                    self.try_commit(out);
                }
                _ => self.outcome = Outcome::Failed,
            },
            KeyRole::Arguments => {
                self.args_done = true;
                self.try_commit(out);
                if self.committed {
                    self.flush_arguments(out);
                }
            }
            KeyRole::Other => {}
        }
    }

    fn on_object_end(&mut self, out: &mut Vec<Event>) {
        self.outcome = Outcome::Done;
        if !self.committed && !self.require_arguments && self.name.is_some() {
            // `{"name": "f"}` with no arguments: a call without arguments.
            self.args_kind = Some(ValueKind::Compound);
            self.args_pending = "{}".to_string();
            self.args_done = true;
            self.commit(out);
        }
        if self.committed {
            self.flush_arguments(out);
        }
    }

    /// Announces the call once its name is known and its arguments have begun.
    fn try_commit(&mut self, out: &mut Vec<Event>) {
        if !self.committed && self.name.is_some() && self.args_kind.is_some() {
            self.commit(out);
        }
    }

    fn commit(&mut self, out: &mut Vec<Event>) {
        self.committed = true;
        out.push(Event::ToolCallStart {
            index: self.index,
            id: self.id.clone(),
            name: self.name.clone().unwrap_or_default(),
        });
    }

    /// Emits the arguments received so far. Objects stream as they come; arguments written
    /// as a JSON string (some models do) are decoded once complete; `null` becomes `{}`.
    pub(super) fn flush_arguments(&mut self, out: &mut Vec<Event>) {
        let fragment = match self.args_kind {
            Some(ValueKind::Compound) => std::mem::take(&mut self.args_pending),
            Some(ValueKind::Str) if self.args_done => {
                let raw = std::mem::take(&mut self.args_pending);
                serde_json::from_str::<String>(&raw).unwrap_or(raw)
            }
            Some(ValueKind::Scalar) if self.args_done => {
                let raw = std::mem::take(&mut self.args_pending);
                match serde_json::from_str::<Value>(&raw) {
                    Ok(Value::Null) => "{}".to_string(),
                    _ => raw,
                }
            }
            _ => return,
        };
        if !fragment.is_empty() {
            out.push(Event::ToolCallArguments {
                index: self.index,
                fragment,
            });
        }
    }

    /// The tool-call markup closed: emit what is left.
    pub(super) fn close(&mut self, out: &mut Vec<Event>) {
        if !self.committed && self.outcome == Outcome::Pending {
            // `</tool_call>` before the object closed: treat it like the object's end.
            self.on_object_end(out);
        }
        if self.committed {
            if !self.args_done {
                // Cut inside a string value: flush whatever was held back.
                self.args_done = true;
            }
            self.flush_arguments(out);
        }
    }
}
