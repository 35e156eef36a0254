//! Stop strings over streamed text.
//!
//! Generated text arrives in arbitrary pieces (one detokenized token at a time), so a stop
//! string may be split across pieces. [`StopMatcher`] holds back just enough text to decide:
//! whatever cannot be the start of a stop string is released at once, the rest waits for the
//! next piece.

/// What [`StopMatcher::push`] decided about the text fed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop string matched; `emit` is text that can no longer be part of one.
    Continue { emit: String },
    /// `stop` matched; `emit` is the not-yet-emitted text that came before it.
    /// Text after the stop string is dropped.
    Stopped { emit: String, stop: String },
}

/// Finds the first of several stop strings in streamed text.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted, because it could still begin a stop string.
    held: String,
    /// Set once a stop string matched; later input is ignored.
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match before any text).
    pub fn new(stops: &[String]) -> Self {
        let mut stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        stops.dedup();
        Self {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    /// True once a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds newly generated text. After a match every further call returns
    /// `Continue` with nothing to emit.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Continue {
                emit: String::new(),
            };
        }
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Continue {
                emit: std::mem::take(&mut self.held),
            };
        }

        if let Some((start, stop)) = self.first_match() {
            self.stopped = true;
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(start);
            return StopOutcome::Stopped { emit, stop };
        }

        let keep_from = self.partial_match_start();
        let rest = self.held.split_off(keep_from);
        let emit = std::mem::replace(&mut self.held, rest);
        StopOutcome::Continue { emit }
    }

    /// Releases the held-back text at the end of generation (no stop string can complete now).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The match that a character-by-character stream would have found first: the one that
    /// ends earliest, and of those the one that starts earliest (the longest).
    fn first_match(&self) -> Option<(usize, String)> {
        let mut best: Option<(usize, usize, &String)> = None;
        for stop in &self.stops {
            if let Some(start) = self.held.find(stop.as_str()) {
                let end = start + stop.len();
                let better = match best {
                    None => true,
                    Some((best_end, best_start, _)) => (end, start) < (best_end, best_start),
                };
                if better {
                    best = Some((end, start, stop));
                }
            }
        }
        best.map(|(_, start, stop)| (start, stop.clone()))
    }

    /// Byte offset of the longest suffix of the held text that is a proper prefix of some stop
    /// string; `held.len()` when there is none.
    fn partial_match_start(&self) -> usize {
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let earliest = self
            .held
            .len()
            .saturating_sub(longest_stop.saturating_sub(1));
        for (offset, _) in self.held.char_indices() {
            if offset < earliest {
                continue;
            }
            let suffix = &self.held[offset..];
            if self.stops.iter().any(|stop| stop.starts_with(suffix)) {
                return offset;
            }
        }
        self.held.len()
    }
}
