//! One forward pass over several sequences: their new tokens are laid end to end in one row
//! (`[1, N]`), so the projections and MLPs run once for all of them, while attention runs per
//! sequence against its own cache.

use crate::kv::cache::KvCache;

/// A sequence's share of a forward pass.
pub struct BatchSeq<'a> {
    /// New tokens of this sequence in the pass (1 when decoding, up to a prefill chunk).
    pub len: usize,
    pub cache: &'a mut dyn KvCache,
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last position of each sequence: `[num_seqs, vocab]`.
    Last,
    /// Every position: `[1, N, vocab]` (tests compare these with the reference).
    All,
}
