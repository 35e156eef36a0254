//! KV storage shared by the running sequences of one engine, slot-major: for each layer one
//! keys and one values buffer `[slots, kv_heads, capacity, head_dim]`, a sequence owning one
//! slot. Why: decode attention of the whole batch then reads one buffer, so a decode step
//! costs a fixed number of MLX operations per layer whatever the number of sequences (per
//! sequence attention cost ~15 operations per sequence per layer, which dominated the step
//! at 8 streams on CPU). A sequence still reads and writes its own slot alone when it
//! prefills, through the ordinary `KvCache` interface.
//!
//! The price is padding: every slot has the capacity of the longest sequence. Buffers are
//! dropped as soon as no sequence holds a slot, so the padding lasts only while the batch
//! runs.
//!
//! Sliding-window layers forget, slot by slot, what no query sees any more (as
//! `DenseKvCache` does): a slot's row then starts at a later position (`first`), moved to the
//! row's start at most once per `STEP` positions, by the slot's own length only — so a
//! sequence's keys, and its numbers, do not depend on the batch.
//!
//! A pool may hold KV quantized (`kv_bits`, as `QuantizedKvCache` stores it): keys and values
//! are then three buffers each (packed words, scales, biases), all slot-major the same way,
//! and every position is kept (as mlx-lm's `QuantizedKVCache` keeps it; windows are masks).

use std::sync::{Arc, Mutex, MutexGuard};

use mlx_rs::error::Exception;
use mlx_rs::ops::{concatenate, zeros_dtype};
use mlx_rs::Array;

use crate::kv::cache::{
    moves_forward, window_keep_from, window_start, AsAny, KvCache, RecurrentStates,
};
use crate::kv::quant::{dequantize_kv, quantize_kv, window_from_zero, KvQuant, Packed};
use crate::mlx_ext::{scatter, slice, slice_axis, slice_update};

/// Capacity grows in steps of this many positions.
const STEP: i32 = 256;

/// One layer's buffers, `[slots, kv_heads, capacity, _]` each: keys then values, each as the
/// arrays it is stored as (floats: one; quantized: packed words, scales, biases).
type Parts = Vec<Array>;

/// The buffers and the slot table of one engine.
pub struct SlotPool {
    layers: Vec<Option<Parts>>,
    /// KV stored quantized in this format (`None`: as computed).
    quant: Option<KvQuant>,
    /// Per layer and slot, the position index 0 of the slot's row holds (0 but in windowed
    /// layers).
    first: Vec<Vec<i32>>,
    in_use: Vec<bool>,
    /// Positions windowed layers keep beyond their window (`window_keep_from`).
    slack: i32,
}

/// A pool as the sequences share it (the engine thread is its only user; the lock is never
/// contended and never held across anything but MLX graph building).
#[derive(Clone)]
pub struct SharedSlots(Arc<Mutex<SlotPool>>);

impl SharedSlots {
    pub fn new(num_layers: usize) -> Self {
        Self(Arc::new(Mutex::new(SlotPool {
            layers: (0..num_layers).map(|_| None).collect(),
            quant: None,
            first: vec![Vec::new(); num_layers],
            in_use: Vec::new(),
            slack: 0,
        })))
    }

    /// KV stored quantized in `quant`'s format (`None`: as computed).
    pub fn quantized(self, quant: Option<KvQuant>) -> Self {
        self.lock().quant = quant;
        self
    }

    /// Windowed layers keep `slack` positions beyond their window (`window_keep_from`).
    pub fn with_window_slack(self, slack: usize) -> Self {
        self.lock().slack = slack as i32;
        self
    }

    pub fn lock(&self) -> MutexGuard<'_, SlotPool> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cache on the lowest free slot.
    pub fn acquire(&self) -> SlotKvCache {
        let mut pool = self.lock();
        let slot = match pool.in_use.iter().position(|u| !u) {
            Some(s) => s,
            None => {
                pool.in_use.push(false);
                pool.in_use.len() - 1
            }
        };
        pool.in_use[slot] = true;
        for first in pool.first.iter_mut() {
            if first.len() <= slot {
                first.resize(slot + 1, 0);
            }
            first[slot] = 0;
        }
        SlotKvCache {
            pool: self.clone(),
            slot,
            offset: 0,
            states: RecurrentStates::default(),
        }
    }

    pub fn same(&self, other: &SharedSlots) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Bytes held by the buffers.
    pub fn nbytes(&self) -> usize {
        self.lock()
            .layers
            .iter()
            .flatten()
            .flatten()
            .map(Array::nbytes)
            .sum()
    }
}

/// Keys and values as the parts a float pool stores.
fn float_parts(keys: &Array, values: &Array) -> Parts {
    vec![keys.clone(), values.clone()]
}

fn float_pair(mut parts: Parts) -> (Array, Array) {
    let v = parts.pop().expect("values");
    (parts.pop().expect("keys"), v)
}

/// Keys and values as the parts a quantized pool stores.
fn packed_parts(keys: Packed, values: Packed) -> Parts {
    let [kw, ks, kb] = keys.into_parts();
    let [vw, vs, vb] = values.into_parts();
    vec![kw, ks, kb, vw, vs, vb]
}

impl SlotPool {
    /// The format KV is stored in (`None`: as computed).
    pub fn quant(&self) -> Option<KvQuant> {
        self.quant
    }

    fn release(&mut self, slot: usize) {
        self.in_use[slot] = false;
        if self.in_use.iter().all(|u| !u) {
            // Nothing runs: give the memory back.
            self.in_use.clear();
            self.layers.iter_mut().for_each(|l| *l = None);
            self.first.iter_mut().for_each(Vec::clear);
        }
    }

    /// The position index 0 of `slot`'s row of `layer` holds.
    pub fn first(&self, layer: usize, slot: usize) -> i32 {
        self.first[layer].get(slot).copied().unwrap_or(0)
    }

    /// Before positions are written at `offset` into `slot` of a layer with `window`: the
    /// kept positions move to the row's start when `moves_forward` says so (the rule
    /// `DenseKvCache` follows). Returns the row's first position.
    fn forget(
        &mut self,
        layer: usize,
        slot: usize,
        offset: i32,
        window: Option<i32>,
    ) -> Result<i32, Exception> {
        let first = self.first(layer, slot);
        // Quantized KV keeps every position (as `QuantizedKvCache` does).
        let Some(window) = window.filter(|_| self.quant.is_none()) else {
            return Ok(first);
        };
        let keep_from = window_keep_from(offset, window, self.slack, first);
        if !moves_forward(first, keep_from, offset) {
            return Ok(first);
        }
        if let Some(parts) = self.layers[layer].take() {
            let s = slot as i32;
            let (from, to) = (keep_from - first, offset - first);
            // The kept part is read from the old buffer (MLX does not update a buffer in place
            // while a slice of it is pending), then written at the row's start.
            let moved = |a: Array| -> Result<Array, Exception> {
                let kept = slice(&a, &[s, 0, from], &[s + 1, a.shape()[1], to])?;
                Ok(slice_update(&a, &kept, &[s, 0, 0, 0])?)
            };
            self.layers[layer] = Some(parts.into_iter().map(moved).collect::<Result<_, _>>()?);
        }
        self.first[layer][slot] = keep_from;
        Ok(keep_from)
    }

    /// Makes `layer`'s buffers hold every slot handed out so far, `end` positions each, shaped
    /// like `like`'s parts (`[_, kv_heads, _, last]`, in their dtypes).
    fn reserve(&mut self, layer: usize, like: &[Array], end: i32) -> Result<(), Exception> {
        let slots = self.in_use.len() as i32;
        let grown = |buf: Option<Array>, like: &Array| -> Result<Array, Exception> {
            let shape = like.shape();
            let (heads, last) = (shape[1], shape[3]);
            let (have_slots, have_cap) = buf
                .as_ref()
                .map_or((0, 0), |b| (b.shape()[0], b.shape()[2]));
            let cap = if end > have_cap {
                (end + STEP - 1) / STEP * STEP
            } else {
                have_cap
            };
            let mut buf = match buf {
                None => return zeros_dtype(&[slots, heads, cap, last], like.dtype()),
                Some(b) => b,
            };
            if cap > have_cap {
                let pad = zeros_dtype(&[have_slots, heads, cap - have_cap, last], like.dtype())?;
                buf = concatenate(&[buf, pad], 2)?;
            }
            if slots > have_slots {
                let pad = zeros_dtype(&[slots - have_slots, heads, cap, last], like.dtype())?;
                buf = concatenate(&[buf, pad], 0)?;
            }
            Ok(buf)
        };
        let mut old = self.layers[layer].take().map(Vec::into_iter);
        let parts = like
            .iter()
            .map(|l| grown(old.as_mut().and_then(Iterator::next), l))
            .collect::<Result<_, _>>()?;
        self.layers[layer] = Some(parts);
        Ok(())
    }

    fn buffers(&self, layer: usize) -> Result<&Parts, Exception> {
        self.layers[layer]
            .as_ref()
            .ok_or_else(|| Exception::custom(format!("KV slot buffers of layer {layer} are empty")))
    }

    /// Writes `keys`/`values` (`[1, kv_heads, n, head_dim]`) into `slot` at `offset`, in a
    /// layer with `window` (which may then forget older positions).
    pub fn write(
        &mut self,
        layer: usize,
        slot: usize,
        offset: i32,
        keys: &Array,
        values: &Array,
        window: Option<i32>,
    ) -> Result<(), Exception> {
        self.write_parts(layer, slot, offset, float_parts(keys, values), window)
    }

    /// [`SlotPool::write`] of KV quantized in the pool's format.
    pub fn write_quantized(
        &mut self,
        layer: usize,
        slot: usize,
        offset: i32,
        keys: Packed,
        values: Packed,
    ) -> Result<(), Exception> {
        self.write_parts(layer, slot, offset, packed_parts(keys, values), None)
    }

    fn write_parts(
        &mut self,
        layer: usize,
        slot: usize,
        offset: i32,
        new: Parts,
        window: Option<i32>,
    ) -> Result<(), Exception> {
        self.check_format(&new)?;
        let n = new[0].shape()[2];
        let first = self.forget(layer, slot, offset, window)?;
        self.reserve(layer, &new, offset + n - first)?;
        let buffers = self.layers[layer].take().expect("reserved");
        let at = [slot as i32, 0, offset - first, 0];
        // Moving the buffers in lets MLX update them in place (it donates a sole reference).
        let written = buffers
            .into_iter()
            .zip(&new)
            .map(|(buf, new)| slice_update(&buf, new, &at))
            .collect::<Result<_, _>>()?;
        self.layers[layer] = Some(written);
        Ok(())
    }

    /// Writes one new position per sequence: row `i` of `keys`/`values` (`[B, kv_heads, 1,
    /// head_dim]`) goes to `slots[i]` at `offsets[i]`, in one scatter per buffer, in a layer
    /// with `window`.
    pub fn write_decode(
        &mut self,
        layer: usize,
        slots: &[i32],
        offsets: &[i32],
        keys: &Array,
        values: &Array,
        window: Option<i32>,
    ) -> Result<(), Exception> {
        let new = float_parts(keys, values);
        self.write_decode_parts(layer, slots, offsets, new, window)
    }

    /// [`SlotPool::write_decode`] of KV quantized in the pool's format.
    pub fn write_decode_quantized(
        &mut self,
        layer: usize,
        slots: &[i32],
        offsets: &[i32],
        keys: Packed,
        values: Packed,
    ) -> Result<(), Exception> {
        let new = packed_parts(keys, values);
        self.write_decode_parts(layer, slots, offsets, new, None)
    }

    fn write_decode_parts(
        &mut self,
        layer: usize,
        slots: &[i32],
        offsets: &[i32],
        new: Parts,
        window: Option<i32>,
    ) -> Result<(), Exception> {
        self.check_format(&new)?;
        let mut at = Vec::with_capacity(slots.len());
        for (&slot, &offset) in slots.iter().zip(offsets) {
            at.push(offset - self.forget(layer, slot as usize, offset, window)?);
        }
        let end = at.iter().max().map_or(0, |i| i + 1);
        self.reserve(layer, &new, end)?;
        let buffers = self.layers[layer].take().expect("reserved");
        let n = slots.len() as i32;
        let idx = [Array::from_slice(slots, &[n]), Array::from_slice(&at, &[n])];
        let written = buffers
            .into_iter()
            .zip(&new)
            .map(|(buf, new)| -> Result<Array, Exception> {
                let s = new.shape();
                let rows = new.reshape(&[n, 1, s[1], 1, s[3]])?;
                Ok(scatter(&buf, &idx, &rows, &[0, 2])?)
            })
            .collect::<Result<_, _>>()?;
        self.layers[layer] = Some(written);
        Ok(())
    }

    /// Whether `new` is KV in this pool's format (floats, or quantized as the pool is).
    fn check_format(&self, new: &[Array]) -> Result<(), Exception> {
        let want = if self.quant.is_some() { 6 } else { 2 };
        if new.len() == want {
            Ok(())
        } else {
            let format = self.quant.map_or("float".to_string(), KvQuant::label);
            Err(Exception::custom(format!(
                "KV of another format written to a slot pool of {format} KV"
            )))
        }
    }

    /// Positions `start..end` of `slot` (`[1, kv_heads, end - start, head_dim]`; `start` at
    /// or after the row's first position).
    pub fn read(
        &self,
        layer: usize,
        slot: usize,
        start: i32,
        end: i32,
    ) -> Result<(Array, Array), Exception> {
        Ok(float_pair(self.read_parts(layer, slot, start, end)?))
    }

    /// [`SlotPool::read`] of a quantized pool: the positions as stored.
    pub fn read_quantized(
        &self,
        layer: usize,
        slot: usize,
        start: i32,
        end: i32,
    ) -> Result<(Packed, Packed), Exception> {
        Ok(Packed::pair(self.read_parts(layer, slot, start, end)?))
    }

    fn read_parts(
        &self,
        layer: usize,
        slot: usize,
        start: i32,
        end: i32,
    ) -> Result<Parts, Exception> {
        let buffers = self.buffers(layer)?;
        let first = self.first(layer, slot);
        let (start, end) = (start - first, end - first);
        let s = slot as i32;
        buffers
            .iter()
            .map(|b| slice(b, &[s, 0, start], &[s + 1, b.shape()[1], end]).map_err(Into::into))
            .collect()
    }

    /// The first `len` entries of each of `slots`' rows (from each row's first position), in
    /// that order (`[B, kv_heads, len, head_dim]`): a view when the slots are consecutive
    /// (`s..s + B` in order: any group of one, and the usual batch), a gathered copy
    /// (proportional to the context, per layer and step) otherwise.
    pub fn read_slots(
        &self,
        layer: usize,
        slots: &[i32],
        len: i32,
    ) -> Result<(Array, Array), Exception> {
        Ok(float_pair(self.read_slots_parts(layer, slots, len)?))
    }

    /// [`SlotPool::read_slots`] of a quantized pool: the positions as stored.
    pub fn read_slots_quantized(
        &self,
        layer: usize,
        slots: &[i32],
        len: i32,
    ) -> Result<(Packed, Packed), Exception> {
        Ok(Packed::pair(self.read_slots_parts(layer, slots, len)?))
    }

    fn read_slots_parts(&self, layer: usize, slots: &[i32], len: i32) -> Result<Parts, Exception> {
        let buffers = self.buffers(layer)?;
        let first = slots.first().copied().unwrap_or(0);
        let consecutive = slots
            .iter()
            .enumerate()
            .all(|(i, &s)| s == first + i as i32);
        let n = slots.len() as i32;
        let pick = |a: &Array| -> Result<Array, Exception> {
            if consecutive {
                slice(a, &[first, 0, 0], &[first + n, a.shape()[1], len]).map_err(Into::into)
            } else {
                let idx = Array::from_slice(slots, &[n]);
                slice_axis(a, 2, 0, len)?.take_axis(&idx, 0)
            }
        };
        buffers.iter().map(pick).collect()
    }
}

/// One sequence's view of the pool: its slot and how much of it is filled.
pub struct SlotKvCache {
    pool: SharedSlots,
    slot: usize,
    offset: usize,
    /// Linear-attention layers' state: per sequence, outside the pool.
    states: RecurrentStates,
}

impl SlotKvCache {
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Writes `keys`/`values` of `layer` at the offset, in a layer with `window`, and returns
    /// what the new queries see: from the window's start, or all the row holds. In a quantized
    /// pool, they are stored quantized and come back dequantized (as `QuantizedKvCache`'s do).
    fn store(
        &mut self,
        layer: usize,
        keys: &Array,
        values: &Array,
        window: Option<i32>,
    ) -> Result<(Array, Array), Exception> {
        if let Some(quant) = self.quant() {
            let (k, v) = self.store_quantized(layer, keys, values)?;
            let from = window.map_or(0, |w| window_start(self.offset as i32, w));
            let seen = |p: Packed| -> Result<Array, Exception> {
                let end = p.w.shape()[2];
                Ok(slice_axis(&p.dequantize(quant)?, 2, from, end)?)
            };
            return Ok((seen(k)?, seen(v)?));
        }
        let mut pool = self.pool.lock();
        let start = self.offset as i32;
        let end = start + keys.shape()[2];
        pool.write(layer, self.slot, start, keys, values, window)?;
        let from = match window {
            Some(w) => window_start(start, w),
            None => pool.first(layer, self.slot),
        };
        pool.read(layer, self.slot, from, end)
    }

    /// Quantizes `keys`/`values` of `layer` into the slot at the offset; returns every
    /// position the row holds, quantized.
    fn store_quantized(
        &mut self,
        layer: usize,
        keys: &Array,
        values: &Array,
    ) -> Result<(Packed, Packed), Exception> {
        let quant = self.quantized_or_err()?;
        let (k, v) = quantize_kv(keys, values, quant)?;
        let start = self.offset as i32;
        let end = start + keys.shape()[2];
        let mut pool = self.pool.lock();
        pool.write_quantized(layer, self.slot, start, k, v)?;
        pool.read_quantized(layer, self.slot, 0, end)
    }

    fn quant(&self) -> Option<KvQuant> {
        self.pool.lock().quant
    }

    fn quantized_or_err(&self) -> Result<KvQuant, Exception> {
        self.quant()
            .ok_or_else(|| Exception::custom("this slot pool's KV is not quantized"))
    }

    /// The pool this cache's slot belongs to.
    pub fn pool(&self) -> &SharedSlots {
        &self.pool
    }

    /// `cache` as a slot of a pool, if it is one: sequences of one pool decode with one
    /// batched attention.
    pub fn of(cache: &dyn KvCache) -> Option<&SlotKvCache> {
        // Qualified: on a reference, `as_any` could resolve to the reference's own impl.
        <dyn KvCache as AsAny>::as_any(cache).downcast_ref()
    }
}

impl Drop for SlotKvCache {
    fn drop(&mut self) {
        self.pool.lock().release(self.slot);
    }
}

impl KvCache for SlotKvCache {
    fn offset(&self) -> usize {
        self.offset
    }

    fn update_and_fetch(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
    ) -> Result<(Array, Array), Exception> {
        self.store(layer, &keys, &values, None)
    }

    fn update_and_fetch_window(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
        window: i32,
    ) -> Result<(Array, Array), Exception> {
        self.store(layer, &keys, &values, Some(window))
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
        let pool = self.pool.lock();
        if end as usize > self.offset || start < pool.first(layer, self.slot) {
            return Ok(None);
        }
        match pool.quant {
            Some(quant) => {
                let packed = pool.read_quantized(layer, self.slot, start, end)?;
                dequantize_kv(packed, quant).map(Some)
            }
            None => pool.read(layer, self.slot, start, end).map(Some),
        }
    }

    fn quantized(&self) -> Option<KvQuant> {
        self.quant()
    }

    fn update_and_fetch_quantized(
        &mut self,
        layer: usize,
        keys: &Array,
        values: &Array,
    ) -> Result<(Packed, Packed), Exception> {
        self.store_quantized(layer, keys, values)
    }

    fn range_quantized(
        &self,
        layer: usize,
        start: i32,
        end: i32,
    ) -> Result<Option<(Packed, Packed)>, Exception> {
        self.quantized_or_err()?;
        if end as usize > self.offset {
            return Ok(None);
        }
        let pool = self.pool.lock();
        pool.read_quantized(layer, self.slot, start, end).map(Some)
    }

    fn load_layer_quantized(
        &mut self,
        layer: usize,
        keys: Packed,
        values: Packed,
    ) -> Result<(), Exception> {
        self.quantized_or_err()?;
        let offset = self.offset as i32;
        let mut pool = self.pool.lock();
        pool.write_quantized(layer, self.slot, offset, keys, values)
    }

    fn load_window(&mut self, layer: usize, keys: Array, values: Array) -> Result<(), Exception> {
        if self.quant().is_some() {
            return Err(Exception::custom("this slot pool's KV is quantized"));
        }
        let start = self.offset as i32 - keys.shape()[2];
        let mut pool = self.pool.lock();
        // The row starts at the window (it held another sequence's positions before).
        pool.first[layer][self.slot] = start;
        pool.write(layer, self.slot, start, &keys, &values, None)
    }

    /// A quantized pool keeps every position: those before the window are zeros, never read.
    fn load_window_quantized(
        &mut self,
        layer: usize,
        keys: Packed,
        values: Packed,
    ) -> Result<(), Exception> {
        self.quantized_or_err()?;
        let (keys, values) = window_from_zero(keys, values, self.offset)?;
        let mut pool = self.pool.lock();
        pool.write_quantized(layer, self.slot, 0, keys, values)
    }

    fn num_layers(&self) -> usize {
        self.pool.lock().layers.len()
    }

    fn reset(&mut self) {
        // The slot's old contents are overwritten before they are read again.
        self.offset = 0;
        self.states.clear();
    }

    fn own_bytes(&self) -> usize {
        self.states.nbytes()
    }

    fn state(&mut self, layer: usize) -> &mut Option<Vec<Array>> {
        self.states.layer(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::cache::DenseKvCache;

    fn ramp(heads: i32, n: i32, dim: i32, base: f32) -> Array {
        let v: Vec<f32> = (0..heads * n * dim).map(|i| base + i as f32).collect();
        Array::from_slice(&v, &[1, heads, n, dim])
    }

    fn floats(a: &Array) -> Vec<f32> {
        a.contiguous().unwrap().as_slice::<f32>().to_vec()
    }

    #[test]
    fn a_slot_stores_what_a_dense_cache_stores() {
        let pool = SharedSlots::new(2);
        let _other = pool.acquire(); // slot 0 is someone else's
        let mut slot = pool.acquire();
        let mut dense = DenseKvCache::new(2);
        assert_eq!(slot.slot(), 1);
        for (n, base) in [(5, 0.0), (1, 100.0), (300, 1000.0)] {
            for layer in 0..2 {
                let k = ramp(2, n, 3, base + layer as f32);
                let v = ramp(2, n, 3, -base);
                let (k1, v1) = slot.update_and_fetch(layer, k.clone(), v.clone()).unwrap();
                let (k2, v2) = dense.update_and_fetch(layer, k, v).unwrap();
                assert_eq!(k1.shape(), k2.shape());
                assert_eq!(floats(&k1), floats(&k2));
                assert_eq!(floats(&v1), floats(&v2));
            }
            slot.advance(n as usize);
            dense.advance(n as usize);
        }
        let (k, _) = slot.range(1, 3, 9).unwrap().unwrap();
        let (d, _) = dense.range(1, 3, 9).unwrap().unwrap();
        assert_eq!(floats(&k), floats(&d));
        assert!(
            slot.range(0, 0, 307).unwrap().is_none(),
            "beyond what it holds"
        );
    }

    #[test]
    fn decode_writes_land_in_each_slot_and_reads_come_back_in_slot_order() {
        let pool = SharedSlots::new(1);
        let mut caches: Vec<SlotKvCache> = (0..3).map(|_| pool.acquire()).collect();
        for (i, c) in caches.iter_mut().enumerate() {
            let n = 2 + i as i32;
            c.update_and_fetch(0, ramp(1, n, 2, 0.0), ramp(1, n, 2, 0.0))
                .unwrap();
            c.advance(n as usize);
        }
        // One new position for slots 2 and 0 (out of order), at their own offsets.
        let new = Array::from_slice(&[7.0f32, 7.5, 9.0, 9.5], &[2, 1, 1, 2]);
        {
            let mut p = pool.lock();
            p.write_decode(0, &[2, 0], &[4, 2], &new, &new, None)
                .unwrap();
            let (k, _) = p.read_slots(0, &[2, 0], 5).unwrap();
            let k = floats(&k);
            assert_eq!(&k[8..10], &[7.0, 7.5], "slot 2, position 4");
            assert_eq!(&k[10 + 4..10 + 6], &[9.0, 9.5], "slot 0, position 2");
            assert_eq!(&k[0..2], &[0.0, 1.0], "slot 2 kept its prefix");
        }
        let (k, _) = pool.lock().read_slots(0, &[0, 1], 3).unwrap();
        assert_eq!(k.shape(), &[2, 1, 3, 2]);
        // Consecutive slots not starting at 0 come back as a view of the same values.
        let (view, _) = pool.lock().read_slots(0, &[1, 2], 4).unwrap();
        let (copy, _) = pool.lock().read_slots(0, &[2, 1], 4).unwrap();
        let (v, c) = (floats(&view), floats(&copy));
        assert_eq!(view.shape(), &[2, 1, 4, 2]);
        assert_eq!(&v[..8], &c[8..], "slot 1");
        assert_eq!(&v[8..], &c[..8], "slot 2");
    }

    #[test]
    fn a_pooled_cache_is_known_behind_the_trait_and_others_are_not() {
        let pool = SharedSlots::new(1);
        let _first = pool.acquire();
        let second = pool.acquire();
        let as_trait: &dyn KvCache = &second;
        let found = SlotKvCache::of(as_trait).expect("a slot of the pool");
        assert_eq!(found.slot(), 1);
        assert!(found.pool().same(&pool));
        let dense = DenseKvCache::new(1);
        assert!(SlotKvCache::of(&dense).is_none());
    }

    #[test]
    fn buffers_are_freed_when_the_last_slot_goes() {
        let pool = SharedSlots::new(1);
        let mut a = pool.acquire();
        let b = pool.acquire();
        a.update_and_fetch(0, ramp(1, 4, 2, 0.0), ramp(1, 4, 2, 0.0))
            .unwrap();
        assert!(pool.nbytes() > 0);
        drop(a);
        assert!(pool.nbytes() > 0, "b still runs");
        let c = pool.acquire();
        assert_eq!(c.slot(), 0, "the lowest free slot is reused");
        drop(b);
        drop(c);
        assert_eq!(pool.nbytes(), 0);
    }

    /// A windowed layer's slot returns what a windowed own cache returns, through chunks and
    /// decode steps, while its row starts later and later and another slot keeps its own
    /// positions.
    #[test]
    fn a_windowed_slot_forgets_as_an_own_cache_does() {
        let window = 16;
        let pool = SharedSlots::new(1);
        let mut other = pool.acquire();
        let mut slot = pool.acquire();
        let mut dense = DenseKvCache::new(1);
        other
            .update_and_fetch_window(0, ramp(1, 50, 2, -1.0), ramp(1, 50, 2, -1.0), window)
            .unwrap();
        other.advance(50);
        for (i, n) in [100, 3, 300, 9].into_iter().chain([1; 600]).enumerate() {
            let base = 1000.0 * i as f32;
            let (k, v) = (ramp(1, n, 2, base), ramp(1, n, 2, -base));
            let (k1, v1) = slot
                .update_and_fetch_window(0, k.clone(), v.clone(), window)
                .unwrap();
            let (k2, v2) = dense.update_and_fetch_window(0, k, v, window).unwrap();
            assert_eq!(floats(&k1), floats(&k2));
            assert_eq!(floats(&v1), floats(&v2));
            slot.advance(n as usize);
            dense.advance(n as usize);
        }
        let end = slot.offset() as i32;
        assert!(pool.lock().first(0, 1) > end - 300, "the row moved forward");
        assert!(slot.range(0, 0, 4).unwrap().is_none(), "forgotten");
        let from = window_start(end, window);
        let (k, _) = slot.range(0, from, end).unwrap().unwrap();
        let (d, _) = dense.range(0, from, end).unwrap().unwrap();
        assert_eq!(floats(&k), floats(&d));
        assert_eq!(pool.lock().first(0, 0), 0, "the other slot's row stays");
        let (o, _) = other.range(0, 0, 50).unwrap().unwrap();
        assert_eq!(floats(&o), floats(&ramp(1, 50, 2, -1.0)));
    }

    fn packed_bits(p: &Packed) -> Vec<Vec<u8>> {
        p.clone()
            .into_parts()
            .iter()
            .map(|a| {
                let a = a.as_dtype(mlx_rs::Dtype::Float32).unwrap();
                floats(&a).iter().flat_map(|f| f.to_le_bytes()).collect()
            })
            .collect()
    }

    /// A quantized pool's slot holds the very words, scales and biases a `QuantizedKvCache`
    /// holds, through prefill chunks and batched decode writes beside another slot, and takes
    /// no float KV.
    #[test]
    fn a_quantized_slot_stores_what_a_quantized_cache_stores() {
        use crate::kv::quant::QuantizedKvCache;
        let q = KvQuant::new(8, 32).unwrap();
        let pool = SharedSlots::new(1).quantized(Some(q));
        let mut other = pool.acquire();
        let mut slot = pool.acquire();
        let mut own = QuantizedKvCache::new(1, q);
        let wave = |n: i32, base: f32| {
            let v: Vec<f32> = (0..2 * n * 64)
                .map(|i| (base + i as f32 * 0.37).sin())
                .collect();
            Array::from_slice(&v, &[1, 2, n, 64])
        };
        for (n, base) in [(5, 0.0), (300, 1.0)] {
            let (k, v) = (wave(n, base), wave(n, -base));
            other.update_and_fetch_quantized(0, &k, &k).unwrap();
            other.advance(n as usize);
            let (k1, v1) = slot.update_and_fetch_quantized(0, &k, &v).unwrap();
            let (k2, v2) = own.update_and_fetch_quantized(0, &k, &v).unwrap();
            assert_eq!(packed_bits(&k1), packed_bits(&k2));
            assert_eq!(packed_bits(&v1), packed_bits(&v2));
            slot.advance(n as usize);
            own.advance(n as usize);
        }
        // One decode step for both slots in one scatter, the pool's way.
        let (k, v) = (wave(2, 7.0), wave(2, 8.0));
        let rows = |a: &Array| a.transpose_axes(&[2, 1, 0, 3]).unwrap(); // [2, heads, 1, dim]
        let (kq, vq) = (
            Packed::quantize(&rows(&k), q).unwrap(),
            Packed::quantize(&rows(&v), q).unwrap(),
        );
        let offsets = [other.offset() as i32, slot.offset() as i32];
        pool.lock()
            .write_decode_quantized(0, &[0, 1], &offsets, kq, vq)
            .unwrap();
        let mine = |a: &Array| slice_axis(a, 2, 1, 2).unwrap();
        own.update_and_fetch_quantized(0, &mine(&k), &mine(&v))
            .unwrap();
        slot.advance(1);
        own.advance(1);
        let end = slot.offset() as i32;
        let (k1, v1) = slot.range_quantized(0, 0, end).unwrap().unwrap();
        let (k2, v2) = own.range_quantized(0, 0, end).unwrap().unwrap();
        assert_eq!(packed_bits(&k1), packed_bits(&k2));
        assert_eq!(packed_bits(&v1), packed_bits(&v2));
        assert_eq!(slot.quantized(), Some(q));
        let (f1, _) = slot.range(0, 0, end).unwrap().unwrap();
        let (f2, _) = own.range(0, 0, end).unwrap().unwrap();
        assert_eq!(floats(&f1), floats(&f2), "dequantized alike");
        let float = ramp(2, 1, 64, 0.0);
        let err = slot.update_and_fetch(0, float.clone(), float.clone());
        assert!(err.is_ok(), "float KV is quantized on the way in");
        assert!(pool.lock().write(0, 1, 0, &float, &float, None).is_err());
    }
}
