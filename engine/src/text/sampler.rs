//! Choosing the next token of every sequence of a step, on the device: only the chosen ids
//! (and log-probabilities, when a request asks) cross to the host, never a row of logits.
//!
//! Each sequence keeps a [`Sampler`] on the host with its settings and its own seeded
//! generator, which draws one uniform number per sampled token: so a seeded request gives the
//! same text whatever else is being served, and the device does no random-number work.
//! Each row's result depends only on its own logits and settings, never on the other rows of
//! the batch: rows with different filter shapes are computed in separate groups.
//!
//! Greedy rows take the arg-max of the log-probabilities in the logits' own dtype, exactly as
//! mlx-lm's `generate_step` does (in bf16, `logits - logsumexp` can round two logits to the
//! same value, and the first index wins); everything else is computed in float32.

use std::collections::BTreeMap;

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::argmax_axis;
use mlx_rs::ops::{arange, argpartition_axis, argsort_axis, concatenate, select};
use mlx_rs::{Array, Dtype};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::core::SamplingParams;
use crate::mlx_ext::{scatter, slice_axis};
use crate::text::constraint::TokenMask;

type Result<T> = std::result::Result<T, Exception>;

/// How many recent tokens the multiplicative repetition penalty looks at (mlx-lm's default).
const REPETITION_CONTEXT: usize = 20;

/// One sequence's sampling state on the host.
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

    /// Whether the penalties need the sequence's tokens: then the host must know every token
    /// before the next one is sampled (no step may be queued ahead of reading the last).
    pub fn has_penalties(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
    }

    /// The next row to sample for this sequence. `context` is the prompt followed by the
    /// generated tokens; `generated` is how many of its last tokens the model produced.
    pub fn row(&mut self, context: &[u32], generated: usize, logprobs: Option<usize>) -> Row {
        let p = &self.params;
        let uniform = if p.temperature > 0.0 {
            self.rng.random::<f32>()
        } else {
            0.0
        };
        Row {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            uniform,
            penalties: penalties(p, context, generated),
            logprobs,
            allowed: None,
        }
    }
}

/// For each token whose logit is changed: the bias added first (`logit_bias`), the
/// repetition factor (1: none), and the amount subtracted afterwards (presence + frequency ×
/// count). vLLM's order: logit biases, then penalties, then temperature and filters.
fn penalties(p: &SamplingParams, context: &[u32], generated: usize) -> Vec<Penalty> {
    let mut out: BTreeMap<u32, Penalty> = BTreeMap::new();
    for &(t, bias) in &p.logit_bias {
        out.entry(t).or_insert_with(|| Penalty::none(t)).bias = bias;
    }
    if p.repetition_penalty != 1.0 {
        let start = context.len().saturating_sub(REPETITION_CONTEXT);
        for &t in &context[start..] {
            out.entry(t).or_insert_with(|| Penalty::none(t)).factor = p.repetition_penalty;
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts = BTreeMap::<u32, u32>::new();
        for &t in &context[context.len() - generated.min(context.len())..] {
            *counts.entry(t).or_default() += 1;
        }
        for (t, n) in counts {
            out.entry(t).or_insert_with(|| Penalty::none(t)).subtracted =
                p.presence_penalty + p.frequency_penalty * n as f32;
        }
    }
    out.into_values().collect()
}

/// How one token's logit `v` is changed: `rep(v + bias) - subtracted`, where `rep` divides a
/// positive value by `factor` and multiplies a negative one (mlx-lm's repetition penalty).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalty {
    pub token: u32,
    pub bias: f32,
    pub factor: f32,
    pub subtracted: f32,
}

impl Penalty {
    fn none(token: u32) -> Self {
        Self {
            token,
            bias: 0.0,
            factor: 1.0,
            subtracted: 0.0,
        }
    }
}

/// What to sample for one row of a step's logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `<= 0`: greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    /// Drawn from the sequence's generator; where in the kept mass the sample falls.
    pub uniform: f32,
    /// Logit changes (biases and penalties), token ids unique.
    pub penalties: Vec<Penalty>,
    /// `Some(k)`: the chosen token's log-probability and the `k` most likely tokens.
    pub logprobs: Option<usize>,
    /// A constrained sequence's allowed tokens; the others get probability 0.
    pub allowed: Option<TokenMask>,
}

impl Row {
    fn greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// The filter shape the row is sampled with: `None` for plain temperature sampling
    /// (no sort needed), else how many candidates are sorted (top-k, or the whole vocabulary).
    fn shape(&self, vocab: usize) -> Option<usize> {
        let top_k = (self.top_k > 0 && self.top_k < vocab).then_some(self.top_k);
        if top_k.is_none() && self.top_p >= 1.0 && self.min_p <= 0.0 {
            None
        } else {
            Some(top_k.unwrap_or(vocab))
        }
    }
}

/// The device arrays one step's sampling produced; read them once the step is evaluated.
pub struct Sampled {
    /// `[rows]` uint32.
    pub tokens: Array,
    /// `[rows, 1]` chosen log-probabilities, `[rows, k]` top ids and their log-probabilities.
    logprobs: Option<(Array, Array, Array)>,
    wants: Vec<Option<usize>>,
}

/// One row's result on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub token: u32,
    /// The chosen token's log-probability and the most likely tokens with theirs, best first.
    pub logprobs: Option<(f32, Vec<(u32, f32)>)>,
}

impl Sampled {
    /// Everything to evaluate.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.tokens];
        if let Some((a, b, c)) = &self.logprobs {
            v.extend([a, b, c]);
        }
        v
    }

    /// The rows' choices (waits for the device).
    pub fn read(&self) -> Result<Vec<Choice>> {
        let tokens = host::<u32>(&self.tokens.as_dtype(Dtype::Uint32)?)?;
        let lp = match &self.logprobs {
            None => None,
            Some((chosen, ids, vals)) => Some((
                host::<f32>(chosen)?,
                host::<u32>(&ids.as_dtype(Dtype::Uint32)?)?,
                host::<f32>(vals)?,
                ids.shape()[1] as usize,
            )),
        };
        Ok(tokens
            .iter()
            .enumerate()
            .map(|(r, &token)| {
                let logprobs = match (&lp, self.wants[r]) {
                    (Some((chosen, ids, vals, k)), Some(want)) => {
                        let mut top: Vec<(u32, f32)> =
                            (0..*k).map(|i| (ids[r * k + i], vals[r * k + i])).collect();
                        top.sort_by(|a, b| b.1.total_cmp(&a.1));
                        top.truncate(want);
                        Some((chosen[r], top))
                    }
                    _ => None,
                };
                Choice { token, logprobs }
            })
            .collect())
    }
}

/// The values of an (evaluated or not) array, copied to the host.
fn host<T: mlx_rs::ArrayElement + Copy>(a: &Array) -> Result<Vec<T>> {
    let a = a.contiguous()?;
    a.eval()?;
    a.try_as_slice::<T>()
        .map(<[T]>::to_vec)
        .map_err(|e| Exception::custom(e.to_string()))
}

/// Samples one token for each row of `logits` (`[rows.len(), vocab]`, any float dtype), lazily.
pub fn sample(logits: &Array, rows: &[Row]) -> Result<Sampled> {
    let n = rows.len();
    let vocab = logits.shape()[1] as usize;
    // Constrained rows: their disallowed tokens to -inf before anything else, so that every
    // path below (greedy, filters, penalties, logprobs) sees only allowed tokens. A batch
    // without constrained rows adds nothing to the graph.
    let masked;
    let logits = match mask_bias(rows, vocab, logits.dtype())? {
        Some(bias) => {
            masked = logits.add(&bias)?;
            &masked
        }
        None => logits,
    };
    let wants: Vec<Option<usize>> = rows.iter().map(|r| r.logprobs).collect();
    // Greedy rows without penalties: mlx-lm's rule, in the logits' dtype.
    let plain_greedy = |r: &Row| r.greedy() && r.penalties.is_empty();
    let greedy = argmax_axis(
        logits.subtract(logits.logsumexp_axis(-1, true)?)?,
        -1,
        false,
    )?;
    if rows.iter().all(|r| plain_greedy(r) && r.logprobs.is_none()) {
        return Ok(Sampled {
            tokens: greedy,
            logprobs: None,
            wants,
        });
    }

    // Everything else: float32 log-probabilities of the penalised logits.
    let mut f = logits.as_dtype(Dtype::Float32)?;
    if rows.iter().any(|r| !r.penalties.is_empty()) {
        f = penalise(&f, rows, vocab)?;
    }
    let lp = f.subtract(f.logsumexp_axis(-1, true)?)?;

    // Tokens per row: gather each kind's rows, compute them together, put them back in order.
    let mut parts: Vec<Array> = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(n);
    let plain: Vec<usize> = (0..n).filter(|&i| plain_greedy(&rows[i])).collect();
    if !plain.is_empty() {
        parts.push(pick(&greedy, &plain, n)?);
        order.extend(&plain);
    }
    let penalised_greedy: Vec<usize> = (0..n)
        .filter(|&i| rows[i].greedy() && !plain_greedy(&rows[i]))
        .collect();
    if !penalised_greedy.is_empty() {
        let best = argmax_axis(&lp, -1, false)?;
        parts.push(pick(&best, &penalised_greedy, n)?);
        order.extend(&penalised_greedy);
    }
    let mut groups: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate().filter(|(_, r)| !r.greedy()) {
        groups.entry(r.shape(vocab)).or_default().push(i);
    }
    for (shape, members) in &groups {
        let group_lp = pick(&lp, members, n)?;
        let group_rows: Vec<&Row> = members.iter().map(|&i| &rows[i]).collect();
        parts.push(sample_group(&group_lp, &group_rows, *shape)?);
        order.extend(members);
    }
    let tokens = in_row_order(parts, &order)?;

    let logprobs = match rows.iter().filter_map(|r| r.logprobs).max() {
        None => None,
        Some(k) => {
            let k = k.clamp(1, vocab) as i32;
            let chosen = lp.take_along_axis(tokens.reshape(&[n as i32, 1])?, -1)?;
            let top = slice_axis(&argpartition_axis(lp.negative()?, k - 1, -1)?, 1, 0, k)?;
            let vals = lp.take_along_axis(&top, -1)?;
            Some((chosen, top, vals))
        }
    };
    Ok(Sampled {
        tokens,
        logprobs,
        wants,
    })
}

/// `[rows, vocab]` of 0 (allowed) and -inf (disallowed) in `dtype`, or `None` when no row is
/// constrained. Only the masks' bits cross to the device (a word per 32 tokens); they are
/// expanded there. Unconstrained rows allow everything: adding 0 leaves their logits exactly
/// as they were, in any dtype, so they sample as they would alone.
fn mask_bias(rows: &[Row], vocab: usize, dtype: Dtype) -> Result<Option<Array>> {
    if rows.iter().all(|r| r.allowed.is_none()) {
        return Ok(None);
    }
    let width = vocab.div_ceil(32);
    let mut words = vec![u32::MAX; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        if let Some(mask) = &row.allowed {
            let out = &mut words[r * width..(r + 1) * width];
            let n = mask.0.len().min(width);
            out[..n].copy_from_slice(&mask.0[..n]);
            // Past the mask's end (logits wider than the tokenizer): never allowed.
            out[n..].fill(0);
        }
    }
    let words = Array::from_slice(&words, &[rows.len() as i32, width as i32]);
    let token = arange::<_, u32>(0, vocab as u32, None)?;
    let word_of = token.floor_divide(Array::from_slice(&[32u32], &[1]))?;
    let bit_of = token.remainder(Array::from_slice(&[32u32], &[1]))?;
    let bits = crate::mlx_ext::bit_at(
        &words.take_axis(&word_of.as_dtype(Dtype::Int32)?, 1)?,
        &bit_of,
    )?;
    let bias = select(
        bits.eq(Array::from_slice(&[1u32], &[1]))?,
        Array::from_f32(0.0),
        Array::from_f32(f32::NEG_INFINITY),
    )?;
    Ok(Some(if dtype == Dtype::Float32 {
        bias
    } else {
        bias.as_dtype(dtype)?
    }))
}

/// Rows `members` of `a` (all of them when that is every row, without a copy).
fn pick(a: &Array, members: &[usize], rows: usize) -> Result<Array> {
    if members.len() == rows && members.iter().enumerate().all(|(i, &m)| i == m) {
        return Ok(a.clone());
    }
    let idx: Vec<i32> = members.iter().map(|&m| m as i32).collect();
    a.take_axis(Array::from_slice(&idx, &[idx.len() as i32]), 0)
}

/// `parts` concatenated hold the rows listed in `order`; returns them as rows `0..n`.
fn in_row_order(parts: Vec<Array>, order: &[usize]) -> Result<Array> {
    let parts: Vec<Array> = parts
        .into_iter()
        .map(|p| p.as_dtype(Dtype::Uint32))
        .collect::<Result<_>>()?;
    let all = if parts.len() == 1 {
        parts.into_iter().next().expect("one part")
    } else {
        concatenate(&parts, 0)?
    };
    if order.iter().enumerate().all(|(i, &r)| i == r) {
        return Ok(all);
    }
    let mut inverse = vec![0i32; order.len()];
    for (pos, &row) in order.iter().enumerate() {
        inverse[row] = pos as i32;
    }
    all.take_axis(Array::from_slice(&inverse, &[order.len() as i32]), 0)
}

/// Applies each row's biases and penalties to its float32 logits, in one gather and one
/// scatter.
fn penalise(f: &Array, rows: &[Row], vocab: usize) -> Result<Array> {
    let mut idx = Vec::new();
    let (mut bias, mut factor, mut sub) = (Vec::new(), Vec::new(), Vec::new());
    for (r, row) in rows.iter().enumerate() {
        for p in &row.penalties {
            if (p.token as usize) < vocab {
                idx.push((r * vocab + p.token as usize) as i32);
                bias.push(p.bias);
                factor.push(p.factor);
                sub.push(p.subtracted);
            }
        }
    }
    if idx.is_empty() {
        return Ok(f.clone());
    }
    let m = idx.len() as i32;
    let idx = Array::from_slice(&idx, &[m]);
    let bias = Array::from_slice(&bias, &[m]);
    let factor = Array::from_slice(&factor, &[m]);
    let sub = Array::from_slice(&sub, &[m]);
    let flat = f.reshape(&[-1])?;
    let v = flat.take_axis(&idx, 0)?.add(&bias)?;
    // mlx-lm's repetition penalty: positive logits divided, negative ones multiplied.
    let penalised = select(
        v.gt(Array::from_f32(0.0))?,
        v.divide(&factor)?,
        v.multiply(&factor)?,
    )?
    .subtract(&sub)?;
    scatter(&flat, &[idx], &penalised.reshape(&[m, 1])?, &[0])?.reshape(f.shape())
}

/// Samples the rows of one filter shape from their log-probabilities `lp` (`[n, vocab]`).
fn sample_group(lp: &Array, rows: &[&Row], shape: Option<usize>) -> Result<Array> {
    let n = rows.len() as i32;
    let column = |v: Vec<f32>| Array::from_slice(&v, &[n, 1]);
    let temperature = column(rows.iter().map(|r| r.temperature).collect());
    let uniform = column(rows.iter().map(|r| r.uniform).collect());
    let Some(k) = shape else {
        // No filter: softmax(lp / T) over the whole vocabulary, in vocabulary order.
        let max = lp.max_axis(-1, true)?;
        let w = lp.subtract(&max)?.divide(&temperature)?.exp()?;
        return draw(&w, &uniform, None, None);
    };
    let k = k as i32;
    let vocab = lp.shape()[1];
    // Candidates sorted by probability, most likely first.
    let (ids, slp) = if k < vocab {
        let top = slice_axis(&argpartition_axis(lp.negative()?, k - 1, -1)?, 1, 0, k)?;
        let top_lp = lp.take_along_axis(&top, -1)?;
        let order = argsort_axis(top_lp.negative()?, -1)?;
        (
            top.take_along_axis(&order, -1)?,
            top_lp.take_along_axis(&order, -1)?,
        )
    } else {
        let order = argsort_axis(lp.negative()?, -1)?;
        let slp = lp.take_along_axis(&order, -1)?;
        (order, slp)
    };
    let first = slice_axis(&slp, 1, 0, 1)?;
    // top-k: rank below k.
    let top_k: Vec<i32> = rows
        .iter()
        .map(|r| {
            if r.top_k > 0 && (r.top_k as i32) < k {
                r.top_k as i32
            } else {
                k
            }
        })
        .collect();
    let rank = arange::<_, i32>(0, k, None)?.reshape(&[1, k])?;
    let mut keep = rank.lt(Array::from_slice(&top_k, &[n, 1]))?;
    // min-p: log-probability at least the best one's plus ln(min_p).
    let min_p = column(
        rows.iter()
            .map(|r| {
                if r.min_p > 0.0 {
                    r.min_p.ln()
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect(),
    );
    keep = keep.logical_and(slp.ge(first.add(&min_p)?)?)?;
    // top-p: the most likely tokens until their mass reaches top_p (the one that reaches it
    // included), i.e. those with less than top_p before them.
    let top_p = column(
        rows.iter()
            .map(|r| {
                if r.top_p < 1.0 {
                    r.top_p
                } else {
                    f32::INFINITY
                }
            })
            .collect(),
    );
    let before = slp.exp()?.cumsum(-1, false, false)?;
    keep = keep.logical_and(before.lt(&top_p)?)?;
    let w = slp
        .subtract(&first)?
        .divide(&temperature)?
        .exp()?
        .multiply(keep.as_dtype(Dtype::Float32)?)?;
    draw(&w, &uniform, Some(&ids), Some(&keep))
}

/// The index where `uniform × total` falls in the running sum of `w` (`[n, m]`), mapped
/// through `ids` when the columns are sorted candidates. A row whose draw lands past the kept
/// mass by rounding takes its first candidate.
fn draw(w: &Array, uniform: &Array, ids: Option<&Array>, keep: Option<&Array>) -> Result<Array> {
    let running = w.cumsum(-1, false, true)?;
    let m = running.shape()[1];
    let total = slice_axis(&running, 1, m - 1, m)?;
    let target = uniform.multiply(&total)?;
    let mut index = running
        .le(&target)?
        .as_dtype(Dtype::Int32)?
        .sum_axis(-1, false)?;
    let kept = match keep {
        Some(k) => k.as_dtype(Dtype::Int32)?.sum_axis(-1, false)?,
        None => Array::from_int(m),
    };
    index = select(index.lt(&kept)?, &index, Array::from_int(0))?;
    match ids {
        None => Ok(index),
        Some(ids) => ids
            .take_along_axis(index.reshape(&[-1, 1])?, -1)?
            .reshape(&[-1]),
    }
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

    /// Samples `logits` (one row) `times` times with `p`.
    fn draws(p: SamplingParams, logits: &[f32], times: usize) -> Vec<u32> {
        let mut s = Sampler::new(p);
        let row_logits = Array::from_slice(logits, &[1, logits.len() as i32]);
        (0..times)
            .map(|_| {
                let row = s.row(&[], 0, None);
                sample(&row_logits, &[row]).unwrap().read().unwrap()[0].token
            })
            .collect()
    }

    #[test]
    fn greedy_is_argmax() {
        assert_eq!(draws(params(0.0), &[0.1, 3.0, -1.0, 2.9], 1), vec![1]);
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = || draws(params(1.0), &logits, 50);
        assert_eq!(run(), run());
        let distinct: std::collections::HashSet<_> = run().into_iter().collect();
        assert!(distinct.len() > 5, "temperature 1 should spread choices");
    }

    #[test]
    fn samples_follow_the_distribution() {
        // p = softmax([0, ln 3]) = [0.25, 0.75]: 4000 draws land near 3000 on token 1.
        let logits = [0.0, 3f32.ln()];
        let ones = draws(params(1.0), &logits, 4000)
            .iter()
            .filter(|&&t| t == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones} of 4000");
        // Through the sorted path (top-p just below 1) the same.
        let p = SamplingParams {
            top_p: 0.999,
            ..params(1.0)
        };
        let ones = draws(p, &logits, 4000).iter().filter(|&&t| t == 1).count();
        assert!((2850..3150).contains(&ones), "{ones} of 4000 (sorted)");
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut p = params(5.0);
        p.top_k = 1;
        assert!(draws(p, &[0.0, 1.0, 0.5], 20).iter().all(|&t| t == 1));
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
            assert!(draws(p, &logits, 200).iter().all(|&t| t < 2));
        }
        // top-p keeps the token that reaches the mass: 0.5 needs only the first of two.
        let p = SamplingParams {
            top_p: 0.5,
            ..params(1.0)
        };
        assert!(draws(p.clone(), &[2.0, 0.9, 0.0], 200)
            .iter()
            .all(|&t| t == 0));
        // …and one more when the first falls short of it (p = 0.44, 0.40, 0.16).
        let two = draws(p, &[1.0, 0.9, 0.0], 200);
        assert!(two.iter().all(|&t| t < 2) && two.contains(&1));
    }

    #[test]
    fn penalties_push_down_repeated_tokens() {
        let mut p = params(0.0);
        p.repetition_penalty = 2.0;
        p.frequency_penalty = 1.0;
        // Context [0, 0, 2], the last two generated: token 0 → 4/2 - 1 = 1, token 2 →
        // -2*2 - 1 = -5, token 1 untouched at 3: greedy picks 1.
        let mut s = Sampler::new(p);
        let row = s.row(&[0, 0, 2], 2, Some(3));
        let pen = |token, factor, subtracted| Penalty {
            token,
            bias: 0.0,
            factor,
            subtracted,
        };
        assert_eq!(
            row.penalties,
            vec![pen(0, 2.0, 1.0), pen(2, 2.0, 1.0)],
            "token 0 counted once among the generated, token 2 once"
        );
        let logits = Array::from_slice(&[4.0f32, 3.0, -2.0], &[1, 3]);
        let choice = sample(&logits, &[row]).unwrap().read().unwrap().remove(0);
        assert_eq!(choice.token, 1);
        let (lp, top) = choice.logprobs.unwrap();
        // log-probabilities of the penalised logits [1, 3, -5].
        let z = (1f32.exp() + 3f32.exp() + (-5f32).exp()).ln();
        assert!((lp - (3.0 - z)).abs() < 1e-5);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 0, 2]);
    }

    #[test]
    fn logit_bias_is_added_before_the_penalties_and_bans_or_forces_tokens() {
        let logits = [4.0f32, 3.0, -2.0, 0.5];
        let biased = |bias: Vec<(u32, f32)>, temperature: f32| SamplingParams {
            logit_bias: bias,
            ..params(temperature)
        };
        // -100 bans the best token, greedy or sampled; +100 forces one, at any temperature.
        assert_eq!(draws(biased(vec![(0, -100.0)], 0.0), &logits, 1), vec![1]);
        assert!(draws(biased(vec![(0, -100.0)], 1.5), &logits, 200)
            .iter()
            .all(|&t| t != 0));
        assert!(draws(biased(vec![(2, 100.0)], 1.5), &logits, 200)
            .iter()
            .all(|&t| t == 2));
        // A bias only the host knows of does not hold back the pipelined decode loop.
        assert!(!Sampler::new(biased(vec![(2, 100.0)], 1.0)).has_penalties());
        // With penalties: rep(v + bias) - subtracted. Context [0, 1], token 1 generated: token
        // 0 -> 4 / 2 = 2; token 1 -> (3 + 3) / 2 - 1 (its frequency) = 2; token 3 -> 0.5 +
        // 2.6 = 3.1, the best.
        let mut p = biased(vec![(1, 3.0), (3, 2.6)], 0.0);
        p.repetition_penalty = 2.0;
        p.frequency_penalty = 1.0;
        let mut s = Sampler::new(p);
        let row = s.row(&[0, 1], 1, Some(4));
        let l = Array::from_slice(&logits, &[1, 4]);
        let choice = sample(&l, &[row]).unwrap().read().unwrap().remove(0);
        assert_eq!(choice.token, 3);
        let (lp, _) = choice.logprobs.unwrap();
        let z = [2f32, 2.0, -2.0, 3.1]
            .iter()
            .map(|v| v.exp())
            .sum::<f32>()
            .ln();
        assert!((lp - (3.1 - z)).abs() < 1e-5, "{lp}");
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let logits = Array::from_slice(&[1.0f32, 2.0, 3.0], &[1, 3]);
        let row = Sampler::new(params(0.0)).row(&[], 0, Some(2));
        let choice = sample(&logits, &[row]).unwrap().read().unwrap().remove(0);
        assert_eq!(choice.token, 2);
        let (chosen, top) = choice.logprobs.unwrap();
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
        let total: f32 = [1f32, 2.0, 3.0].iter().map(|l| (l - 3.0).exp()).sum();
        assert!((chosen + total.ln()).abs() < 1e-6);
    }

    #[test]
    fn a_row_samples_the_same_alone_and_in_any_batch() {
        let vocab = 64;
        let row_logits = |seed: usize| -> Vec<f32> {
            (0..vocab)
                .map(|i| ((i * 7 + seed * 13) as f32 * 0.61).sin() * 3.0)
                .collect()
        };
        let settings = [
            params(0.0),
            params(0.7),
            SamplingParams {
                top_k: 5,
                ..params(1.0)
            },
            SamplingParams {
                top_p: 0.8,
                min_p: 0.05,
                ..params(1.2)
            },
            SamplingParams {
                repetition_penalty: 1.3,
                ..params(0.9)
            },
            SamplingParams {
                logit_bias: vec![(5, 4.0), (9, -100.0)],
                ..params(0.0)
            },
        ];
        // The rows each sequence would sample next (the same uniform in both runs).
        let rows: Vec<Row> = settings
            .iter()
            .map(|p| Sampler::new(p.clone()).row(&[1, 2, 3], 1, Some(2)))
            .collect();
        let alone: Vec<Choice> = (0..rows.len())
            .map(|i| {
                let l = Array::from_slice(&row_logits(i), &[1, vocab as i32]);
                sample(&l, &rows[i..=i]).unwrap().read().unwrap().remove(0)
            })
            .collect();
        let all: Vec<f32> = (0..rows.len()).flat_map(row_logits).collect();
        let batch = Array::from_slice(&all, &[rows.len() as i32, vocab as i32]);
        let together = sample(&batch, &rows).unwrap().read().unwrap();
        assert_eq!(together, alone);
    }

    fn mask_of(allowed: &[usize]) -> TokenMask {
        let mut words = vec![0u32; 4];
        for &t in allowed {
            words[t / 32] |= 1 << (t % 32);
        }
        TokenMask(words.into())
    }

    #[test]
    fn a_masked_row_samples_only_allowed_tokens_and_leaves_the_others_alone() {
        let vocab = 40;
        let values: Vec<f32> = (0..vocab).map(|i| (i as f32 * 0.71).sin() * 4.0).collect();
        let allowed = [3usize, 17, 35];
        for p in [
            params(0.0),
            params(1.0),
            SamplingParams {
                top_p: 0.9,
                ..params(1.5)
            },
        ] {
            let mut s = Sampler::new(p.clone());
            for _ in 0..30 {
                let mut row = s.row(&[], 0, Some(2));
                row.allowed = Some(mask_of(&allowed));
                let free = Sampler::new(p.clone()).row(&[], 0, None);
                // The masked row beside a free one: the free one samples as it would alone.
                let both: Vec<f32> = values.iter().chain(values.iter()).copied().collect();
                let logits = Array::from_slice(&both, &[2, vocab])
                    .as_dtype(Dtype::Bfloat16)
                    .unwrap();
                let got = sample(&logits, &[row, free.clone()])
                    .unwrap()
                    .read()
                    .unwrap();
                assert!(allowed.contains(&(got[0].token as usize)), "{:?}", got[0]);
                let (_, top) = got[0].logprobs.clone().unwrap();
                assert!(top.iter().all(|(t, _)| allowed.contains(&(*t as usize))));
                let single = Array::from_slice(&values, &[1, vocab])
                    .as_dtype(Dtype::Bfloat16)
                    .unwrap();
                let alone = sample(&single, &[free]).unwrap().read().unwrap();
                assert_eq!(got[1], alone[0]);
            }
        }
    }

    #[test]
    fn greedy_in_half_precision_follows_mlx_lm() {
        // bf16 logits: the arg-max of `logits - logsumexp` in bf16, as mlx-lm computes it.
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.123).sin() * 8.0).collect();
        let logits = Array::from_slice(&values, &[1, 1000])
            .as_dtype(Dtype::Bfloat16)
            .unwrap();
        let reference = argmax_axis(
            logits
                .subtract(logits.logsumexp_axis(-1, true).unwrap())
                .unwrap(),
            -1,
            false,
        )
        .unwrap()
        .as_dtype(Dtype::Uint32)
        .unwrap();
        let row = Sampler::new(params(0.0)).row(&[], 0, None);
        let ours = sample(&logits, &[row]).unwrap().read().unwrap()[0].token;
        assert_eq!(ours, reference.as_slice::<u32>()[0]);
    }
}
