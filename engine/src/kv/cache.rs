//! Per-sequence KV storage behind the interface the attention layers use. `DenseKvCache` keeps
//! each layer's keys and values in one growing buffer (as mlx-lm's `KVCache` does); the paged
//! cache plugs in behind the same trait.

use std::any::Any;

use mlx_rs::error::Exception;
use mlx_rs::ops::{concatenate, zeros_dtype};
use mlx_rs::Array;

use crate::kv::quant::{KvQuant, Packed};
use crate::mlx_ext::{slice_axis, slice_update_axis};

/// Keys and values of one sequence, for every layer.
pub trait KvCache: Send + AsAny {
    /// Positions already stored: the position of the next token.
    fn offset(&self) -> usize;
    /// Stores `keys`/`values` (`[1, kv_heads, new, head_dim]`) of `layer` at `offset()` and
    /// returns everything stored for that layer, the new entries included.
    fn update_and_fetch(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
    ) -> Result<(Array, Array), Exception>;
    /// [`KvCache::update_and_fetch`] for a sliding-window layer: returns only the positions
    /// the new queries can see (from `offset() + 1 - window`, or 0). A cache may then forget
    /// positions no query will see again; `range` answers `None` for those.
    fn update_and_fetch_window(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
        window: i32,
    ) -> Result<(Array, Array), Exception> {
        let start = window_start(self.offset() as i32, window);
        let (k, v) = self.update_and_fetch(layer, keys, values)?;
        let end = k.shape()[2];
        Ok((
            slice_axis(&k, 2, start, end)?,
            slice_axis(&v, 2, start, end)?,
        ))
    }
    /// Called once after every layer stored `n` new positions.
    fn advance(&mut self, n: usize);
    /// Keys and values of positions `start..end` of `layer` (`[1, kv_heads, end-start,
    /// dim]`), if the cache holds them.
    fn range(
        &self,
        layer: usize,
        start: i32,
        end: i32,
    ) -> Result<Option<(Array, Array)>, Exception>;
    /// Stores `keys`/`values` of `layer` at `offset()` without attention (prefix reuse);
    /// call `advance` once every layer is loaded.
    fn load_layer(&mut self, layer: usize, keys: Array, values: Array) -> Result<(), Exception> {
        self.update_and_fetch(layer, keys, values).map(|_| ())
    }
    fn num_layers(&self) -> usize;
    /// Forgets everything stored (the next write starts at position 0).
    fn reset(&mut self);
    /// The format keys and values are stored in, when quantized (`None`: as computed).
    fn quantized(&self) -> Option<KvQuant> {
        None
    }
    /// As `update_and_fetch`, returning what is stored still quantized (caches whose
    /// `quantized()` is `Some`).
    fn update_and_fetch_quantized(
        &mut self,
        _layer: usize,
        _keys: &Array,
        _values: &Array,
    ) -> Result<(Packed, Packed), Exception> {
        Err(Exception::custom("this KV cache is not quantized"))
    }
    /// As `range`, still quantized (caches whose `quantized()` is `Some`): what prefix-cache
    /// blocks of a quantized model hold, so that a hit restores the very bits computed.
    fn range_quantized(
        &self,
        _layer: usize,
        _start: i32,
        _end: i32,
    ) -> Result<Option<(Packed, Packed)>, Exception> {
        Err(Exception::custom("this KV cache is not quantized"))
    }
    /// Stores the newest positions of sliding-window `layer` from a prefix-cache snapshot:
    /// `keys`/`values` (`[1, kv_heads, n, head_dim]`) are positions `offset() - n..offset()`,
    /// loaded once the blocks of the other layers advanced the cache past them. The window
    /// never reaches the positions before, which the layer then does not hold.
    fn load_window(
        &mut self,
        _layer: usize,
        _keys: Array,
        _values: Array,
    ) -> Result<(), Exception> {
        Err(Exception::custom("this KV cache cannot load a window"))
    }
    /// As `load_window`, for KV already quantized in this cache's format.
    fn load_window_quantized(
        &mut self,
        _layer: usize,
        _keys: Packed,
        _values: Packed,
    ) -> Result<(), Exception> {
        Err(Exception::custom("this KV cache is not quantized"))
    }
    /// As `load_layer`, for KV already quantized in this cache's format.
    fn load_layer_quantized(
        &mut self,
        _layer: usize,
        _keys: Packed,
        _values: Packed,
    ) -> Result<(), Exception> {
        Err(Exception::custom("this KV cache is not quantized"))
    }
    /// Bytes held by this cache alone (a slot pool's shared buffers are counted by the pool).
    fn own_bytes(&self) -> usize {
        0
    }
    /// The recurrent state of linear-attention `layer` (Gated DeltaNet's conv and recurrent
    /// state), `None` until the sequence's first token. It is the sequence's own whatever
    /// holds its keys and values, and `reset` forgets it.
    fn state(&mut self, layer: usize) -> &mut Option<Vec<Array>>;
}

/// The recurrent states of one sequence, by layer (`None`: an attention layer, or nothing
/// seen yet).
#[derive(Default)]
pub struct RecurrentStates(Vec<Option<Vec<Array>>>);

impl RecurrentStates {
    pub fn layer(&mut self, layer: usize) -> &mut Option<Vec<Array>> {
        if self.0.len() <= layer {
            self.0.resize_with(layer + 1, || None);
        }
        &mut self.0[layer]
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn nbytes(&self) -> usize {
        self.0.iter().flatten().flatten().map(Array::nbytes).sum()
    }
}

/// The concrete cache behind a `dyn KvCache`: batched attention asks whether a cache lives in
/// a slot pool (`SlotKvCache::of`) without this trait knowing about pools.
pub trait AsAny {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The first position a query at `offset` sees through a window of `window` positions.
pub fn window_start(offset: i32, window: i32) -> i32 {
    (offset + 1 - window).max(0)
}

/// Buffers grow in steps of this many positions, so that decoding does not reallocate per token.
pub(crate) const STEP: i32 = 256;

/// The first position a sliding-window layer keeps once positions are written at `offset`:
/// every position the new queries see and `slack` more before them, never before what it
/// already forgot (`first`). The prefix cache copies a windowed layer's window out at
/// snapshot boundaries within a prompt right after the step that reached one; the slack (a
/// block) lets it copy, when a sequence ends, the window before the last block boundary its
/// reply crossed (`PrefixCache::finish`). Shared by `DenseKvCache` and the slot pool.
pub(crate) fn window_keep_from(offset: i32, window: i32, slack: i32, first: i32) -> i32 {
    window_start(offset - slack, window).max(first)
}

/// Whether a buffer whose first position is `first` should move its kept positions
/// (`keep_from..offset`) to its start: when it holds more forgotten positions than kept ones,
/// and a `STEP` — so a buffer moves at most once per `STEP` positions.
pub(crate) fn moves_forward(first: i32, keep_from: i32, offset: i32) -> bool {
    keep_from - first > offset - keep_from + STEP
}

/// One sequence's KV in a growing buffer per layer, as mlx-lm's `KVCache`. A sliding-window
/// layer (stored through `update_and_fetch_window`) keeps only its window, as mlx-lm's
/// `RotatingKVCache` does: for Gemma 3
/// (five of six layers windowed) a 100k-token conversation's KV shrinks ~5x. Its buffer is
/// then moved forward now and then (a copy of what it keeps, at most once per `STEP`
/// positions) instead of rotated, so that keys stay in position order as in a full layer.
#[derive(Default)]
pub struct DenseKvCache {
    layers: Vec<Option<(Array, Array)>>,
    /// Per layer, the position index 0 of its buffers holds (0 but for windowed layers).
    first: Vec<i32>,
    offset: usize,
    states: RecurrentStates,
    /// Positions windowed layers keep beyond their window (`window_keep_from`).
    slack: i32,
}

impl DenseKvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            first: vec![0; num_layers],
            offset: 0,
            states: RecurrentStates::default(),
            slack: 0,
        }
    }

    /// Windowed layers keep `slack` positions beyond their window (`window_keep_from`).
    pub fn with_window_slack(mut self, slack: usize) -> Self {
        self.slack = slack as i32;
        self
    }

    /// The buffers of `layer` (capacity included) and the position their index 0 holds, if
    /// it holds anything.
    pub fn layer(&self, layer: usize) -> Option<(&(Array, Array), i32)> {
        Some((self.layers.get(layer)?.as_ref()?, self.first[layer]))
    }

    /// Bytes held by the buffers (capacity, not just the used part).
    pub fn nbytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| k.nbytes() + v.nbytes())
            .sum::<usize>()
            + self.states.nbytes()
    }

    /// Writes `keys`/`values` (`[1, kv_heads, n, head_dim]`) of `layer` at `offset()`. When
    /// they do not fit, or more than half the buffer holds positions before `keep_from`, the
    /// buffers are copied into new ones starting at `keep_from` with room for `STEP` more
    /// positions at least. Returns positions `from..` of what is stored.
    fn store(
        &mut self,
        layer: usize,
        keys: &Array,
        values: &Array,
        keep_from: i32,
        from: i32,
    ) -> Result<(Array, Array), Exception> {
        let offset = self.offset as i32;
        let end = offset + keys.shape()[2];
        let first = self.first[layer];
        let capacity = self.layers[layer].as_ref().map_or(0, |(k, _)| k.shape()[2]);
        let live = offset - keep_from;
        let (k_buf, v_buf) = match self.layers[layer].take() {
            Some((k, v)) if end - first <= capacity && !moves_forward(first, keep_from, offset) => {
                (k, v)
            }
            old => {
                let room = (keys.shape()[2] + STEP - 1) / STEP * STEP;
                let moved = |old: Option<&Array>, like: &Array| -> Result<Array, Exception> {
                    let s = like.shape();
                    let fresh = zeros_dtype(&[s[0], s[1], room, s[3]], like.dtype())?;
                    match old {
                        Some(old) if live > 0 => {
                            let kept = slice_axis(old, 2, keep_from - first, offset - first)?;
                            concatenate(&[kept, fresh], 2)
                        }
                        _ => zeros_dtype(&[s[0], s[1], live + room, s[3]], like.dtype()),
                    }
                };
                let (k, v) = match &old {
                    Some((k, v)) => (Some(k), Some(v)),
                    None => (None, None),
                };
                let moved = (moved(k, keys)?, moved(v, values)?);
                self.first[layer] = keep_from;
                moved
            }
        };
        let first = self.first[layer];
        let k_buf = slice_update_axis(&k_buf, keys, 2, offset - first)?;
        let v_buf = slice_update_axis(&v_buf, values, 2, offset - first)?;
        let fetched = (
            slice_axis(&k_buf, 2, from - first, end - first)?,
            slice_axis(&v_buf, 2, from - first, end - first)?,
        );
        self.layers[layer] = Some((k_buf, v_buf));
        Ok(fetched)
    }
}

impl KvCache for DenseKvCache {
    fn offset(&self) -> usize {
        self.offset
    }

    /// Returns every position the layer holds (from 0, unless it is a windowed layer).
    fn update_and_fetch(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
    ) -> Result<(Array, Array), Exception> {
        let first = self.first[layer];
        self.store(layer, &keys, &values, first, first)
    }

    fn update_and_fetch_window(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
        window: i32,
    ) -> Result<(Array, Array), Exception> {
        let offset = self.offset as i32;
        let keep_from = window_keep_from(offset, window, self.slack, self.first[layer]);
        self.store(
            layer,
            &keys,
            &values,
            keep_from,
            window_start(offset, window),
        )
    }

    fn advance(&mut self, n: usize) {
        self.offset += n;
    }

    fn range(
        &self,
        layer: usize,
        start: i32,
        end: i32,
    ) -> Result<Option<(Array, Array)>, Exception> {
        let Some(((k, v), first)) = self.layer(layer) else {
            return Ok(None);
        };
        if start < first {
            return Ok(None);
        }
        Ok(Some((
            slice_axis(k, 2, start - first, end - first)?,
            slice_axis(v, 2, start - first, end - first)?,
        )))
    }

    fn load_window(&mut self, layer: usize, keys: Array, values: Array) -> Result<(), Exception> {
        let start = self.offset as i32 - keys.shape()[2];
        // A buffer of its own that starts at the window (`store` writes at the offset).
        self.layers[layer] = None;
        self.first[layer] = start;
        let offset = std::mem::replace(&mut self.offset, start as usize);
        let stored = self.store(layer, &keys, &values, start, start);
        self.offset = offset;
        stored.map(|_| ())
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.first.iter_mut().for_each(|f| *f = 0);
        self.offset = 0;
        self.states.clear();
    }

    fn own_bytes(&self) -> usize {
        self.nbytes()
    }

    fn state(&mut self, layer: usize) -> &mut Option<Vec<Array>> {
        self.states.layer(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions `start..start + n` of one head of width 2, each position's values its own.
    fn positions(start: i32, n: i32) -> Array {
        let v: Vec<f32> = (start..start + n)
            .flat_map(|p| [p as f32, -(p as f32)])
            .collect();
        Array::from_slice(&v, &[1, 1, n, 2])
    }

    fn floats(a: &Array) -> Vec<f32> {
        a.contiguous().unwrap().as_slice::<f32>().to_vec()
    }

    /// A windowed layer returns exactly what a full layer holds of the window, through
    /// prefill chunks, decode steps and a reused prefix, while its buffer stays bounded by
    /// window + room instead of growing with the sequence.
    #[test]
    fn a_windowed_layer_keeps_its_window_only() {
        let window = 16;
        let mut windowed = DenseKvCache::new(1);
        let mut full = DenseKvCache::new(1);
        // A reused prefix loads whole, as the prefix cache loads blocks.
        windowed
            .load_layer(0, positions(0, 700), positions(0, 700))
            .unwrap();
        full.load_layer(0, positions(0, 700), positions(0, 700))
            .unwrap();
        windowed.advance(700);
        full.advance(700);
        let steps = [100, 3, 512, 9]
            .into_iter()
            .chain(std::iter::repeat_n(1, 600));
        for n in steps {
            let at = windowed.offset() as i32;
            let (k, v) = windowed
                .update_and_fetch_window(0, positions(at, n), positions(at, n), window)
                .unwrap();
            let (all, _) = full
                .update_and_fetch(0, positions(at, n), positions(at, n))
                .unwrap();
            let start = window_start(at, window);
            assert_eq!(k.shape(), &[1, 1, at + n - start, 2]);
            assert_eq!(
                floats(&k),
                floats(&slice_axis(&all, 2, start, at + n).unwrap())
            );
            assert_eq!(floats(&k), floats(&v));
            windowed.advance(n as usize);
            full.advance(n as usize);
            let end = windowed.offset() as i32;
            // What the next query sees is still there.
            let from = window_start(end, window);
            let (r, _) = windowed.range(0, from, end).unwrap().unwrap();
            assert_eq!(floats(&r), floats(&positions(from, end - from)));
            let ((buf, _), _) = windowed.layer(0).unwrap();
            assert!(
                buf.shape()[2] <= 2 * (512 + window + STEP),
                "{} positions buffered at {end}",
                buf.shape()[2]
            );
        }
        assert!(windowed.range(0, 0, 4).unwrap().is_none(), "forgotten");
        assert!(windowed.nbytes() * 4 < full.nbytes());
        windowed.reset();
        assert_eq!(windowed.layer(0).map(|(_, first)| first), None);
    }

    /// With a block of slack, a windowed layer decoding one position at a time still holds
    /// after every step the window before the last block boundary: what the prefix cache
    /// snapshots when a sequence ends. Without, it does not.
    #[test]
    fn slack_keeps_the_window_before_the_last_block_boundary() {
        // A block that does not divide `STEP`: where the buffer moves does not line up with
        // block boundaries (after prefill chunks it need not with any block size).
        let (window, block) = (16, 24);
        let held_at_every_step = |slack: usize| {
            let mut cache = DenseKvCache::new(1).with_window_slack(slack);
            (0..1200).all(|at| {
                cache
                    .update_and_fetch_window(0, positions(at, 1), positions(at, 1), window)
                    .unwrap();
                cache.advance(1);
                // The last block boundary at or before the offset: up to a block minus one
                // behind it.
                let boundary = (at + 1) / block * block;
                let from = window_start(boundary, window);
                cache.range(0, from, boundary).unwrap().is_some()
            })
        };
        assert!(held_at_every_step(block as usize));
        assert!(!held_at_every_step(0));
    }
}
