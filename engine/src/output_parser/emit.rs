//! Machinery every format shares: where settled events go (with the whitespace rules around
//! markup), and the scanning for tags that may arrive split anywhere.

use crate::core::Event;

/// Collects the events a parser settles, applying the whitespace rules of the module docs:
/// whitespace next to markup is layout, whitespace inside text is the model's.
#[derive(Debug, Default)]
pub(super) struct Emitter {
    pub out: Vec<Event>,
    /// Trailing whitespace of the answer, held until we know whether markup follows.
    pending_ws: String,
    /// Trailing whitespace of reasoning, held until we know whether its end follows.
    reasoning_ws: String,
    /// Drop whitespace before the next answer text (after reasoning or a tool call).
    pub strip_content_ws: bool,
    /// Drop whitespace before the next reasoning text (just after reasoning opened).
    pub strip_reasoning_ws: bool,
    /// Some answer text has been emitted.
    pub content_emitted: bool,
    /// Index of the next tool call.
    pub next_index: usize,
}

impl Emitter {
    /// `in_reasoning`: the output starts inside reasoning.
    pub fn new(in_reasoning: bool) -> Self {
        Self {
            strip_reasoning_ws: in_reasoning,
            ..Self::default()
        }
    }

    /// The events settled since the last call, neighbours of one kind joined.
    pub fn take(&mut self) -> Vec<Event> {
        merge_events(std::mem::take(&mut self.out))
    }

    /// Emits answer text; returns whether any of it was more than whitespace.
    pub fn content(&mut self, text: &str) -> bool {
        if text.is_empty() {
            return false;
        }
        let mut s = std::mem::take(&mut self.pending_ws);
        s.push_str(text);
        if self.strip_content_ws {
            let trimmed = s.trim_start();
            if trimmed.is_empty() {
                return false;
            }
            s = trimmed.to_string();
            self.strip_content_ws = false;
        }
        let body_len = s.trim_end().len();
        let emitted = body_len > 0;
        if emitted {
            self.out.push(Event::Text(s[..body_len].to_string()));
            self.content_emitted = true;
        }
        self.pending_ws = s[body_len..].to_string();
        emitted
    }

    pub fn reasoning(&mut self, text: &str) {
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

    /// Markup begins: the whitespace held before it was layout, not answer.
    pub fn markup_follows(&mut self) {
        self.pending_ws.clear();
    }

    /// Reasoning ended: its trailing whitespace was layout.
    pub fn reasoning_ended(&mut self) {
        self.reasoning_ws.clear();
    }

    /// A tool call ended: the next one gets the next index, and whitespace after it is layout.
    pub fn call_ended(&mut self) {
        self.next_index += 1;
        self.strip_content_ws = true;
    }

    /// The generation ended: whitespace at the very end of a plain answer is the model's, so
    /// it is kept; the events left are returned.
    pub fn finish(&mut self) -> Vec<Event> {
        let ws = std::mem::take(&mut self.pending_ws);
        if !ws.is_empty() {
            self.out.push(Event::Text(ws));
        }
        self.reasoning_ws.clear();
        self.take()
    }
}

/// The earliest occurrence of any of `tags` in `text`.
pub(super) fn find_first<'t>(text: &str, tags: &[&'t str]) -> Option<(usize, &'t str)> {
    tags.iter()
        .filter_map(|tag| text.find(tag).map(|at| (at, *tag)))
        .min_by_key(|(at, _)| *at)
}

/// Length of the longest suffix of `text` that is a proper prefix of one of `tags` (text that
/// may become a tag once more arrives).
pub(super) fn partial_tag_len(text: &str, tags: &[&str]) -> usize {
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

/// Takes text from the front of `buf` up to the first of `tags`, and that tag. Without a tag
/// in `buf`, it takes everything that cannot be the start of one (everything, `at_end`).
pub(super) fn take_until_tag<'t>(
    buf: &mut String,
    tags: &[&'t str],
    at_end: bool,
) -> (String, Option<&'t str>) {
    match find_first(buf, tags) {
        Some((at, tag)) => {
            let before: String = buf.drain(..at).collect();
            buf.drain(..tag.len());
            (before, Some(tag))
        }
        None => {
            let keep = if at_end {
                0
            } else {
                partial_tag_len(buf, tags)
            };
            (buf.drain(..buf.len() - keep).collect(), None)
        }
    }
}

/// Whether `text` (a prefix of what will arrive) may still turn out to start with `tag`.
pub(super) fn may_start_with(text: &str, tag: &str) -> bool {
    text.starts_with(tag) || tag.starts_with(text)
}

/// Joins neighbouring events of the same kind, so callers see few, larger pieces.
pub(super) fn merge_events(events: Vec<Event>) -> Vec<Event> {
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
