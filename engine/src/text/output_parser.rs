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

use rand::Rng;
use serde_json::Value;

use crate::core::Event;

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_OPEN: &str = "<tool_call>";
const TOOL_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

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
}

#[derive(Debug)]
pub struct OutputParser {
    cfg: ParserConfig,
    mode: Mode,
    /// Text received but not yet decided.
    buf: String,
    out: Vec<Event>,
    /// Trailing whitespace of the answer, held until we know whether markup follows.
    pending_ws: String,
    /// Trailing whitespace of reasoning, held until we know whether `</think>` follows.
    reasoning_ws: String,
    /// Drop whitespace before the next answer text (after `</think>` or a tool call).
    strip_content_ws: bool,
    /// Drop whitespace before the next reasoning text (just after `<think>`).
    strip_reasoning_ws: bool,
    /// No answer text has been emitted yet, so a Llama JSON tool call may still start.
    llama_possible: bool,
    /// The previous thing was a Llama tool call, so `;` separators are skipped.
    after_llama_call: bool,
    /// Some answer text has been emitted.
    content_emitted: bool,
    next_index: usize,
}

impl OutputParser {
    pub fn new(cfg: ParserConfig) -> Self {
        let in_reasoning = cfg.reasoning && cfg.starts_in_reasoning;
        Self {
            cfg,
            mode: if in_reasoning {
                Mode::Reasoning
            } else {
                Mode::Content
            },
            buf: String::new(),
            out: Vec::new(),
            pending_ws: String::new(),
            reasoning_ws: String::new(),
            strip_content_ws: false,
            strip_reasoning_ws: in_reasoning,
            llama_possible: cfg.tools,
            after_llama_call: false,
            content_emitted: false,
            next_index: 0,
        }
    }

    /// Feeds detokenized text; returns the events it settles.
    pub fn push(&mut self, text: &str) -> Vec<Event> {
        self.buf.push_str(text);
        self.process(false);
        merge_events(std::mem::take(&mut self.out))
    }

    /// Ends the generation: flushes everything held back (see the module docs for how
    /// unterminated markup ends).
    pub fn finish(&mut self) -> Vec<Event> {
        self.process(true);
        match std::mem::replace(&mut self.mode, Mode::Content) {
            Mode::Content | Mode::Reasoning => {}
            Mode::Hermes { mut scan, body } => {
                if scan.committed {
                    self.next_index += 1;
                    scan.flush_arguments(&mut self.out);
                } else {
                    let raw = format!("{TOOL_OPEN}{body}");
                    self.emit_content(&raw);
                }
            }
            Mode::Llama { mut scan } => {
                if scan.committed {
                    self.next_index += 1;
                    scan.flush_arguments(&mut self.out);
                } else {
                    let raw = std::mem::take(&mut scan.raw);
                    self.emit_content(&raw);
                }
            }
        }
        // Whitespace at the very end of a plain answer is the model's; keep it.
        let ws = std::mem::take(&mut self.pending_ws);
        if !ws.is_empty() {
            self.out.push(Event::Text(ws));
        }
        self.reasoning_ws.clear();
        merge_events(std::mem::take(&mut self.out))
    }

    /// Whether any tool call has been announced.
    pub fn saw_tool_calls(&self) -> bool {
        let open_call = match &self.mode {
            Mode::Hermes { scan, .. } | Mode::Llama { scan } => scan.committed,
            Mode::Content | Mode::Reasoning => false,
        };
        self.next_index > 0 || open_call
    }

    fn process(&mut self, at_end: bool) {
        loop {
            let progressed = match self.mode {
                Mode::Content => self.step_content(at_end),
                Mode::Reasoning => self.step_reasoning(at_end),
                Mode::Hermes { .. } => self.step_hermes(at_end),
                Mode::Llama { .. } => self.step_llama(),
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
            tags.push(TOOL_OPEN);
        }
        tags
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
                self.emit_content(&ws);
                return false;
            } else if trimmed.starts_with('{') {
                let ws: String = self.buf.drain(..skipped).filter(|c| *c != ';').collect();
                self.emit_content(&ws);
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
                    self.emit_content(&ws);
                }
            }
        }
        let tags = self.content_tags();
        match find_first(&self.buf, &tags) {
            Some((at, tag)) => {
                let before: String = self.buf.drain(..at).collect();
                self.emit_content(&before);
                self.buf.drain(..tag.len());
                // Whitespace before markup is layout, not answer.
                self.pending_ws.clear();
                if tag == THINK_OPEN {
                    self.mode = Mode::Reasoning;
                    self.strip_reasoning_ws = true;
                } else {
                    let scan = ToolScan::new(self.next_index, false);
                    self.mode = Mode::Hermes {
                        scan,
                        body: String::new(),
                    };
                }
                true
            }
            None => {
                let keep = if at_end {
                    0
                } else {
                    partial_tag_len(&self.buf, &tags)
                };
                let emit: String = self.buf.drain(..self.buf.len() - keep).collect();
                self.emit_content(&emit);
                false
            }
        }
    }

    fn step_reasoning(&mut self, at_end: bool) -> bool {
        match self.buf.find(THINK_CLOSE) {
            Some(at) => {
                let before: String = self.buf.drain(..at).collect();
                self.emit_reasoning(&before);
                self.buf.drain(..THINK_CLOSE.len());
                self.reasoning_ws.clear();
                self.mode = Mode::Content;
                self.strip_content_ws = true;
                self.llama_possible = self.cfg.tools && !self.content_emitted;
                true
            }
            None => {
                let keep = if at_end {
                    0
                } else {
                    partial_tag_len(&self.buf, &[THINK_CLOSE])
                };
                let emit: String = self.buf.drain(..self.buf.len() - keep).collect();
                self.emit_reasoning(&emit);
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
            scan.feed(&fed, &mut self.out);
        }
        if scan.committed {
            scan.flush_arguments(&mut self.out);
        }
        if close.is_none() {
            return false;
        }
        self.buf.drain(..TOOL_CLOSE.len());
        let Mode::Hermes { mut scan, body } = std::mem::replace(&mut self.mode, Mode::Content)
        else {
            unreachable!()
        };
        scan.close(&mut self.out);
        if scan.committed {
            self.next_index += 1;
            self.strip_content_ws = true;
        } else {
            let raw = format!("{TOOL_OPEN}{body}{TOOL_CLOSE}");
            self.emit_content(&raw);
        }
        true
    }

    fn step_llama(&mut self) -> bool {
        let Mode::Llama { scan } = &mut self.mode else {
            unreachable!("step_llama runs in Llama mode")
        };
        let used = scan.feed(&self.buf, &mut self.out);
        self.buf.drain(..used);
        if scan.committed {
            scan.flush_arguments(&mut self.out);
        }
        match scan.outcome {
            Outcome::Pending => false,
            Outcome::Done | Outcome::Failed => {
                let Mode::Llama { mut scan } = std::mem::replace(&mut self.mode, Mode::Content)
                else {
                    unreachable!()
                };
                if scan.committed {
                    scan.close(&mut self.out);
                    self.next_index += 1;
                    self.strip_content_ws = true;
                    self.pending_ws.clear();
                    // Another call may follow (`;`-separated), unless the JSON broke.
                    self.llama_possible = scan.outcome == Outcome::Done;
                    self.after_llama_call = true;
                } else {
                    self.llama_possible = false;
                    let raw = std::mem::take(&mut scan.raw);
                    self.emit_content(&raw);
                }
                true
            }
        }
    }

    fn start_llama(&mut self) {
        self.mode = Mode::Llama {
            scan: ToolScan::new(self.next_index, true),
        };
    }

    fn emit_content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut s = std::mem::take(&mut self.pending_ws);
        s.push_str(text);
        if self.strip_content_ws {
            let trimmed = s.trim_start();
            if trimmed.is_empty() {
                return;
            }
            s = trimmed.to_string();
            self.strip_content_ws = false;
        }
        let body_len = s.trim_end().len();
        if body_len > 0 {
            self.out.push(Event::Text(s[..body_len].to_string()));
            self.content_emitted = true;
            self.llama_possible = false;
            self.after_llama_call = false;
        }
        self.pending_ws = s[body_len..].to_string();
    }

    fn emit_reasoning(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut s = std::mem::take(&mut self.reasoning_ws);
        s.push_str(text);
        if self.strip_reasoning_ws {
            let trimmed = s.trim_start();
            if trimmed.is_empty() {
                return;
            }
            s = trimmed.to_string();
            self.strip_reasoning_ws = false;
        }
        let body_len = s.trim_end().len();
        if body_len > 0 {
            self.out.push(Event::Reasoning(s[..body_len].to_string()));
        }
        self.reasoning_ws = s[body_len..].to_string();
    }
}

/// The earliest occurrence of any of `tags` in `text`.
fn find_first(text: &str, tags: &[&'static str]) -> Option<(usize, &'static str)> {
    tags.iter()
        .filter_map(|tag| text.find(tag).map(|at| (at, *tag)))
        .min_by_key(|(at, _)| *at)
}

/// Length of the longest suffix of `text` that is a proper prefix of one of `tags` (text that
/// may become a tag once more arrives).
fn partial_tag_len(text: &str, tags: &[&str]) -> usize {
    let mut best = 0;
    for tag in tags {
        for len in (1..tag.len()).rev() {
            if len <= best {
                break;
            }
            if text.len() >= len
                && text.is_char_boundary(text.len() - len)
                && tag.as_bytes()[..len] == text.as_bytes()[text.len() - len..]
            {
                best = len;
                break;
            }
        }
    }
    best
}

/// Joins neighbouring events of the same kind, so callers see few, larger pieces.
fn merge_events(events: Vec<Event>) -> Vec<Event> {
    let mut merged: Vec<Event> = Vec::with_capacity(events.len());
    for event in events {
        match (merged.last_mut(), event) {
            (Some(Event::Text(a)), Event::Text(b)) => a.push_str(&b),
            (Some(Event::Reasoning(a)), Event::Reasoning(b)) => a.push_str(&b),
            (
                Some(Event::ToolCallArguments { index: i, fragment }),
                Event::ToolCallArguments {
                    index: j,
                    fragment: more,
                },
            ) if *i == j => fragment.push_str(&more),
            (_, event) => merged.push(event),
        }
    }
    merged
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
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
struct ToolScan {
    index: usize,
    id: String,
    /// Llama form: a JSON answer is only a tool call if it has both a name and arguments
    /// (`parameters`), since a plain JSON answer may well have a `name` field.
    require_arguments: bool,
    state: ScanState,
    outcome: Outcome,
    /// Everything consumed, for the text fallback.
    raw: String,
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
    committed: bool,
}

impl ToolScan {
    fn new(index: usize, require_arguments: bool) -> Self {
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
    fn feed(&mut self, text: &str, out: &mut Vec<Event>) -> usize {
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
    fn flush_arguments(&mut self, out: &mut Vec<Event>) {
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
    fn close(&mut self, out: &mut Vec<Event>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: ParserConfig = ParserConfig {
        reasoning: false,
        starts_in_reasoning: false,
        tools: false,
    };
    const THINK: ParserConfig = ParserConfig {
        reasoning: true,
        starts_in_reasoning: false,
        tools: false,
    };
    const TOOLS: ParserConfig = ParserConfig {
        reasoning: false,
        starts_in_reasoning: false,
        tools: true,
    };
    const ALL: ParserConfig = ParserConfig {
        reasoning: true,
        starts_in_reasoning: false,
        tools: true,
    };

    fn text(s: &str) -> Event {
        Event::Text(s.into())
    }
    fn reasoning(s: &str) -> Event {
        Event::Reasoning(s.into())
    }
    fn start(index: usize, name: &str) -> Event {
        Event::ToolCallStart {
            index,
            id: "call_X".into(),
            name: name.into(),
        }
    }
    fn args(index: usize, fragment: &str) -> Event {
        Event::ToolCallArguments {
            index,
            fragment: fragment.into(),
        }
    }

    /// Feeds `pieces`, checks the ids, and returns the merged events with ids replaced.
    fn run(cfg: ParserConfig, pieces: &[&str]) -> (Vec<Event>, bool) {
        let mut parser = OutputParser::new(cfg);
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(parser.push(piece));
        }
        events.extend(parser.finish());
        let events = merge_events(events)
            .into_iter()
            .map(|e| match e {
                Event::ToolCallStart { index, id, name } => {
                    assert!(id.starts_with("call_") && id.len() == 29, "{id}");
                    Event::ToolCallStart {
                        index,
                        id: "call_X".into(),
                        name,
                    }
                }
                other => other,
            })
            .collect();
        (events, parser.saw_tool_calls())
    }

    fn char_bounds(s: &str) -> Vec<usize> {
        (0..=s.len()).filter(|i| s.is_char_boundary(*i)).collect()
    }

    /// The whole input, every split into two and three pieces, and one char at a time all
    /// give `expected`.
    fn check(cfg: ParserConfig, input: &str, expected: &[Event]) {
        let (whole, saw) = run(cfg, &[input]);
        assert_eq!(whole, expected, "whole input {input:?}");
        let expect_saw = expected
            .iter()
            .any(|e| matches!(e, Event::ToolCallStart { .. }));
        assert_eq!(saw, expect_saw, "saw_tool_calls for {input:?}");
        let bounds = char_bounds(input);
        for &i in &bounds {
            let (got, _) = run(cfg, &[&input[..i], &input[i..]]);
            assert_eq!(got, expected, "split at {i} of {input:?}");
        }
        if bounds.len() <= 160 {
            for (n, &i) in bounds.iter().enumerate() {
                for &j in &bounds[n..] {
                    let (got, _) = run(cfg, &[&input[..i], &input[i..j], &input[j..]]);
                    assert_eq!(got, expected, "split at {i},{j} of {input:?}");
                }
            }
        }
        let chars: Vec<String> = input.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        let (got, _) = run(cfg, &pieces);
        assert_eq!(got, expected, "char by char {input:?}");
    }

    /// Arguments of call `index`, concatenated.
    fn arguments_of(events: &[Event], index: usize) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ToolCallArguments { index: i, fragment } if *i == index => {
                    Some(fragment.as_str())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn plain_text_passes_through() {
        check(PLAIN, "Hello, world!", &[text("Hello, world!")]);
        check(PLAIN, "  a <b> c\n", &[text("  a <b> c\n")]);
        // Markup is not parsed when the model does not use it.
        check(PLAIN, "<think>x</think>", &[text("<think>x</think>")]);
        check(
            PLAIN,
            "<tool_call>{\"name\":\"f\"}</tool_call>",
            &[text("<tool_call>{\"name\":\"f\"}</tool_call>")],
        );
        check(TOOLS, "é😀 ünïcode", &[text("é😀 ünïcode")]);
        check(PLAIN, "", &[]);
    }

    #[test]
    fn reasoning_blocks() {
        check(
            THINK,
            "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
            &[reasoning("Let me think."), text("The answer is 4.")],
        );
        check(
            THINK,
            "Before <think>mid</think> after",
            &[text("Before"), reasoning("mid"), text("after")],
        );
        // Never closed: stays reasoning.
        check(
            THINK,
            "<think>still thinking",
            &[reasoning("still thinking")],
        );
        // Partial tag at the end that never completes is text.
        check(THINK, "a <thi", &[text("a <thi")]);
        check(THINK, "x < y", &[text("x < y")]);
    }

    #[test]
    fn reasoning_opened_by_the_prompt() {
        let cfg = ParserConfig {
            reasoning: true,
            starts_in_reasoning: true,
            tools: false,
        };
        check(
            cfg,
            "\nhmm, 2+2\n</think>\n\n4",
            &[reasoning("hmm, 2+2"), text("4")],
        );
        check(cfg, "never closed <b>", &[reasoning("never closed <b>")]);
        check(cfg, "</think>answer", &[text("answer")]);
    }

    #[test]
    fn hermes_single_call() {
        let input = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
        let expected = [
            start(0, "get_weather"),
            args(0, "{\"city\": \"Paris\", \"unit\": \"c\"}"),
        ];
        check(TOOLS, input, &expected);
        // Text before the call is kept, the whitespace before the tag is not.
        let with_text = format!("Let me check.\n{input}");
        let mut expected_text = vec![text("Let me check.")];
        expected_text.extend(expected.iter().cloned());
        check(TOOLS, &with_text, &expected_text);
    }

    #[test]
    fn hermes_several_calls_and_reasoning() {
        let input = "<think>need two</think>\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"q\": [1, {\"x\": \"}\"}]}}\n</tool_call>\n";
        check(
            ALL,
            input,
            &[
                reasoning("need two"),
                start(0, "a"),
                args(0, "{}"),
                start(1, "b"),
                args(1, "{\"q\": [1, {\"x\": \"}\"}]}"),
            ],
        );
    }

    #[test]
    fn hermes_arguments_stream_before_the_call_closes() {
        let mut parser = OutputParser::new(TOOLS);
        let mut events = parser.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": ");
        assert!(matches!(&events[0], Event::ToolCallStart { index: 0, name, .. } if name == "f"));
        assert_eq!(events[1], args(0, "{\"a\": "));
        events = parser.push("\"long");
        assert_eq!(events, vec![args(0, "\"long")]);
        events = parser.push(" text\"}}\n</tool_call>");
        assert_eq!(events, vec![args(0, " text\"}")]);
        assert!(parser.finish().is_empty());
        assert!(parser.saw_tool_calls());
    }

    #[test]
    fn hermes_odd_shapes() {
        // Arguments before the name, as a string, missing, or null.
        check(
            TOOLS,
            "<tool_call>{\"arguments\": {\"k\": 1}, \"name\": \"f\"}</tool_call>",
            &[start(0, "f"), args(0, "{\"k\": 1}")],
        );
        check(
            TOOLS,
            "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"k\\\": 1}\"}</tool_call>",
            &[start(0, "f"), args(0, "{\"k\": 1}")],
        );
        check(
            TOOLS,
            "<tool_call>{\"name\": \"f\"}</tool_call>",
            &[start(0, "f"), args(0, "{}")],
        );
        check(
            TOOLS,
            "<tool_call>{\"name\": \"f\", \"arguments\": null}</tool_call>",
            &[start(0, "f"), args(0, "{}")],
        );
        check(
            TOOLS,
            "<tool_call>{\"name\": \"f\\u00e9\", \"id\": 3, \"arguments\": {}}</tool_call>",
            &[start(0, "fé"), args(0, "{}")],
        );
    }

    #[test]
    fn broken_tool_calls_fall_back_to_text() {
        check(
            TOOLS,
            "<tool_call>not json</tool_call> ok",
            &[text("<tool_call>not json</tool_call> ok")],
        );
        check(
            TOOLS,
            "<tool_call>{\"arguments\": {}}</tool_call>",
            &[text("<tool_call>{\"arguments\": {}}</tool_call>")],
        );
        // Cut before the call was announced.
        check(
            TOOLS,
            "<tool_call>\n{\"name\": \"f\"",
            &[text("<tool_call>\n{\"name\": \"f\"")],
        );
        // Cut inside the arguments: stays a call with what arrived.
        check(
            TOOLS,
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1,",
            &[start(0, "f"), args(0, "{\"a\": [1,")],
        );
    }

    #[test]
    fn llama_json_calls() {
        let input = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
        let expected = [start(0, "get_weather"), args(0, "{\"city\": \"Oslo\"}")];
        check(TOOLS, input, &expected);
        check(TOOLS, &format!("<|python_tag|>{input}"), &expected);
        check(TOOLS, &format!("\n {input}\n"), &expected);
        let two =
            "{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}";
        check(
            TOOLS,
            two,
            &[
                start(0, "a"),
                args(0, "{\"x\": 1}"),
                start(1, "b"),
                args(1, "{}"),
            ],
        );
        // After thinking.
        check(
            ALL,
            &format!("<think>call it</think>\n\n{input}"),
            &[
                reasoning("call it"),
                start(0, "get_weather"),
                args(0, "{\"city\": \"Oslo\"}"),
            ],
        );
    }

    #[test]
    fn json_answers_that_are_not_calls_stay_text() {
        for input in [
            "{\"name\": \"Bob\", \"age\": 3}",
            "{\"a\": 1} and more",
            "{not json at all",
            "{\"name\": 5, \"parameters\": {}}",
        ] {
            check(TOOLS, input, &[text(input)]);
        }
        // Without tools, JSON is never a call.
        let call = "{\"name\": \"f\", \"parameters\": {}}";
        check(PLAIN, call, &[text(call)]);
        // JSON later in the answer is not a Llama call.
        let later = format!("Here: {call}");
        check(TOOLS, &later, &[text(&later)]);
        // Text after a Llama call is text.
        check(
            TOOLS,
            "{\"name\": \"f\", \"parameters\": {}}\nDone.",
            &[start(0, "f"), args(0, "{}"), text("Done.")],
        );
    }

    #[test]
    fn concatenated_arguments_are_the_original_json() {
        let arguments = "{\"query\": \"a \\\"quoted\\\" {brace}\", \"n\": [1, 2.5e3, true, null], \"o\": {\"p\": \"</tool_call\"}}";
        let input = format!(
            "<tool_call>\n{{\"name\": \"search\", \"arguments\": {arguments}}}\n</tool_call>"
        );
        let (events, _) = run(TOOLS, &[&input]);
        assert_eq!(arguments_of(&events, 0), arguments);
        let value: Value = serde_json::from_str(&arguments_of(&events, 0)).unwrap();
        assert_eq!(value["n"][1], 2500.0);
        // Char by char streams many fragments that still join to the same text.
        let mut parser = OutputParser::new(TOOLS);
        let mut fragments = 0;
        let mut joined = String::new();
        for c in input.chars() {
            for e in parser.push(&c.to_string()) {
                if let Event::ToolCallArguments { fragment, .. } = e {
                    fragments += 1;
                    joined.push_str(&fragment);
                }
            }
        }
        parser.finish();
        assert!(fragments > 10);
        assert_eq!(joined, arguments);
    }

    #[test]
    fn ids_are_unique() {
        let (mut a, mut b) = (OutputParser::new(TOOLS), OutputParser::new(TOOLS));
        let input = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
        let id = |events: Vec<Event>| match &events[0] {
            Event::ToolCallStart { id, .. } => id.clone(),
            other => panic!("{other:?}"),
        };
        assert_ne!(id(a.push(input)), id(b.push(input)));
    }
}
