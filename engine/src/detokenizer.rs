//! Streaming token-to-text conversion.
//!
//! Decoding one token at a time is wrong for two reasons: a character may be spread over
//! several byte-level tokens (emoji, CJK), and decoders such as SentencePiece's Metaspace treat
//! the first token of a sequence specially (they drop its leading space). So each step decodes
//! a short window that starts a few tokens back, and emits only what the newest tokens added
//! to that window's text. Text that ends in an incomplete character (U+FFFD) is held back
//! until a later token completes it.

use std::collections::HashSet;
use std::sync::Arc;

const REPLACEMENT_CHAR: char = '\u{FFFD}';

/// Turns generated token ids into text pieces that are always valid, complete UTF-8.
///
/// The pieces returned by [`push`](Self::push) followed by [`flush`](Self::flush) concatenate
/// to the tokenizer's decode of all ids (with the same `skip_special_tokens`), except that
/// `clean_up_tokenization_spaces` is not applied.
pub struct IncrementalDetokenizer {
    tokenizer: Arc<tokenizers::Tokenizer>,
    skip_special_tokens: bool,
    /// Special tokens to keep although special ones are skipped: (all special ids, the kept).
    keep: Option<(Arc<HashSet<u32>>, Vec<u32>)>,
    ids: Vec<u32>,
    /// Start of the window whose text has already been emitted up to `read_offset`.
    prefix_offset: usize,
    /// Tokens before this index have had their text emitted.
    read_offset: usize,
}

impl IncrementalDetokenizer {
    pub fn new(tokenizer: Arc<tokenizers::Tokenizer>, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            keep: None,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Skips the special tokens `special` except `keep`.
    pub fn keeping(
        tokenizer: Arc<tokenizers::Tokenizer>,
        special: Arc<HashSet<u32>>,
        keep: Vec<u32>,
    ) -> Self {
        Self {
            keep: Some((special, keep)),
            ..Self::new(tokenizer, true)
        }
    }

    /// All ids fed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Feeds one token and returns the text it completed (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        self.emit(false)
    }

    /// Returns whatever is still held back (an incomplete character comes out as U+FFFD, as
    /// a full decode would give it). Later pushes continue after this point.
    pub fn flush(&mut self) -> String {
        self.emit(true)
    }

    fn emit(&mut self, force: bool) -> String {
        let prefix_text = self.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let window_text = self.decode(&self.ids[self.prefix_offset..]);
        if window_text.len() <= prefix_text.len() {
            return String::new();
        }
        if !force && window_text.ends_with(REPLACEMENT_CHAR) {
            return String::new();
        }
        let new_text = match window_text.strip_prefix(prefix_text.as_str()) {
            Some(rest) => rest.to_owned(),
            // The decoder rewrote earlier text (it should not, for the decoders LLMs use);
            // fall back to a byte cut at the nearest character boundary.
            None => {
                let mut cut = prefix_text.len();
                while !window_text.is_char_boundary(cut) {
                    cut += 1;
                }
                window_text[cut..].to_owned()
            }
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        new_text
    }

    fn decode(&self, ids: &[u32]) -> String {
        if ids.is_empty() {
            return String::new();
        }
        let decoded = match &self.keep {
            None => self.tokenizer.decode(ids, self.skip_special_tokens),
            Some((special, keep)) => {
                let ids: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|id| !special.contains(id) || keep.contains(id))
                    .collect();
                self.tokenizer.decode(&ids, false)
            }
        };
        match decoded {
            Ok(text) => text,
            Err(err) => {
                tracing::warn!(error = %err, "detokenizer: decoding failed, dropping these tokens");
                String::new()
            }
        }
    }
}
