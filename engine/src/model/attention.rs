//! Attention of every sequence of a flattened batch. Each sequence gets RoPE at its own
//! position, its own keys and values and its own mask, so that its result does not depend on
//! what else is in the batch.
//!
//! Two ways, same results: sequences whose caches live in one slot pool (the engine's) decode
//! together — one RoPE, one scatter and one attention per layer for all of them — while
//! prefill chunks and stand-alone caches (long sequences the pool does not take, tests,
//! tools) attend one sequence at a time.

use std::collections::BTreeMap;

use mlx_rs::error::Exception;
use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::ops::{arange, concatenate};
use mlx_rs::Array;

use super::batch::BatchSeq;
use super::layers::Rope;
use crate::mlx_ext::slice_axis;
use crate::slot_cache::SharedSlots;

type Result<T> = std::result::Result<T, Exception>;

/// Batched decode attends over keys padded to a multiple of this many positions, the padding
/// masked out. The padded length is a function of the sequence's own length only (never of
/// the longest sequence in the batch), and sequences of different padded lengths attend in
/// separate groups: so a sequence's numbers are the same alone and in any batch (MLX's CPU
/// softmax and BLAS reductions round differently for different lengths, even over masked
/// zeros — measured).
const DECODE_BUCKET: i32 = 256;

/// What a layer's attention has beyond causal attention over every earlier position.
#[derive(Clone, Copy, Default)]
pub struct Extras<'a> {
    /// Sliding window: each position attends to itself and the `window - 1` positions before
    /// it (mlx-lm's `window_size` masks). The cache still holds every position, so a prefix
    /// reused from the cache or a chunked prefill sees the same window.
    pub window: Option<i32>,
    /// Per-head attention sinks (gpt-oss): an extra logit in each head's softmax.
    pub sinks: Option<&'a Array>,
}

/// `queries` `[1, N, heads, head_dim]`, `keys`/`values` `[1, N, kv_heads, head_dim]`, rows
/// ordered as `batch`. Returns `[1, N, heads * head_dim]`.
pub fn attend(
    queries: &Array,
    keys: &Array,
    values: &Array,
    batch: &mut [BatchSeq<'_>],
    layer: usize,
    rope: &Rope,
    scale: f32,
) -> Result<Array> {
    attend_with(
        queries,
        keys,
        values,
        batch,
        layer,
        rope,
        scale,
        Extras::default(),
    )
}

/// [`attend`] with a sliding window and/or attention sinks.
#[allow(clippy::too_many_arguments)]
pub fn attend_with(
    queries: &Array,
    keys: &Array,
    values: &Array,
    batch: &mut [BatchSeq<'_>],
    layer: usize,
    rope: &Rope,
    scale: f32,
    extras: Extras<'_>,
) -> Result<Array> {
    let params = (rope, scale, extras);
    match shared_pool(batch) {
        Some(pool) => attend_pooled(queries, keys, values, batch, layer, params, &pool),
        None => attend_each(queries, keys, values, batch, layer, params),
    }
}

/// A layer's RoPE, softmax scale and extras, passed along together.
type Params<'a> = (&'a Rope, f32, Extras<'a>);

/// The first key position a chunk of queries starting at `offset` can see.
fn window_start(offset: i32, window: Option<i32>) -> i32 {
    window.map_or(0, |w| (offset - w + 1).max(0))
}

/// The mask of queries at positions `offset..offset + len` over keys at `start..offset +
/// len`: causal, and within the window if there is one.
fn chunk_mask(offset: i32, len: i32, start: i32, window: Option<i32>) -> Result<Array> {
    let q_pos = arange::<_, i32>(offset, offset + len, None)?.reshape(&[len, 1])?;
    let k_pos = arange::<_, i32>(start, offset + len, None)?.reshape(&[1, -1])?;
    let causal = k_pos.le(&q_pos)?;
    match window {
        Some(w) => causal.logical_and(k_pos.gt(q_pos - w)?),
        None => Ok(causal),
    }
}

/// The slot pool of the batch's pooled sequences. Sequences of other pools would be treated
/// as stand-alone caches; the engine has one pool.
fn shared_pool(batch: &[BatchSeq<'_>]) -> Option<SharedSlots> {
    batch
        .iter()
        .find_map(|s| s.cache.slot_ref().map(|(p, _)| p.clone()))
}

/// Whether `seq` lives in `pool`.
fn in_pool(seq: &BatchSeq<'_>, pool: &SharedSlots) -> Option<usize> {
    seq.cache
        .slot_ref()
        .and_then(|(p, slot)| p.same(pool).then_some(slot))
}

/// `a[:, start..end]` transposed to `[1, heads, end - start, dim]`.
fn rows_of(a: &Array, start: i32, end: i32) -> Result<Array> {
    let a = if start == 0 && end == a.shape()[1] {
        a.clone()
    } else {
        slice_axis(a, 1, start, end)?
    };
    a.transpose_axes(&[0, 2, 1, 3])
}

/// `[1, heads, n, dim]` → `[1, n, heads * dim]`.
fn merge_heads(out: Array, n: i32) -> Result<Array> {
    out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[1, n, -1])
}

fn attend_each(
    queries: &Array,
    keys: &Array,
    values: &Array,
    batch: &mut [BatchSeq<'_>],
    layer: usize,
    params: Params<'_>,
) -> Result<Array> {
    let mut outputs = Vec::with_capacity(batch.len());
    let mut start = 0;
    for seq in batch.iter_mut() {
        let end = start + seq.len as i32;
        let rows = [queries, keys, values].map(|a| rows_of(a, start, end));
        outputs.push(attend_one(seq, rows, layer, params)?);
        start = end;
    }
    concat_rows(outputs)
}

/// One sequence through its own cache: `rows` are its queries, keys and values
/// (`[1, heads, len, dim]`). Returns `[1, len, heads * dim]`.
fn attend_one(
    seq: &mut BatchSeq<'_>,
    rows: [Result<Array>; 3],
    layer: usize,
    (rope, scale, extras): Params<'_>,
) -> Result<Array> {
    let [q, k, v] = rows;
    let offset = seq.cache.offset() as i32;
    let len = seq.len as i32;
    let q = rope.forward(&q?, offset)?;
    let k = rope.forward(&k?, offset)?;
    let (k, v) = seq.cache.update_and_fetch(layer, k, v?)?;
    let out = if extras.window.is_none() {
        let mask = (len > 1).then_some(ScaledDotProductAttentionMask::Causal);
        scaled_dot_product_attention(q, k, v, scale, mask, extras.sinks)?
    } else {
        // Only the keys some query of the chunk can see; a decode step sees all of them.
        let start = window_start(offset, extras.window);
        let (k, v) = if start > 0 {
            let end = offset + len;
            (
                slice_axis(&k, 2, start, end)?,
                slice_axis(&v, 2, start, end)?,
            )
        } else {
            (k, v)
        };
        let mask = if len > 1 {
            Some(chunk_mask(offset, len, start, extras.window)?)
        } else {
            None
        };
        let mask = mask.as_ref().map(ScaledDotProductAttentionMask::Array);
        scaled_dot_product_attention(q, k, v, scale, mask, extras.sinks)?
    };
    merge_heads(out, len)
}

fn concat_rows(mut outputs: Vec<Array>) -> Result<Array> {
    if outputs.len() == 1 {
        Ok(outputs.pop().expect("one output"))
    } else {
        concatenate(&outputs, 1)
    }
}

/// A prefill chunk's share of a pooled pass.
struct Chunk {
    slot: usize,
    offset: i32,
    len: i32,
    q: Array,
    k: Array,
    v: Array,
}

fn attend_pooled(
    queries: &Array,
    keys: &Array,
    values: &Array,
    batch: &mut [BatchSeq<'_>],
    layer: usize,
    params: Params<'_>,
    pool: &SharedSlots,
) -> Result<Array> {
    let (rope, scale, extras) = params;
    // Where each sequence's rows start, and which sequences decode one token.
    let mut starts = Vec::with_capacity(batch.len());
    let mut at = 0i32;
    for seq in batch.iter() {
        starts.push(at);
        at += seq.len as i32;
    }
    let total = at;
    let slots: Vec<Option<usize>> = batch.iter().map(|s| in_pool(s, pool)).collect();
    let decoding: Vec<usize> = (0..batch.len())
        .filter(|&i| batch[i].len == 1 && slots[i].is_some())
        .collect();
    let slot_of = |i: usize| slots[i].expect("pooled");

    // Decoders: their rows as a batch `[B, heads, 1, dim]`, RoPE'd at their own offsets.
    let n_dec = decoding.len() as i32;
    let dec_slots: Vec<i32> = decoding.iter().map(|&i| slot_of(i) as i32).collect();
    let dec_offsets: Vec<i32> = decoding
        .iter()
        .map(|&i| batch[i].cache.offset() as i32)
        .collect();
    let decoders = if n_dec == 0 {
        None
    } else {
        let row_index = (n_dec != total).then(|| {
            let rows: Vec<i32> = decoding.iter().map(|&i| starts[i]).collect();
            Array::from_slice(&rows, &[n_dec])
        });
        let pick = |a: &Array| -> Result<Array> {
            let a = match &row_index {
                Some(idx) => a.take_axis(idx, 1)?,
                None => a.clone(),
            };
            let s = a.shape();
            a.reshape(&[n_dec, 1, s[2], s[3]])?
                .transpose_axes(&[0, 2, 1, 3])
        };
        let offsets = Array::from_slice(&dec_offsets, &[n_dec]);
        Some((
            rope.forward_rows(&pick(queries)?, &offsets)?,
            rope.forward_rows(&pick(keys)?, &offsets)?,
            pick(values)?,
        ))
    };
    // Sequences outside the pool (too long for it) attend alone, before the pool is locked
    // (their caches are their own).
    let mut alone: Vec<Option<Array>> = vec![None; batch.len()];
    for (i, seq) in batch.iter_mut().enumerate() {
        if slots[i].is_none() {
            let (start, end) = (starts[i], starts[i] + seq.len as i32);
            let rows = [queries, keys, values].map(|a| rows_of(a, start, end));
            alone[i] = Some(attend_one(seq, rows, layer, params)?);
        }
    }
    // Prefill chunks of pooled sequences, one sequence each.
    let mut chunks = Vec::new();
    for (i, seq) in batch.iter().enumerate() {
        if seq.len == 1 || slots[i].is_none() {
            continue;
        }
        let (start, len) = (starts[i], seq.len as i32);
        let offset = seq.cache.offset() as i32;
        chunks.push(Chunk {
            slot: slot_of(i),
            offset,
            len,
            q: rope.forward(&rows_of(queries, start, start + len)?, offset)?,
            k: rope.forward(&rows_of(keys, start, start + len)?, offset)?,
            v: rows_of(values, start, start + len)?,
        });
    }

    let mut pool = pool.lock();
    // Every write of the layer before any read: a read is a view of the buffer, and MLX can
    // update a buffer in place only while nothing else refers to it.
    if let Some((_, k, v)) = &decoders {
        pool.write_decode(layer, &dec_slots, &dec_offsets, k, v)?;
    }
    for c in &chunks {
        pool.write(layer, c.slot, c.offset, &c.k, &c.v)?;
    }

    let dec_out = match decoders {
        None => None,
        Some((q, _, _)) => {
            // Group by padded length (see DECODE_BUCKET).
            let mut groups: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
            for (j, off) in dec_offsets.iter().enumerate() {
                let padded = (off + 1 + DECODE_BUCKET - 1) / DECODE_BUCKET * DECODE_BUCKET;
                groups.entry(padded).or_default().push(j);
            }
            let mut outs = Vec::with_capacity(groups.len());
            let mut order = Vec::with_capacity(decoding.len());
            for (padded, members) in &groups {
                let m = members.len() as i32;
                let slots: Vec<i32> = members.iter().map(|&j| dec_slots[j]).collect();
                let (k, v) = pool.read_slots(layer, &slots, *padded)?;
                let q = if members.len() == decoding.len() {
                    q.clone()
                } else {
                    let idx: Vec<i32> = members.iter().map(|&j| j as i32).collect();
                    q.take_axis(Array::from_slice(&idx, &[m]), 0)?
                };
                let lens: Vec<i32> = members.iter().map(|&j| dec_offsets[j] + 1).collect();
                let lens = Array::from_slice(&lens, &[m, 1, 1, 1]);
                let positions = arange::<_, i32>(0, *padded, None)?;
                let mut mask = positions.lt(&lens)?;
                if let Some(w) = extras.window {
                    mask = mask.logical_and(positions.ge(lens - w)?)?;
                }
                let mask = ScaledDotProductAttentionMask::Array(&mask);
                outs.push(scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    scale,
                    mask,
                    extras.sinks,
                )?);
                order.extend(members.iter().copied());
            }
            // Back to decoding order, then `[B, heads, 1, dim]` → `[B, heads * dim]` rows.
            let out = if outs.len() == 1 {
                outs.pop().expect("one group")
            } else {
                let mut inverse = vec![0i32; order.len()];
                for (pos, &j) in order.iter().enumerate() {
                    inverse[j] = pos as i32;
                }
                concatenate(&outs, 0)?.take_axis(Array::from_slice(&inverse, &[n_dec]), 0)?
            };
            Some(out.reshape(&[1, n_dec, -1])?)
        }
    };
    let mut chunk_outs = Vec::with_capacity(chunks.len());
    for c in chunks {
        let start = window_start(c.offset, extras.window);
        let (k, v) = pool.read(layer, c.slot, start, c.offset + c.len)?;
        let out = if extras.window.is_none() {
            let mask = ScaledDotProductAttentionMask::Causal;
            scaled_dot_product_attention(c.q, k, v, scale, mask, extras.sinks)?
        } else {
            let mask = chunk_mask(c.offset, c.len, start, extras.window)?;
            let mask = ScaledDotProductAttentionMask::Array(&mask);
            scaled_dot_product_attention(c.q, k, v, scale, mask, extras.sinks)?
        };
        chunk_outs.push(merge_heads(out, c.len)?);
    }
    drop(pool);

    // Rows back in batch order.
    if let Some(out) = &dec_out {
        if decoding.len() == batch.len() {
            return Ok(out.clone());
        }
    }
    let mut chunk_outs = chunk_outs.into_iter();
    let mut next_dec = 0;
    let mut pieces = Vec::with_capacity(batch.len());
    for (i, seq) in batch.iter().enumerate() {
        if let Some(out) = alone[i].take() {
            pieces.push(out);
        } else if seq.len == 1 {
            let out = dec_out.as_ref().expect("pooled decoders ran");
            pieces.push(slice_axis(out, 1, next_dec, next_dec + 1)?);
            next_dec += 1;
        } else {
            pieces.push(chunk_outs.next().expect("one output per chunk"));
        }
    }
    concat_rows(pieces)
}
