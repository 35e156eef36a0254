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
use mlx_rs::ops::{arange, concatenate, select, softmax_axis};
use mlx_rs::{Array, Dtype};

use super::batch::BatchSeq;
use super::cpu_attention;
use super::layers::Rope;
use crate::kv::cache::window_start;
use crate::kv::quant::{dequantize_kv, quantize_kv, KvQuant, Packed};
use crate::kv::slots::{SharedSlots, SlotKvCache, SlotPool};
use crate::mlx_ext::{quantized_matmul, slice_axis, QuantMode};

type Result<T> = std::result::Result<T, Exception>;

/// What a layer's attention has beyond causal attention over every earlier position.
#[derive(Clone, Copy, Default)]
pub struct Extras<'a> {
    /// Sliding window: each position attends to itself and the `window - 1` positions before
    /// it (mlx-lm's `window_size` masks). A sequence's own cache keeps only what the window
    /// (and the prefix cache's copying) still needs; a chunked prefill and a prefix reused
    /// from the prefix cache see the same window.
    pub window: Option<i32>,
    /// Per-head attention sinks (gpt-oss): an extra logit in each head's softmax.
    pub sinks: Option<&'a Array>,
}

/// Batched decode attends over keys padded to a multiple of this many positions, the padding
/// masked out. The padded length is a function of the sequence's own length only (never of
/// the longest sequence in the batch), and sequences of different padded lengths attend in
/// separate groups: so a sequence's numbers are the same alone and in any batch (MLX's CPU
/// softmax and BLAS reductions round differently for different lengths, even over masked
/// zeros — measured).
const DECODE_BUCKET: i32 = 256;

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
    attend_kv(
        queries,
        Some((keys, values)),
        batch,
        layer,
        (rope, scale, extras),
    )
}

/// Attention of a layer that computes no keys or values of its own (Gemma 4's KV-shared
/// layers): `queries` against what layer `layer` stored in this pass and before, with that
/// layer's window. Nothing is written.
pub fn attend_stored(
    queries: &Array,
    batch: &mut [BatchSeq<'_>],
    layer: usize,
    rope: &Rope,
    scale: f32,
    extras: Extras<'_>,
) -> Result<Array> {
    attend_kv(queries, None, batch, layer, (rope, scale, extras))
}

/// New keys and values to store (`None`: read what the layer already stored).
type NewKv<'a> = Option<(&'a Array, &'a Array)>;

fn attend_kv(
    queries: &Array,
    kv: NewKv<'_>,
    batch: &mut [BatchSeq<'_>],
    layer: usize,
    params: Params<'_>,
) -> Result<Array> {
    let (rope, scale, extras) = params;
    match shared_pool(batch) {
        Some(pool) => PooledPass {
            queries,
            kv,
            layer,
            rope,
            scale,
            extras,
        }
        .run(batch, &pool),
        None => attend_each(queries, kv, batch, layer, params),
    }
}

/// A layer's RoPE, softmax scale and extras, passed along together.
type Params<'a> = (&'a Rope, f32, Extras<'a>);

/// Queries per prefill chunk, or keys (for a decoding query), from which [`chunk_attention`]
/// runs the engine's CPU kernel: below both the synchronisation costs more than the kernel
/// saves.
const KERNEL_MIN_QUERIES: i32 = 64;
const KERNEL_MIN_KEYS: i32 = 1024;

/// Whether `queries` of `dtype` over `keys` go to the engine's CPU kernel: the CPU levers
/// (CPU backend, float32) and a long chunk or many keys. One rule for every caller, so that
/// a sequence's rows take the same path alone, pooled or in its own cache.
fn on_cpu_kernel(queries: i32, keys: i32, dtype: Dtype) -> bool {
    (queries >= KERNEL_MIN_QUERIES || keys >= KERNEL_MIN_KEYS)
        && dtype == Dtype::Float32
        && crate::device::cpu_levers()
}

/// Attention of a prefill chunk `q` (`[1, heads, len, dim]`, queries at `offset..offset +
/// len`) over keys from position `start` to the chunk's end (`[1, kv_heads, keys, dim]`):
/// causal, and within the `window` if there is one (one query, decoding, sees every key it
/// is given). With the CPU levers on (CPU backend, float32) a long chunk, or a query over
/// many keys, is attended by the engine's own kernel (`cpu_attention`: ~4x MLX's CPU
/// attention for a 512-query chunk at 8k keys, measured; it reads the cache's keys in place);
/// otherwise, as on a GPU and in half precision, by MLX's fused attention as mlx-lm calls it.
fn chunk_attention(
    q: Array,
    k: Array,
    v: Array,
    scale: f32,
    (offset, start): (i32, i32),
    window: Option<i32>,
    sinks: Option<&Array>,
) -> Result<Array> {
    let len = q.shape()[2];
    if on_cpu_kernel(len, k.shape()[2], q.dtype()) {
        return cpu_attention::causal(&q, &k, &v, scale, window, sinks);
    }
    if len == 1 {
        // One query sees every key it is given: no mask (as mlx-lm passes none).
        return scaled_dot_product_attention(q, k, v, scale, None, sinks);
    }
    if window.is_none() {
        let mask = ScaledDotProductAttentionMask::Causal;
        return scaled_dot_product_attention(q, k, v, scale, mask, sinks);
    }
    let mask = chunk_mask(offset, len, start, window)?;
    let mask = ScaledDotProductAttentionMask::Array(&mask);
    scaled_dot_product_attention(q, k, v, scale, mask, sinks)
}

/// The mask of queries at positions `offset..offset + len` over keys at `start..offset +
/// len`: causal, and within the window if there is one.
pub(super) fn chunk_mask(offset: i32, len: i32, start: i32, window: Option<i32>) -> Result<Array> {
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
        .find_map(|s| SlotKvCache::of(&*s.cache).map(|c| c.pool().clone()))
}

/// Whether `seq` lives in `pool`.
fn in_pool(seq: &BatchSeq<'_>, pool: &SharedSlots) -> Option<usize> {
    SlotKvCache::of(&*seq.cache).and_then(|c| c.pool().same(pool).then_some(c.slot()))
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
    kv: NewKv<'_>,
    batch: &mut [BatchSeq<'_>],
    layer: usize,
    params: Params<'_>,
) -> Result<Array> {
    let mut outputs = Vec::with_capacity(batch.len());
    let mut start = 0;
    for seq in batch.iter_mut() {
        let end = start + seq.len as i32;
        let rows = seq_rows(queries, kv, start, end)?;
        outputs.push(attend_one(seq, rows, layer, params)?);
        start = end;
    }
    concat_rows(outputs)
}

/// A sequence's queries and (new) keys and values: rows `start..end`, `[1, heads, len, dim]`.
type SeqRows = (Array, Option<(Array, Array)>);

fn seq_rows(queries: &Array, kv: NewKv<'_>, start: i32, end: i32) -> Result<SeqRows> {
    let kv = match kv {
        Some((k, v)) => Some((rows_of(k, start, end)?, rows_of(v, start, end)?)),
        None => None,
    };
    Ok((rows_of(queries, start, end)?, kv))
}

/// One sequence through its own cache: `rows` are its queries and new keys and values
/// (`[1, heads, len, dim]`; no keys: the layer's stored ones). Returns `[1, len, heads * dim]`.
fn attend_one(
    seq: &mut BatchSeq<'_>,
    (q, new_kv): SeqRows,
    layer: usize,
    (rope, scale, extras): Params<'_>,
) -> Result<Array> {
    let offset = seq.cache.offset() as i32;
    let q = rope.forward(&q, offset)?;
    let len = seq.len as i32;
    let new_kv = match new_kv {
        Some((k, v)) => Some((rope.forward(&k, offset)?, v)),
        None => None,
    };
    if let Some(quant) = seq.cache.quantized() {
        refuse_quantized(new_kv.is_some(), extras.sinks)?;
        let (k, v) = new_kv.expect("checked");
        let (k, v) = seq.cache.update_and_fetch_quantized(layer, &k, &v)?;
        let at = (offset, len);
        let max = QUANTIZED_SCORES_MAX;
        return quantized_chunk(&q, (&k, &v), scale, at, extras.window, quant, max);
    }
    // The keys from `start` on: those some query of the chunk can see (all of them without a
    // window; a windowed layer's cache may hold no more).
    let start = extras.window.map_or(0, |w| window_start(offset, w));
    let (k, v) = match (new_kv, extras.window) {
        (Some((k, v)), None) => seq.cache.update_and_fetch(layer, k, v)?,
        (Some((k, v)), Some(w)) => seq.cache.update_and_fetch_window(layer, k, v, w)?,
        (None, _) => seq
            .cache
            .range(layer, start, offset + len)?
            .ok_or_else(|| Exception::custom(format!("KV layer {layer} holds nothing yet")))?,
    };
    let at = (offset, start);
    let out = chunk_attention(q, k, v, scale, at, extras.window, extras.sinks)?;
    merge_heads(out, len)
}

/// Elements of one attention's score matrix (`heads x queries x keys`) above which a prefill
/// chunk over quantized KV is attended in slices of its queries: mlx-lm's quantized attention
/// materialises the whole matrix per layer — 4 GiB in bf16 for a 2,048-token chunk at 32k
/// keys and 32 heads, twice over with the softmax — where 64M elements (256 MiB in bf16, with
/// the softmax) bound it. A query's row is the same whichever slice computes it.
const QUANTIZED_SCORES_MAX: i64 = 1 << 26;

/// Attention of a sequence's queries at `offset..offset + len` over every key it stored
/// quantized (`[1, kv_heads, offset + len, _]`), masked as mlx-lm masks it: nothing for one
/// query, else causal (and windowed). Returns `[1, len, heads * dim]`.
///
/// As mlx-lm, by quantized matmuls over the packed keys, in slices of queries that keep the
/// score matrix under `max_scores` elements (`QUANTIZED_SCORES_MAX`). With the CPU levers on
/// (CPU backend, float32) a long chunk instead expands the keys it sees and takes the
/// engine's CPU kernel, as a float cache's chunk does (MLX's CPU quantized matmuls made
/// prefill ~8x slower, measured); that changes the rounding, and through the next layers'
/// quantization now and then a near-tie token, so it stays a CPU lever.
fn quantized_chunk(
    q: &Array,
    (k, v): (&Packed, &Packed),
    scale: f32,
    (offset, len): (i32, i32),
    window: Option<i32>,
    quant: KvQuant,
    max_scores: i64,
) -> Result<Array> {
    let keys = offset + len;
    if len > 1 && on_cpu_kernel(len, keys, q.dtype()) {
        let start = window.map_or(0, |w| window_start(offset, w));
        let (k, v) = dequantize_kv(
            (k.positions(start, keys)?, v.positions(start, keys)?),
            quant,
        )?;
        let out = chunk_attention(q.clone(), k, v, scale, (offset, start), window, None)?;
        return merge_heads(out, len);
    }
    // mlx-lm's mask: none for one query, else causal (and windowed) over every key.
    let mask = if len > 1 || window.is_some() {
        Some(chunk_mask(offset, len, 0, window)?)
    } else {
        None
    };
    let per_query = i64::from(q.shape()[1]) * i64::from(keys);
    let rows = (max_scores / per_query.max(1)).clamp(1, i64::from(len)) as i32;
    if rows == len {
        let out = quantized_attention(q, k, v, scale, mask.as_ref(), quant)?;
        return merge_heads(out, len);
    }
    let mut outs = Vec::with_capacity(((len + rows - 1) / rows) as usize);
    for from in (0..len).step_by(rows as usize) {
        let n = rows.min(len - from);
        let q = slice_axis(q, 2, from, from + n)?;
        // The rows' part of the chunk's mask, over every key (the same row as unsliced).
        let mask = mask
            .as_ref()
            .map(|m| slice_axis(m, 0, from, from + n))
            .transpose()?;
        let out = quantized_attention(&q, k, v, scale, mask.as_ref(), quant)?;
        outs.push(merge_heads(out, n)?);
    }
    concat_rows(outs)
}

/// What quantized KV cannot do, as in mlx-lm: layers without keys of their own, and sinks.
fn refuse_quantized(has_kv: bool, sinks: Option<&Array>) -> Result<()> {
    if !has_kv {
        // mlx-lm 0.32.2 fails here too (its shared layers get packed tuples and call the
        // float attention kernel).
        return Err(Exception::custom(
            "quantized KV does not support KV-shared layers (Gemma 4); unset kv_bits",
        ));
    }
    if sinks.is_some() {
        return Err(Exception::custom(
            "quantized KV does not support attention sinks (as in mlx-lm); unset kv_bits",
        ));
    }
    Ok(())
}

/// Attention over quantized keys and values, op for op mlx-lm's
/// `quantized_scaled_dot_product_attention`: scores and outputs by quantized matmuls (grouped
/// query heads as a broadcast axis), masked positions at the dtype's lowest value, a precise
/// softmax. `q` `[B, heads, L, dim]`; returns `[B, heads, L, dim]`. `mask`: `[L, keys]`, or
/// per sequence `[B, 1, L, keys]`.
fn quantized_attention(
    q: &Array,
    k: &Packed,
    v: &Packed,
    scale: f32,
    mask: Option<&Array>,
    quant: KvQuant,
) -> Result<Array> {
    let s = q.shape();
    let (b, heads, l, dim) = (s[0], s[1], s[2], s[3]);
    let kv_heads = k.w.shape()[1];
    let repeats = heads / kv_heads;
    // A Python float is a weak scalar: it takes the queries' dtype.
    let mut q = q.multiply(Array::from_f32(scale).as_dtype(q.dtype())?)?;
    let expand = |p: &Packed| -> Result<[Array; 3]> {
        let arrays = [&p.w, &p.scales, &p.biases];
        if repeats > 1 {
            Ok(arrays
                .map(|a| a.expand_dims(-3))
                .map(|a| a.expect("expand_dims")))
        } else {
            Ok(arrays.map(|a| a.clone()))
        }
    };
    if repeats > 1 {
        q = q.reshape(&[b, kv_heads, repeats, l, dim])?;
    }
    let [kw, ks, kb] = expand(k)?;
    let [vw, vs, vb] = expand(v)?;
    let (group, bits) = (quant.group_size, quant.bits);
    let mut scores = quantized_matmul(
        &q,
        &kw,
        &ks,
        Some(&kb),
        true,
        group,
        bits,
        QuantMode::Affine,
    )?;
    if let Some(mask) = mask {
        let lowest = Array::from_f32(lowest_of(scores.dtype())).as_dtype(scores.dtype())?;
        // A per-sequence mask gets the grouped heads' axis too.
        let mask = match mask.ndim() {
            4 if repeats > 1 => mask.expand_dims(1)?,
            _ => mask.clone(),
        };
        scores = select(&mask, &scores, &lowest)?;
    }
    let scores = softmax_axis(&scores, -1, true)?;
    let out = quantized_matmul(
        &scores,
        &vw,
        &vs,
        Some(&vb),
        false,
        group,
        bits,
        QuantMode::Affine,
    )?;
    if repeats > 1 {
        out.reshape(&[b, heads, l, dim])
    } else {
        Ok(out)
    }
}

/// `mx.finfo(dtype).min` of the float dtypes scores come in.
fn lowest_of(dtype: Dtype) -> f32 {
    match dtype {
        Dtype::Float16 => -65504.0,
        // The largest bfloat16 below zero (f32::MIN would round to -inf).
        Dtype::Bfloat16 => -3.389_531_4e38,
        _ => f32::MIN,
    }
}

fn concat_rows(mut outputs: Vec<Array>) -> Result<Array> {
    if outputs.len() == 1 {
        Ok(outputs.pop().expect("one output"))
    } else {
        concatenate(&outputs, 1)
    }
}

/// A prefill chunk's share of a pooled pass (`kv`: its new keys and values, if any).
struct Chunk {
    slot: usize,
    offset: i32,
    len: i32,
    q: Array,
    kv: Option<(Array, Array)>,
}

/// One layer's pooled pass: the batch's rows and how to attend them.
struct PooledPass<'q> {
    queries: &'q Array,
    kv: NewKv<'q>,
    layer: usize,
    rope: &'q Rope,
    scale: f32,
    extras: Extras<'q>,
}

/// Where each sequence of the batch is: its first row, its slot (`None`: outside the pool),
/// and which sequences decode one token (indices into the batch).
struct Layout {
    starts: Vec<i32>,
    total: i32,
    slots: Vec<Option<usize>>,
    decoding: Vec<usize>,
    /// The decoders' slots and offsets, in decoding order.
    dec_slots: Vec<i32>,
    dec_offsets: Vec<i32>,
}

impl Layout {
    fn of(batch: &[BatchSeq<'_>], pool: &SharedSlots) -> Self {
        let mut starts = Vec::with_capacity(batch.len());
        let mut at = 0i32;
        for seq in batch {
            starts.push(at);
            at += seq.len as i32;
        }
        let slots: Vec<Option<usize>> = batch.iter().map(|s| in_pool(s, pool)).collect();
        let decoding: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].len == 1 && slots[i].is_some())
            .collect();
        let dec_slots = decoding
            .iter()
            .map(|&i| slots[i].expect("pooled") as i32)
            .collect();
        let dec_offsets = decoding
            .iter()
            .map(|&i| batch[i].cache.offset() as i32)
            .collect();
        Self {
            starts,
            total: at,
            slots,
            decoding,
            dec_slots,
            dec_offsets,
        }
    }

    fn n_dec(&self) -> i32 {
        self.decoding.len() as i32
    }
}

/// Queries, and new keys and values, of the decoders as a batch `[B, heads, 1, dim]`.
type DecoderRows = (Array, Option<(Array, Array)>);

impl PooledPass<'_> {
    /// The pass in its steps: the decoders' rows, stand-alone sequences, prefill chunks; then,
    /// with the pool locked, every write, the decoders' attention and the chunks'; last, the
    /// outputs in batch order.
    fn run(&self, batch: &mut [BatchSeq<'_>], pool: &SharedSlots) -> Result<Array> {
        let layout = Layout::of(batch, pool);
        let decoders = self.decoder_rows(&layout)?;
        // Sequences outside the pool (too long for it) attend alone, before the pool is
        // locked (their caches are their own).
        let alone = self.attend_alone(batch, &layout)?;
        let chunks = self.prefill_chunks(batch, &layout)?;

        let mut pool = pool.lock();
        let quant = pool.quant();
        if quant.is_some() {
            refuse_quantized(self.kv.is_some(), self.extras.sinks)?;
        }
        // Every write of the layer before any read: a read is a view of the buffer, and MLX
        // can update a buffer in place only while nothing else refers to it.
        let window = self.extras.window;
        if let Some((_, Some((k, v)))) = &decoders {
            let (slots, offsets) = (&layout.dec_slots, &layout.dec_offsets);
            match quant {
                Some(q) => {
                    let (k, v) = quantize_kv(k, v, q)?;
                    pool.write_decode_quantized(self.layer, slots, offsets, k, v)?
                }
                None => pool.write_decode(self.layer, slots, offsets, k, v, window)?,
            }
        }
        for c in &chunks {
            if let Some((k, v)) = &c.kv {
                match quant {
                    Some(q) => {
                        let (k, v) = quantize_kv(k, v, q)?;
                        pool.write_quantized(self.layer, c.slot, c.offset, k, v)?
                    }
                    None => pool.write(self.layer, c.slot, c.offset, k, v, window)?,
                }
            }
        }
        let dec_out = match decoders {
            Some((q, _)) => Some(self.attend_decoders(&pool, &layout, q)?),
            None => None,
        };
        let chunk_outs = self.attend_chunks(&pool, chunks)?;
        drop(pool);

        in_batch_order(batch, &layout, alone, dec_out, chunk_outs)
    }

    /// The decoders' rows as a batch, RoPE'd at their own offsets.
    fn decoder_rows(&self, layout: &Layout) -> Result<Option<DecoderRows>> {
        let n_dec = layout.n_dec();
        if n_dec == 0 {
            return Ok(None);
        }
        let row_index = (n_dec != layout.total).then(|| {
            let rows: Vec<i32> = layout.decoding.iter().map(|&i| layout.starts[i]).collect();
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
        let offsets = Array::from_slice(&layout.dec_offsets, &[n_dec]);
        let kv = match self.kv {
            Some((k, v)) => Some((self.rope.forward_rows(&pick(k)?, &offsets)?, pick(v)?)),
            None => None,
        };
        Ok(Some((
            self.rope.forward_rows(&pick(self.queries)?, &offsets)?,
            kv,
        )))
    }

    /// The outputs of the sequences outside the pool, each through its own cache.
    fn attend_alone(
        &self,
        batch: &mut [BatchSeq<'_>],
        layout: &Layout,
    ) -> Result<Vec<Option<Array>>> {
        let mut alone: Vec<Option<Array>> = vec![None; batch.len()];
        for (i, seq) in batch.iter_mut().enumerate() {
            if layout.slots[i].is_none() {
                let (start, end) = (layout.starts[i], layout.starts[i] + seq.len as i32);
                let rows = seq_rows(self.queries, self.kv, start, end)?;
                let params = (self.rope, self.scale, self.extras);
                alone[i] = Some(attend_one(seq, rows, self.layer, params)?);
            }
        }
        Ok(alone)
    }

    /// The prefill chunks of pooled sequences, one sequence each, RoPE'd.
    fn prefill_chunks(&self, batch: &[BatchSeq<'_>], layout: &Layout) -> Result<Vec<Chunk>> {
        let mut chunks = Vec::new();
        for (i, seq) in batch.iter().enumerate() {
            let Some(slot) = layout.slots[i].filter(|_| seq.len != 1) else {
                continue;
            };
            let (start, len) = (layout.starts[i], seq.len as i32);
            let offset = seq.cache.offset() as i32;
            let (q, kv) = seq_rows(self.queries, self.kv, start, start + len)?;
            let kv = match kv {
                Some((k, v)) => Some((self.rope.forward(&k, offset)?, v)),
                None => None,
            };
            chunks.push(Chunk {
                slot,
                offset,
                len,
                q: self.rope.forward(&q, offset)?,
                kv,
            });
        }
        Ok(chunks)
    }

    /// One attention per group of decoders of equal padded length (see DECODE_BUCKET);
    /// `[1, B, heads * dim]` in decoding order.
    fn attend_decoders(&self, pool: &SlotPool, layout: &Layout, q: Array) -> Result<Array> {
        let n_dec = layout.n_dec();
        // Each decoder's keys held in its row: up to its new position, from the row's first
        // (a windowed layer's rows forget their oldest positions).
        let held: Vec<i32> = (0..layout.decoding.len())
            .map(|j| {
                let slot = layout.dec_slots[j] as usize;
                layout.dec_offsets[j] + 1 - pool.first(self.layer, slot)
            })
            .collect();
        let mut outs = Vec::new();
        let mut order = Vec::with_capacity(layout.decoding.len());
        // With the CPU levers, a decoder over many keys is attended alone by the CPU kernel,
        // reading its row in place (as a long sequence's own cache is: the same bits).
        let mut groups: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        let quant = pool.quant();
        for (j, &n) in held.iter().enumerate() {
            if quant.is_none() && on_cpu_kernel(1, n, q.dtype()) {
                let slot = layout.dec_slots[j] as usize;
                let end = layout.dec_offsets[j] + 1;
                let (k, v) = pool.read(self.layer, slot, end - n, end)?;
                let q = slice_axis(&q, 0, j as i32, j as i32 + 1)?;
                let (window, sinks) = (self.extras.window, self.extras.sinks);
                outs.push(cpu_attention::causal(
                    &q, &k, &v, self.scale, window, sinks,
                )?);
                order.push(j);
                continue;
            }
            let padded = (n + DECODE_BUCKET - 1) / DECODE_BUCKET * DECODE_BUCKET;
            groups.entry(padded).or_default().push(j);
        }
        for (padded, members) in &groups {
            let m = members.len() as i32;
            let slots: Vec<i32> = members.iter().map(|&j| layout.dec_slots[j]).collect();
            let q = if members.len() == n_dec as usize {
                q.clone()
            } else {
                let idx: Vec<i32> = members.iter().map(|&j| j as i32).collect();
                q.take_axis(Array::from_slice(&idx, &[m]), 0)?
            };
            let lens: Vec<i32> = members.iter().map(|&j| held[j]).collect();
            let lens = Array::from_slice(&lens, &[m, 1, 1, 1]);
            let positions = arange::<_, i32>(0, *padded, None)?;
            let mut mask = positions.lt(&lens)?;
            if let Some(w) = self.extras.window {
                mask = mask.logical_and(positions.ge(lens - w)?)?;
            }
            outs.push(match quant {
                Some(quant) => {
                    let (k, v) = pool.read_slots_quantized(self.layer, &slots, *padded)?;
                    quantized_attention(&q, &k, &v, self.scale, Some(&mask), quant)?
                }
                None => {
                    let (k, v) = pool.read_slots(self.layer, &slots, *padded)?;
                    let mask = ScaledDotProductAttentionMask::Array(&mask);
                    scaled_dot_product_attention(q, k, v, self.scale, mask, self.extras.sinks)?
                }
            });
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
        out.reshape(&[1, n_dec, -1])
    }

    /// Each prefill chunk against its slot's positions so far, causal.
    fn attend_chunks(&self, pool: &SlotPool, chunks: Vec<Chunk>) -> Result<Vec<Array>> {
        let mut outs = Vec::with_capacity(chunks.len());
        for c in chunks {
            let window = self.extras.window;
            if let Some(quant) = pool.quant() {
                // As a quantized cache of its own: every key.
                let (k, v) = pool.read_quantized(self.layer, c.slot, 0, c.offset + c.len)?;
                let at = (c.offset, c.len);
                let max = QUANTIZED_SCORES_MAX;
                let out = quantized_chunk(&c.q, (&k, &v), self.scale, at, window, quant, max)?;
                outs.push(out);
                continue;
            }
            let start = window.map_or(0, |w| window_start(c.offset, w));
            let (k, v) = pool.read(self.layer, c.slot, start, c.offset + c.len)?;
            let sinks = self.extras.sinks;
            let at = (c.offset, start);
            let out = chunk_attention(c.q, k, v, self.scale, at, window, sinks)?;
            outs.push(merge_heads(out, c.len)?);
        }
        Ok(outs)
    }
}

/// The outputs back in batch order: alone sequences, decoders and prefill chunks interleaved
/// as the batch has them.
fn in_batch_order(
    batch: &[BatchSeq<'_>],
    layout: &Layout,
    mut alone: Vec<Option<Array>>,
    dec_out: Option<Array>,
    chunk_outs: Vec<Array>,
) -> Result<Array> {
    if let Some(out) = &dec_out {
        if layout.decoding.len() == batch.len() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    /// A chunk over quantized KV attended in slices of queries gives every query the very
    /// row the whole chunk gives it (so the slicing that bounds the score matrix's memory
    /// changes no number), windowed or not, with grouped query heads.
    #[test]
    fn quantized_chunks_sliced_by_queries_are_bit_identical() {
        let quant = KvQuant::new(8, 64).unwrap();
        random::seed(7).unwrap();
        let (offset, len, heads, kv_heads) = (40, 24, 6, 2);
        let q = random::normal::<f32>(&[1, heads, len, 64], None, None, None).unwrap();
        let k = random::normal::<f32>(&[1, kv_heads, offset + len, 64], None, None, None).unwrap();
        let v = random::normal::<f32>(&[1, kv_heads, offset + len, 64], None, None, None).unwrap();
        let (k, v) = quantize_kv(&k, &v, quant).unwrap();
        for window in [None, Some(16)] {
            let run = |max| {
                let out = quantized_chunk(&q, (&k, &v), 0.125, (offset, len), window, quant, max)
                    .unwrap();
                out.as_slice::<f32>().to_vec()
            };
            let whole = run(i64::MAX);
            let per_query = i64::from(heads * (offset + len));
            for rows in [1, 5, 8] {
                assert_eq!(
                    run(rows * per_query),
                    whole,
                    "{rows} rows a slice, window {window:?}"
                );
            }
        }
    }

    /// On the CPU in float32 a long chunk over quantized KV takes the CPU kernel over the
    /// expanded keys: the numbers of the quantized attention, to float32 rounding.
    #[test]
    fn a_long_quantized_chunk_on_the_cpu_lever_matches_quantized_attention() {
        if !crate::device::cpu_levers() {
            return;
        }
        let quant = KvQuant::new(8, 64).unwrap();
        random::seed(11).unwrap();
        let (offset, len, heads, kv_heads) = (100, KERNEL_MIN_QUERIES, 6, 2);
        let q = random::normal::<f32>(&[1, heads, len, 64], None, None, None).unwrap();
        let k = random::normal::<f32>(&[1, kv_heads, offset + len, 64], None, None, None).unwrap();
        let v = random::normal::<f32>(&[1, kv_heads, offset + len, 64], None, None, None).unwrap();
        let (k, v) = quantize_kv(&k, &v, quant).unwrap();
        for window in [None, Some(48)] {
            let max = QUANTIZED_SCORES_MAX;
            let at = (offset, len);
            let ours = quantized_chunk(&q, (&k, &v), 0.125, at, window, quant, max).unwrap();
            let mask = chunk_mask(offset, len, 0, window).unwrap();
            let want = quantized_attention(&q, &k, &v, 0.125, Some(&mask), quant).unwrap();
            let want = merge_heads(want, len).unwrap();
            let worst = ours
                .subtract(&want)
                .unwrap()
                .abs()
                .unwrap()
                .max(None)
                .unwrap();
            assert!(
                worst.item_exact::<f32>() < 1e-5,
                "window {window:?}: {worst:?}"
            );
        }
    }
}
