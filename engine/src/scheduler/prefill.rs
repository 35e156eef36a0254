//! How a step's prompt tokens are chosen: which sequences read how much of their prompt
//! (short prompts first), and sequences whose prompt starts as another's waiting for its
//! blocks instead of computing them twice.

use super::{Engine, Sequence};
use crate::kv::PrefixCache;
use crate::metrics;

impl Sequence {
    /// Started from what the prefix cache gave it and computed nothing of its own yet.
    fn untouched(&self) -> bool {
        self.generated == 0 && self.prefilled == self.cached && self.prefilling()
    }

    /// Whether blocks up to `position` are still to be published: its prompt is not all
    /// computed, or its last chunk's step has not been read yet (whose completion publishes
    /// them).
    fn will_publish(&self, block_size: usize, position: usize) -> bool {
        self.blocks.published(block_size) < position
            && (self.prefilling() || (self.generated == 0 && self.pending > 0))
    }
}

impl Engine {
    /// Sequences whose prompt starts as another running one's does — the choices of one
    /// request, agents sharing a system prompt and tools, requests sent together — would each
    /// compute that part. Steps give prefill chunks to one sequence after another anyway, so a
    /// sequence that has computed nothing of its own waits while one ahead of it computes the
    /// blocks they share (at most a step or two later than it could have started), then is
    /// placed again if the RAM tier now holds more of its prompt than it took when it was
    /// admitted: each completed step publishes its blocks there. Returns which sequences wait
    /// this step.
    pub(super) fn share_prefills(&mut self, running: &mut [Sequence]) -> Vec<bool> {
        let mut waits = vec![false; running.len()];
        let Some(b) = self.prefix.as_ref().map(PrefixCache::block_size) else {
            return waits;
        };
        for i in 0..running.len() {
            let seq = &running[i];
            if seq.sharing_settled {
                continue;
            }
            if !seq.untouched() {
                running[i].sharing_settled = true;
                continue;
            }
            // Ahead of it: those that have started computing, and those placed before it.
            // Its last prompt token is always computed (its logits give the first sample).
            let own = &seq.tokens[..seq.target - 1];
            let wanted = seq.prefilled + b;
            let (mut shares, mut wait) = (false, false);
            for (j, ahead) in running.iter().enumerate() {
                if j == i || (j > i && ahead.untouched()) {
                    continue;
                }
                let shared = common_prefix(&ahead.tokens, own) / b * b;
                if shared >= wanted {
                    shares = true;
                    wait |= ahead.will_publish(b, shared);
                }
            }
            if wait {
                waits[i] = true;
                continue;
            }
            running[i].sharing_settled = true;
            // Alone, it took at admission all the cache holds for it: no second lookup.
            if !shares {
                continue;
            }
            let seq = &mut running[i];
            let more = self.prefix.as_ref().map_or(0, |p| p.ram_hit(&seq.tokens));
            if more <= seq.prefilled {
                continue;
            }
            let before = seq.cached;
            self.unplace(seq);
            self.place(seq);
            seq.cached = seq.prefilled;
            let gained = seq.cached.saturating_sub(before);
            metrics::add_prompt_tokens(&self.model_id, gained, gained);
            tracing::debug!(id = %seq.req.id, model = %self.model_id, from_cache = seq.cached, gained, "took a prefix another sequence computed");
        }
        waits
    }

    /// How many prompt tokens each sequence reads this step (0: none). The step's prefill
    /// budget goes first to prompts whose rest fits in it, in order, then to the others: a
    /// short request that arrives while a long prompt is being read starts answering a step
    /// later, not once the long prompt is read (which it delays by its own few tokens).
    pub(super) fn prefill_lengths(&self, running: &[Sequence], waits: &[bool]) -> Vec<usize> {
        let mut lengths = vec![0; running.len()];
        let mut budget = self.config.prefill_chunk;
        for short_first in [true, false] {
            for (i, seq) in running.iter().enumerate() {
                if budget == 0 || !seq.prefilling() || waits[i] || lengths[i] > 0 {
                    continue;
                }
                let rest = seq.target - seq.prefilled;
                if short_first && rest > budget {
                    continue;
                }
                // Hybrid models: chunks stop at snapshot boundaries, where the prefix cache
                // snapshots the recurrent state (a short prompt may then take two steps).
                let mut len = rest.min(budget);
                if let Some(p) = self.prefix.as_ref() {
                    len = len.min(p.prefill_limit(seq.prefilled, &seq.blocks));
                }
                lengths[i] = len;
                budget -= len;
            }
        }
        lengths
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
