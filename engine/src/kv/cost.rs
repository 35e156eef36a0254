//! What a sequence's KV costs in memory by its length. The registry reserves a model's KV
//! memory with it, the scheduler admits and pauses sequences by it, and both count what the
//! caches hold: every position of full-attention layers, and of sliding-window layers only
//! about a window (float caches, in the slot pool and in a sequence's own, forget what no
//! query sees any more; quantized caches keep everything). For Gemma 3 27B (52 of 62 layers
//! windowed, window 1,024) a 128k-token sequence then costs ~11 GB of bf16 KV instead of
//! ~65 GB.

/// The sliding-window layers of a model: their share of a position's KV bytes, and the
/// longest window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowedKv {
    pub bytes_per_token: u64,
    pub window: u64,
}

/// One sequence's KV bytes as a function of its length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvCost {
    /// Bytes of one position across every KV layer (0: unknown).
    pub per_token: u64,
    /// Of those, the bytes in sliding-window layers.
    pub windowed_per_token: u64,
    /// The most positions a windowed layer of a sequence's cache holds (0: such layers keep
    /// every position, as quantized caches do).
    pub window_span: usize,
}

impl KvCost {
    /// The cost for a model whose position takes `per_token` bytes, `windowed` of them in
    /// sliding-window layers whose caches forget (`None`: none do), with the scheduler's
    /// prefill chunk and the positions such layers keep beyond their window (`slack`: a
    /// block when the prefix cache snapshots replies' ends, `PrefixCache::window_slack`).
    pub fn new(
        per_token: u64,
        windowed: Option<WindowedKv>,
        prefill_chunk: usize,
        slack: usize,
    ) -> Self {
        let Some(w) = windowed.filter(|w| w.bytes_per_token > 0) else {
            return Self {
                per_token,
                ..Self::default()
            };
        };
        // A windowed layer's buffer has room for one more step's writes beyond what it keeps,
        // rounded up to the caches' growth step.
        let step = crate::kv::cache::STEP as usize;
        let room = prefill_chunk.div_ceil(step) * step;
        Self {
            per_token,
            windowed_per_token: w.bytes_per_token.min(per_token),
            window_span: w.window as usize + slack + room,
        }
    }

    /// Bytes of a sequence of `positions`.
    pub fn bytes(&self, positions: usize) -> u64 {
        let all = self.per_token * positions as u64;
        if self.window_span == 0 || positions <= self.window_span {
            return all;
        }
        let forgotten = (positions - self.window_span) as u64;
        all - self.windowed_per_token * forgotten
    }

    /// The most positions a lone sequence holds within `bytes` (`usize::MAX` when a position
    /// costs nothing known).
    pub fn positions_within(&self, bytes: u64) -> usize {
        if self.per_token == 0 {
            return usize::MAX;
        }
        let plain = (bytes / self.per_token) as usize;
        if self.window_span == 0 || plain <= self.window_span {
            return plain;
        }
        // Past the span, a position costs only its full-attention layers.
        let full = self.per_token - self.windowed_per_token;
        if full == 0 {
            return usize::MAX;
        }
        let past = bytes - self.per_token * self.window_span as u64;
        self.window_span + (past / full) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gemma 3 27B in bf16: 62 layers of 16 KV heads of 128, 52 of them windowed (1,024).
    fn gemma3_27b() -> KvCost {
        let layer = 2 * 16 * 128 * 2;
        let windowed = WindowedKv {
            bytes_per_token: 52 * layer,
            window: 1024,
        };
        KvCost::new(62 * layer, Some(windowed), 512, 32)
    }

    #[test]
    fn a_long_sequence_pays_for_the_window_of_windowed_layers_only() {
        let cost = gemma3_27b();
        // The window, a block of slack, a chunk's room.
        assert_eq!(cost.window_span, 1024 + 32 + 512);
        let layer = 2 * 16 * 128 * 2u64;
        // Short: every position of every layer.
        assert_eq!(cost.bytes(1000), 1000 * 62 * layer);
        // Long: full layers whole, windowed layers their span.
        let long = cost.bytes(128_000);
        assert_eq!(long, 128_000 * 10 * layer + 1568 * 52 * layer);
        assert!(long * 5 < 128_000 * 62 * layer);
        // The inverse: the longest sequence within those bytes.
        assert_eq!(cost.positions_within(long), 128_000);
        assert_eq!(cost.positions_within(1000 * 62 * layer), 1000);
    }

    #[test]
    fn without_windows_a_position_costs_the_same_at_any_length() {
        let plain = KvCost::new(100, None, 512, 32);
        assert_eq!(plain.bytes(10_000), 1_000_000);
        assert_eq!(plain.positions_within(1_000_050), 10_000);
        assert_eq!(KvCost::default().positions_within(5), usize::MAX);
        // A model whose every layer is windowed: past the span, positions are free.
        let all = KvCost::new(
            100,
            Some(WindowedKv {
                bytes_per_token: 100,
                window: 16,
            }),
            512,
            0,
        );
        assert_eq!(all.bytes(100_000), all.bytes(all.window_span));
        assert_eq!(all.positions_within(u64::MAX / 2), usize::MAX);
    }
}
