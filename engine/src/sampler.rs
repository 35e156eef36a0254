//! Choosing the next token from a sequence's logits, on the host. Each request has its own
//! seeded generator, so a seeded request gives the same text whatever else is being served.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::core::SamplingParams;

/// How many recent tokens the multiplicative repetition penalty looks at (mlx-lm's default).
const REPETITION_CONTEXT: usize = 20;

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// Greedy sampling needs only the arg-max, which the device can compute without copying
    /// the whole vocabulary to the host.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0 && !self.has_penalties()
    }

    fn has_penalties(&self) -> bool {
        self.params.repetition_penalty != 1.0
            || self.params.presence_penalty != 0.0
            || self.params.frequency_penalty != 0.0
    }

    /// Applies the penalties to `logits` in place. `context` is the prompt followed by the
    /// generated tokens; `generated` is how many of its last tokens the model produced.
    pub fn apply_penalties(&self, logits: &mut [f32], context: &[u32], generated: usize) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let start = context.len().saturating_sub(REPETITION_CONTEXT);
            let mut seen = std::collections::HashSet::new();
            for &t in &context[start..] {
                if let Some(l) = logits.get_mut(t as usize) {
                    if seen.insert(t) {
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &t in &context[context.len() - generated.min(context.len())..] {
                *counts.entry(t).or_default() += 1;
            }
            for (t, n) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    /// Picks a token from `logits` (penalties already applied).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let lp = log_softmax(logits);
        // Candidates sorted by probability, most likely first.
        let mut order: Vec<u32> = (0..lp.len() as u32).collect();
        let keep = if p.top_k > 0 && p.top_k < order.len() {
            order.select_nth_unstable_by(p.top_k - 1, |&a, &b| {
                lp[b as usize].total_cmp(&lp[a as usize])
            });
            p.top_k
        } else {
            order.len()
        };
        order.truncate(keep);
        order.sort_unstable_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
        if p.min_p > 0.0 {
            let threshold = lp[order[0] as usize] + p.min_p.ln();
            order.retain(|&t| lp[t as usize] >= threshold);
        }
        if p.top_p < 1.0 {
            let mut mass = 0.0f32;
            let mut cut = order.len();
            for (i, &t) in order.iter().enumerate() {
                mass += lp[t as usize].exp();
                if mass >= p.top_p {
                    cut = i + 1;
                    break;
                }
            }
            order.truncate(cut.max(1));
        }
        // Sample from softmax(logprob / temperature) over the survivors.
        let max = lp[order[0] as usize];
        let weights: Vec<f32> = order
            .iter()
            .map(|&t| ((lp[t as usize] - max) / p.temperature).exp())
            .collect();
        let total: f32 = weights.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (&t, w) in order.iter().zip(&weights) {
            if r < *w {
                return t;
            }
            r -= w;
        }
        order[0]
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&l| l - log_z).collect()
}

/// The chosen token's log-probability and the `k` most likely tokens with theirs.
pub fn top_logprobs(logits: &[f32], chosen: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let lp = log_softmax(logits);
    let mut order: Vec<u32> = (0..lp.len() as u32).collect();
    let k = k.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
    }
    order.truncate(k);
    order.sort_unstable_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
    let top = order.into_iter().map(|t| (t, lp[t as usize])).collect();
    (lp[chosen as usize], top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: Some(7),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = || {
            let mut s = Sampler::new(params(1.0));
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        let distinct: std::collections::HashSet<_> = run().into_iter().collect();
        assert!(distinct.len() > 5, "temperature 1 should spread choices");
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut p = params(5.0);
        p.top_k = 1;
        let mut s = Sampler::new(p);
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = [10.0, 9.0, -10.0, -10.0];
        for p in [
            SamplingParams {
                top_p: 0.9,
                ..params(1.0)
            },
            SamplingParams {
                min_p: 0.2,
                ..params(1.0)
            },
        ] {
            let mut s = Sampler::new(p);
            for _ in 0..200 {
                assert!(s.sample(&logits) < 2);
            }
        }
    }

    #[test]
    fn penalties_push_down_repeated_tokens() {
        let mut p = params(0.0);
        p.repetition_penalty = 2.0;
        p.frequency_penalty = 1.0;
        let s = Sampler::new(p);
        let mut logits = vec![4.0, 3.0, -1.0];
        s.apply_penalties(&mut logits, &[0, 0, 2], 2);
        assert_eq!(logits[0], 4.0 / 2.0 - 1.0);
        assert_eq!(logits[1], 3.0);
        assert_eq!(logits[2], -2.0 - 1.0);
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let (chosen, top) = top_logprobs(&[1.0, 2.0, 3.0], 0, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
        let total: f32 = log_softmax(&[1.0, 2.0, 3.0]).iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(chosen < top[1].1);
    }
}
