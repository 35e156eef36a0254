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

/// Buffers grow in steps of this many positions, so that decoding does not reallocate per token.
const STEP: i32 = 256;

#[derive(Default)]
pub struct DenseKvCache {
    layers: Vec<Option<(Array, Array)>>,
    offset: usize,
    states: RecurrentStates,
}

impl DenseKvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            offset: 0,
            states: RecurrentStates::default(),
        }
    }

    /// The buffers of `layer` (capacity included), if it holds anything.
    pub fn layer(&self, layer: usize) -> Option<&(Array, Array)> {
        self.layers.get(layer)?.as_ref()
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
}

fn grow(buffer: Option<Array>, like: &Array, used: i32, needed: i32) -> Result<Array, Exception> {
    let shape = like.shape();
    let capacity = buffer.as_ref().map_or(0, |b| b.shape()[2]);
    if needed <= capacity {
        return Ok(buffer.expect("capacity > 0 implies a buffer"));
    }
    let steps = (needed - used + STEP - 1) / STEP;
    let fresh = zeros_dtype(&[shape[0], shape[1], steps * STEP, shape[3]], like.dtype())?;
    Ok(match buffer {
        Some(old) => concatenate(&[slice_axis(&old, 2, 0, used)?, fresh], 2)?,
        None => fresh,
    })
}

impl KvCache for DenseKvCache {
    fn offset(&self) -> usize {
        self.offset
    }

    fn update_and_fetch(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
    ) -> Result<(Array, Array), Exception> {
        let used = self.offset as i32;
        let end = used + keys.shape()[2];
        let (k_buf, v_buf) = match self.layers[layer].take() {
            Some((k, v)) => (Some(k), Some(v)),
            None => (None, None),
        };
        let k_buf = slice_update_axis(&grow(k_buf, &keys, used, end)?, &keys, 2, used)?;
        let v_buf = slice_update_axis(&grow(v_buf, &values, used, end)?, &values, 2, used)?;
        let fetched = (
            slice_axis(&k_buf, 2, 0, end)?,
            slice_axis(&v_buf, 2, 0, end)?,
        );
        self.layers[layer] = Some((k_buf, v_buf));
        Ok(fetched)
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
        let Some((k, v)) = self.layer(layer) else {
            return Ok(None);
        };
        Ok(Some((
            slice_axis(k, 2, start, end)?,
            slice_axis(v, 2, start, end)?,
        )))
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
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
