//! Quantized KV: each layer's keys and values stored as MLX affine quantization (packed
//! `uint32` words plus a scale and a bias per group of `group_size` values along the head
//! dimension), as mlx-lm's `QuantizedKVCache` (`kv_bits`, `kv_group_size`) stores them.
//! Attention reads them with quantized matmuls (`model::attention`), never expanding the whole
//! context back to floats (but for a CPU lever: long prefill chunks on the CPU in float32).

use mlx_rs::error::Exception;
use mlx_rs::ops::{concatenate, quantize, zeros_dtype};
use mlx_rs::Array;

use crate::kv::cache::{KvCache, RecurrentStates};
use crate::mlx_ext::{dequantize, slice_axis, slice_update_axis, QuantMode};

/// How KV is quantized: bits per value and values per scale/bias group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvQuant {
    pub bits: i32,
    pub group_size: i32,
}

impl KvQuant {
    /// mlx-lm's default group size (`--kv-group-size`).
    pub const DEFAULT_GROUP_SIZE: i32 = 64;

    /// Checked settings: the bit widths and group sizes MLX's affine quantization takes.
    pub fn new(bits: i32, group_size: i32) -> Result<Self, String> {
        if ![2, 3, 4, 5, 6, 8].contains(&bits) {
            return Err(format!("kv_bits must be 2, 3, 4, 5, 6 or 8, not {bits}"));
        }
        if ![32, 64, 128].contains(&group_size) {
            return Err(format!(
                "kv_group_size must be 32, 64 or 128, not {group_size}"
            ));
        }
        Ok(Self { bits, group_size })
    }

    /// A short name of the format (logs, prefix-cache identity).
    pub fn label(self) -> String {
        format!("affine-q{}g{}", self.bits, self.group_size)
    }

    /// Bytes of one position given its bytes as floats of `float_bytes` each: `bits` per value
    /// plus a scale and a bias (in the float dtype) per group.
    pub fn bytes_per_token(self, float_bytes_per_token: u64, float_bytes: u64) -> u64 {
        let values = float_bytes_per_token / float_bytes.max(1);
        let groups = values.div_ceil(self.group_size as u64);
        (values * self.bits as u64).div_ceil(8) + groups * 2 * float_bytes
    }
}

/// One quantized tensor: `w` `[.., n, dim * bits / 32]` (`uint32`), `scales` and `biases`
/// `[.., n, dim / group_size]`.
#[derive(Clone)]
pub struct Packed {
    pub w: Array,
    pub scales: Array,
    pub biases: Array,
}

impl Packed {
    pub fn quantize(x: &Array, q: KvQuant) -> Result<Self, Exception> {
        let (w, scales, biases) = quantize(x, q.group_size, q.bits)?;
        Ok(Self { w, scales, biases })
    }

    fn map(&self, f: impl Fn(&Array) -> Result<Array, Exception>) -> Result<Self, Exception> {
        Ok(Self {
            w: f(&self.w)?,
            scales: f(&self.scales)?,
            biases: f(&self.biases)?,
        })
    }

    fn arrays(&self) -> [&Array; 3] {
        [&self.w, &self.scales, &self.biases]
    }

    /// Words, scales, biases.
    pub fn into_parts(self) -> [Array; 3] {
        [self.w, self.scales, self.biases]
    }

    pub fn from_parts([w, scales, biases]: [Array; 3]) -> Self {
        Self { w, scales, biases }
    }

    /// Keys and values from their six parts: the keys' words, scales and biases, then the
    /// values'.
    pub fn pair(parts: impl IntoIterator<Item = Array>) -> (Self, Self) {
        let mut it = parts.into_iter();
        let mut three = || Self::from_parts([(); 3].map(|_| it.next().expect("six parts")));
        let keys = three();
        (keys, three())
    }

    pub fn nbytes(&self) -> usize {
        self.arrays().iter().map(|a| a.nbytes()).sum()
    }

    /// Positions `start..end` (axis 2 of `[1, kv_heads, positions, _]`).
    pub fn positions(&self, start: i32, end: i32) -> Result<Self, Exception> {
        self.map(|a| Ok(slice_axis(a, 2, start, end)?))
    }

    /// `self` after `n` positions of zeros (which dequantize to zeros).
    fn after_zeros(&self, n: i32) -> Result<Self, Exception> {
        if n <= 0 {
            return self.map(|a| Ok(a.clone()));
        }
        self.map(|a| {
            let s = a.shape();
            let zeros = zeros_dtype(&[s[0], s[1], n, s[3]], a.dtype())?;
            concatenate(&[zeros, a.clone()], 2)
        })
    }

    /// Back to floats (the scales' dtype).
    pub fn dequantize(&self, q: KvQuant) -> Result<Array, Exception> {
        Ok(dequantize(
            &self.w,
            &self.scales,
            Some(&self.biases),
            q.group_size,
            q.bits,
            QuantMode::Affine,
            None,
        )?)
    }
}

/// Keys and values quantized in `q`'s format, each as `Packed::quantize` does it.
pub fn quantize_kv(
    keys: &Array,
    values: &Array,
    q: KvQuant,
) -> Result<(Packed, Packed), Exception> {
    Ok((Packed::quantize(keys, q)?, Packed::quantize(values, q)?))
}

/// Quantized keys and values back to floats.
pub fn dequantize_kv(
    (keys, values): (Packed, Packed),
    q: KvQuant,
) -> Result<(Array, Array), Exception> {
    Ok((keys.dequantize(q)?, values.dequantize(q)?))
}

/// Buffers grow in steps of this many positions (as `DenseKvCache`'s and mlx-lm's).
const STEP: i32 = 256;

/// A windowed layer's `keys`/`values` ending at position `end`, after zeros from position 0:
/// how a window is restored into a cache that keeps every position (no query reads the
/// zeros).
pub fn window_from_zero(
    keys: Packed,
    values: Packed,
    end: usize,
) -> Result<(Packed, Packed), Exception> {
    let before = end as i32 - keys.w.shape()[2];
    Ok((keys.after_zeros(before)?, values.after_zeros(before)?))
}

/// Per-sequence KV stored quantized (mlx-lm's `QuantizedKVCache`).
pub struct QuantizedKvCache {
    quant: KvQuant,
    layers: Vec<Option<(Packed, Packed)>>,
    offset: usize,
    /// Linear-attention layers' recurrent state (hybrid models), kept as computed.
    states: RecurrentStates,
}

impl QuantizedKvCache {
    pub fn new(num_layers: usize, quant: KvQuant) -> Self {
        Self {
            quant,
            layers: (0..num_layers).map(|_| None).collect(),
            offset: 0,
            states: RecurrentStates::default(),
        }
    }

    pub fn nbytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| k.nbytes() + v.nbytes())
            .sum()
    }

    /// Stores `keys`/`values` (`[1, kv_heads, new, head_dim]`) of `layer` at the offset,
    /// quantized, and returns everything stored for that layer, quantized.
    pub fn store(
        &mut self,
        layer: usize,
        keys: &Array,
        values: &Array,
    ) -> Result<(Packed, Packed), Exception> {
        let new = quantize_kv(keys, values, self.quant)?;
        self.store_packed(layer, new)
    }

    /// Stores KV already quantized in this cache's format (computed, or restored from
    /// prefix-cache blocks) at the offset; returns everything stored for that layer.
    fn store_packed(
        &mut self,
        layer: usize,
        new: (Packed, Packed),
    ) -> Result<(Packed, Packed), Exception> {
        let used = self.offset as i32;
        let end = used + new.0.w.shape()[2];
        let (k_buf, v_buf) = match self.layers[layer].take() {
            Some((k, v)) => (Some(k), Some(v)),
            None => (None, None),
        };
        let put = |buf: Option<Packed>, new: &Packed| -> Result<Packed, Exception> {
            let buf = grow(buf, new, used, end)?;
            Ok(Packed {
                w: slice_update_axis(&buf.w, &new.w, 2, used)?,
                scales: slice_update_axis(&buf.scales, &new.scales, 2, used)?,
                biases: slice_update_axis(&buf.biases, &new.biases, 2, used)?,
            })
        };
        let k_buf = put(k_buf, &new.0)?;
        let v_buf = put(v_buf, &new.1)?;
        let fetched = (k_buf.positions(0, end)?, v_buf.positions(0, end)?);
        self.layers[layer] = Some((k_buf, v_buf));
        Ok(fetched)
    }

    /// Positions `start..end` of `layer`, quantized.
    fn packed_range(
        &self,
        layer: usize,
        start: i32,
        end: i32,
    ) -> Result<Option<(Packed, Packed)>, Exception> {
        let Some((k, v)) = self.layers.get(layer).and_then(Option::as_ref) else {
            return Ok(None);
        };
        Ok(Some((k.positions(start, end)?, v.positions(start, end)?)))
    }
}

/// `buffer` with room for `needed` positions, its first `used` kept.
fn grow(
    buffer: Option<Packed>,
    like: &Packed,
    used: i32,
    needed: i32,
) -> Result<Packed, Exception> {
    let capacity = buffer.as_ref().map_or(0, |b| b.w.shape()[2]);
    if needed <= capacity {
        return Ok(buffer.expect("capacity > 0 implies a buffer"));
    }
    let steps = (needed - used + STEP - 1) / STEP;
    let fresh = |a: &Array| -> Result<Array, Exception> {
        let s = a.shape();
        zeros_dtype(&[s[0], s[1], steps * STEP, s[3]], a.dtype())
    };
    let fresh = like.map(fresh)?;
    match buffer {
        Some(old) => {
            let keep = |o: &Array, f: &Array| -> Result<Array, Exception> {
                concatenate(&[slice_axis(o, 2, 0, used)?, f.clone()], 2)
            };
            Ok(Packed {
                w: keep(&old.w, &fresh.w)?,
                scales: keep(&old.scales, &fresh.scales)?,
                biases: keep(&old.biases, &fresh.biases)?,
            })
        }
        None => Ok(fresh),
    }
}

impl KvCache for QuantizedKvCache {
    fn offset(&self) -> usize {
        self.offset
    }

    /// Stores quantized; returns what is stored, dequantized (attention uses
    /// [`KvCache::update_and_fetch_quantized`] instead).
    fn update_and_fetch(
        &mut self,
        layer: usize,
        keys: Array,
        values: Array,
    ) -> Result<(Array, Array), Exception> {
        dequantize_kv(self.store(layer, &keys, &values)?, self.quant)
    }

    fn quantized(&self) -> Option<KvQuant> {
        Some(self.quant)
    }

    fn update_and_fetch_quantized(
        &mut self,
        layer: usize,
        keys: &Array,
        values: &Array,
    ) -> Result<(Packed, Packed), Exception> {
        self.store(layer, keys, values)
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
        let Some(packed) = self.packed_range(layer, start, end)? else {
            return Ok(None);
        };
        dequantize_kv(packed, self.quant).map(Some)
    }

    fn range_quantized(
        &self,
        layer: usize,
        start: i32,
        end: i32,
    ) -> Result<Option<(Packed, Packed)>, Exception> {
        self.packed_range(layer, start, end)
    }

    fn load_layer_quantized(
        &mut self,
        layer: usize,
        keys: Packed,
        values: Packed,
    ) -> Result<(), Exception> {
        self.store_packed(layer, (keys, values)).map(|_| ())
    }

    /// Every position is kept here: those before the window are zeros, never read.
    fn load_window_quantized(
        &mut self,
        layer: usize,
        keys: Packed,
        values: Packed,
    ) -> Result<(), Exception> {
        let whole = window_from_zero(keys, values, self.offset)?;
        self.layers[layer] = None;
        let offset = std::mem::replace(&mut self.offset, 0);
        let stored = self.store_packed(layer, whole);
        self.offset = offset;
        stored.map(|_| ())
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
        self.nbytes() + self.states.nbytes()
    }

    fn state(&mut self, layer: usize) -> &mut Option<Vec<Array>> {
        self.states.layer(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::cache::DenseKvCache;
    use mlx_rs::random::normal;
    use mlx_rs::Dtype;

    fn kv(n: i32, dtype: Dtype) -> Array {
        normal::<f32>(&[1, 2, n, 64], None, None, None)
            .unwrap()
            .as_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn settings_are_checked() {
        assert!(KvQuant::new(8, 64).is_ok());
        assert!(KvQuant::new(4, 32).is_ok());
        assert!(KvQuant::new(7, 64).is_err());
        assert!(KvQuant::new(8, 48).is_err());
    }

    #[test]
    fn stores_what_a_dense_cache_stores_within_quantization_error() {
        let q = KvQuant::new(8, 64).unwrap();
        let mut cache = QuantizedKvCache::new(1, q);
        let mut dense = DenseKvCache::new(1);
        for n in [5, 1, 300] {
            let (k, v) = (kv(n, Dtype::Float32), kv(n, Dtype::Float32));
            let (k1, v1) = cache.update_and_fetch(0, k.clone(), v.clone()).unwrap();
            let (k2, v2) = dense.update_and_fetch(0, k, v).unwrap();
            assert_eq!(k1.shape(), k2.shape());
            for (a, b) in [(k1, k2), (v1, v2)] {
                let worst = a.subtract(&b).unwrap().abs().unwrap().max(None).unwrap();
                assert!(worst.item_exact::<f32>() < 0.05, "8-bit error {worst:?}");
            }
            cache.advance(n as usize);
            dense.advance(n as usize);
        }
        let (k, _) = cache.range(0, 3, 9).unwrap().unwrap();
        assert_eq!(k.shape(), &[1, 2, 6, 64]);
    }

    /// The target: 4-bit KV in at most 30% of the bytes of bf16 KV.
    #[test]
    fn four_bit_kv_takes_under_30_percent_of_bf16() {
        let n = 512;
        let q = KvQuant::new(4, 64).unwrap();
        let mut quantized = QuantizedKvCache::new(2, q);
        let mut dense = DenseKvCache::new(2);
        for layer in 0..2 {
            let (k, v) = (kv(n, Dtype::Bfloat16), kv(n, Dtype::Bfloat16));
            quantized
                .update_and_fetch(layer, k.clone(), v.clone())
                .unwrap();
            dense.update_and_fetch(layer, k, v).unwrap();
        }
        let ratio = quantized.own_bytes() as f64 / dense.own_bytes() as f64;
        assert!(ratio <= 0.30, "4-bit / bf16 bytes = {ratio}");
        // And the estimate the memory guard uses agrees with what is allocated.
        let float_per_token = (2 * 2 * 2 * 64 * 2) as u64;
        assert_eq!(
            q.bytes_per_token(float_per_token, 2) * n as u64,
            quantized.own_bytes() as u64
        );
    }
}
