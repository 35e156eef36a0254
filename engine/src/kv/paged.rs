//! KV blocks as stored bytes, and the copies between blocks and a sequence's dense cache.
//!
//! Why copies and not a paged attention kernel: MLX on CPU has none, and attention
//! (`model::layers::attend`) wants each sequence's keys and values contiguous. So a running
//! sequence keeps its KV in a dense per-sequence buffer (its slot) for compute, and blocks are the unit of storage
//! and sharing: a full block (block_size positions × every layer's K and V) is copied out of
//! the dense cache once when it fills, and copied into a new sequence's cache on a prefix hit.
//! A copy of a cached prefix costs a memcpy per block, far below recomputing it.
//!
//! Blocks hold host bytes rather than MLX arrays: they outlive no stream (MLX streams are
//! per-thread, and the SSD writer is another thread), their size is exact, and a dense buffer
//! is never kept alive by a view of it.

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

#[cfg(test)]
use crate::kv::cache::DenseKvCache;
use crate::kv::cache::KvCache;
use crate::kv::quant::{KvQuant, Packed};

/// Shape of one block's KV, fixed per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub dtype: KvDtype,
    /// Layers that hold recurrent state instead of KV (bit `i`: layer `i`; 0 for plain
    /// models). Their KV is not in the blocks; their state is in the snapshots.
    pub linear: u128,
    /// Layers whose heads have the second shape, `wide_shape` (bit `i`: layer `i`; 0 when
    /// every layer has the first): Gemma 4's full-attention layers have fewer, wider heads
    /// than its sliding ones.
    pub wide: u128,
    /// The second shape, `(kv_heads, head_dim)` (`(0, 0)`: none).
    pub wide_shape: (usize, usize),
    /// Sliding-window layers (bit `i`: layer `i`; 0 when none). Their KV is not in the
    /// blocks: a hit needs only the window before where it ends, which the snapshot there
    /// holds (Gemma 3's five windowed layers of six would otherwise fill the blocks with KV
    /// that no query past the window reads again).
    pub windowed: u128,
    /// KV stored quantized (`kv_bits`): each of K and V is three arrays, the packed words
    /// (`uint32`) and the scales and biases (in `dtype`), as the cache holds them.
    pub quant: Option<KvQuant>,
}

/// One array a layer's K (or V) is stored as: `[kv_heads, block_size, last]` of `dtype`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    pub last: usize,
    pub dtype: Dtype,
    /// Bytes per element of `dtype`.
    size: usize,
}

impl Part {
    /// Bytes of one head's `block_size` rows.
    fn row_bytes(&self, block_size: usize) -> usize {
        block_size * self.last * self.size
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KvDtype {
    F32 = 1,
    F16 = 2,
    Bf16 = 3,
    /// Packed words of quantized KV (in snapshots of windowed layers; blocks hold floats'
    /// dtype in their header).
    U32 = 4,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 | KvDtype::U32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(KvDtype::F32),
            2 => Some(KvDtype::F16),
            3 => Some(KvDtype::Bf16),
            4 => Some(KvDtype::U32),
            _ => None,
        }
    }

    pub(crate) fn from_mlx(d: Dtype) -> Option<Self> {
        match d {
            Dtype::Float32 => Some(KvDtype::F32),
            Dtype::Float16 => Some(KvDtype::F16),
            Dtype::Bfloat16 => Some(KvDtype::Bf16),
            Dtype::Uint32 => Some(KvDtype::U32),
            _ => None,
        }
    }

    pub(crate) fn to_mlx(self) -> Dtype {
        match self {
            KvDtype::F32 => Dtype::Float32,
            KvDtype::F16 => Dtype::Float16,
            KvDtype::Bf16 => Dtype::Bfloat16,
            KvDtype::U32 => Dtype::Uint32,
        }
    }
}

impl KvLayout {
    /// `(kv_heads, head_dim)` of `layer`.
    pub fn shape(&self, layer: usize) -> (usize, usize) {
        if layer < 128 && self.wide & (1u128 << layer) != 0 {
            self.wide_shape
        } else {
            (self.kv_heads, self.head_dim)
        }
    }

    /// The arrays one of `layer`'s K or V is stored as: the floats, or (quantized) the
    /// packed words, scales and biases.
    pub(crate) fn parts(&self, layer: usize) -> Vec<Part> {
        let (_, dim) = self.shape(layer);
        let (float, size) = (self.dtype.to_mlx(), self.dtype.size());
        match self.quant {
            None => vec![Part {
                last: dim,
                dtype: float,
                size,
            }],
            Some(q) => {
                let groups = Part {
                    last: dim / q.group_size as usize,
                    dtype: float,
                    size,
                };
                let words = Part {
                    last: dim * q.bits as usize / 32,
                    dtype: Dtype::Uint32,
                    size: 4,
                };
                vec![words, groups, groups]
            }
        }
    }

    /// Bytes of one of `layer`'s K or V in a block.
    fn tensor_bytes(&self, layer: usize) -> usize {
        let (heads, _) = self.shape(layer);
        let row: usize = self
            .parts(layer)
            .iter()
            .map(|p| p.row_bytes(self.block_size))
            .sum();
        heads * row
    }

    /// Bytes of a whole block: every block layer's K then V.
    pub fn block_bytes(&self) -> usize {
        self.block_layers().map(|l| 2 * self.tensor_bytes(l)).sum()
    }

    /// Whether `layer` keeps recurrent state rather than KV.
    pub fn is_linear(&self, layer: usize) -> bool {
        layer < 128 && self.linear & (1u128 << layer) != 0
    }

    /// Whether `layer` attends through a sliding window (its KV is in snapshots, not blocks).
    pub fn is_windowed(&self, layer: usize) -> bool {
        layer < 128 && self.windowed & (1u128 << layer) != 0
    }

    /// `self` with the layers `windows` gives a sliding window (each cache layer's, `None`:
    /// full attention) marked windowed, linear ones excepted.
    pub fn with_windows(mut self, windows: &[Option<i32>]) -> Self {
        for (layer, window) in windows.iter().enumerate() {
            if window.is_some() && layer < 128 && !self.is_linear(layer) {
                self.windowed |= 1u128 << layer;
            }
        }
        self
    }

    /// The layers whose KV the blocks hold, in order: neither linear nor windowed.
    pub fn block_layers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.layers).filter(|&l| !self.is_linear(l) && !self.is_windowed(l))
    }
}

/// One full block: for each layer, K then V, each `[kv_heads, block_size, head_dim]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct KvBlock {
    pub layout: KvLayout,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum PagedError {
    #[error(transparent)]
    Mlx(#[from] Exception),
    #[error("KV cache holds {0:?}, which blocks cannot store")]
    UnsupportedDtype(Dtype),
    #[error("KV cache layer {0} is empty")]
    EmptyLayer(usize),
    /// Blocks hold at most two `[kv_heads, block, head_dim]` shapes (Gemma 4's sliding and
    /// full layers).
    #[error("KV cache layer {layer} holds {shape:?} per position, beside {first:?} and {second:?}: blocks hold two shapes at most")]
    MixedShapes {
        layer: usize,
        shape: (i32, i32),
        first: (i32, i32),
        second: (i32, i32),
    },
}

/// The layout of `cache`'s blocks, once it holds something.
pub fn layout_of(cache: &dyn KvCache, block_size: usize) -> Result<KvLayout, PagedError> {
    // Layers without KV after a forward pass keep recurrent state (linear attention).
    let mut linear = 0u128;
    let (mut wide, mut first, mut second) = (0u128, None, None);
    let mut dtype = None;
    let heads_and_dim = |k: &Array| (k.shape()[1], k.shape()[3]);
    for layer in 0..cache.num_layers() {
        match cache.range(layer, 0, 1)? {
            Some((k, _)) => {
                let shape = heads_and_dim(&k);
                dtype.get_or_insert(k.dtype());
                match (first, second) {
                    (None, _) => first = Some(shape),
                    (Some(f), _) if f == shape => {}
                    (Some(_), None) if layer < 128 => {
                        second = Some(shape);
                        wide |= 1u128 << layer;
                    }
                    (Some(_), Some(w)) if w == shape => wide |= 1u128 << layer,
                    (Some(f), w) => {
                        return Err(PagedError::MixedShapes {
                            layer,
                            shape,
                            first: f,
                            second: w.unwrap_or_default(),
                        })
                    }
                }
            }
            None if layer < 128 => linear |= 1u128 << layer,
            None => return Err(PagedError::EmptyLayer(layer)),
        }
    }
    let (heads, dim) = first.ok_or(PagedError::EmptyLayer(0))?;
    let dtype = dtype.expect("a first layer has a dtype");
    let usize_pair = |(a, b): (i32, i32)| (a as usize, b as usize);
    Ok(KvLayout {
        linear,
        layers: cache.num_layers(),
        kv_heads: heads as usize,
        head_dim: dim as usize,
        block_size,
        dtype: KvDtype::from_mlx(dtype).ok_or(PagedError::UnsupportedDtype(dtype))?,
        wide,
        wide_shape: second.map_or((0, 0), usize_pair),
        // Known from the model, not from a cache (the caller sets it).
        windowed: 0,
        quant: cache.quantized(),
    })
}

/// The bytes of an array of a dtype blocks hold (floats, and the packed words of quantized KV).
pub(crate) fn host_bytes(a: &Array) -> Result<Vec<u8>, PagedError> {
    fn raw<T: mlx_rs::ArrayElement>(a: &Array) -> Result<Vec<u8>, PagedError> {
        let s = a
            .try_as_slice::<T>()
            .map_err(|e| Exception::custom(e.to_string()))?;
        // SAFETY: a slice of plain numbers viewed as bytes; u8 has no alignment or validity
        // needs.
        let bytes = unsafe {
            std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s))
        };
        Ok(bytes.to_vec())
    }
    let a = a.contiguous()?;
    a.eval()?;
    match a.dtype() {
        Dtype::Float32 => raw::<f32>(&a),
        Dtype::Float16 => raw::<half::f16>(&a),
        Dtype::Bfloat16 => raw::<half::bf16>(&a),
        Dtype::Uint32 => raw::<u32>(&a),
        other => Err(PagedError::UnsupportedDtype(other)),
    }
}

/// `layer`'s K then V arrays (each `[1, heads, end - start, last]`) as `layout` stores them.
pub(crate) fn stored_arrays(
    cache: &dyn KvCache,
    layout: &KvLayout,
    layer: usize,
    start: i32,
    end: i32,
) -> Result<Vec<Array>, PagedError> {
    let missing = PagedError::EmptyLayer(layer);
    Ok(if layout.quant.is_some() {
        let (k, v) = cache.range_quantized(layer, start, end)?.ok_or(missing)?;
        vec![k.w, k.scales, k.biases, v.w, v.scales, v.biases]
    } else {
        let (k, v) = cache.range(layer, start, end)?.ok_or(missing)?;
        vec![k, v]
    })
}

/// Puts `layer`'s stored arrays (K's parts then V's, as `layout` stores them) into `cache`:
/// at its offset (blocks), or (`window`) as the window of a windowed layer ending there
/// (a snapshot).
pub(crate) fn load_stored(
    cache: &mut dyn KvCache,
    layout: &KvLayout,
    layer: usize,
    parts: Vec<Array>,
    window: bool,
) -> Result<(), Exception> {
    if layout.quant.is_some() {
        let (k, v) = Packed::pair(parts);
        return match window {
            true => cache.load_window_quantized(layer, k, v),
            false => cache.load_layer_quantized(layer, k, v),
        };
    }
    let [k, v]: [Array; 2] = parts.try_into().expect("keys and values");
    match window {
        true => cache.load_window(layer, k, v),
        false => cache.load_layer(layer, k, v),
    }
}

/// Copies blocks `first..first + count` (positions `first*B .. (first+count)*B`) out of
/// `cache`, which must already hold those positions.
pub fn blocks_from_cache(
    cache: &dyn KvCache,
    layout: &KvLayout,
    first: usize,
    count: usize,
) -> Result<Vec<KvBlock>, PagedError> {
    let b = layout.block_size;
    let (start, end) = ((first * b) as i32, ((first + count) * b) as i32);
    let mut blocks: Vec<KvBlock> = (0..count)
        .map(|_| KvBlock {
            layout: *layout,
            data: Vec::with_capacity(layout.block_bytes()),
        })
        .collect();
    for layer in layout.block_layers() {
        let (heads, _) = layout.shape(layer);
        let parts = layout.parts(layer);
        let arrays = stored_arrays(cache, layout, layer, start, end)?;
        // K's parts, then V's.
        for (array, part) in arrays.iter().zip(parts.iter().cycle()) {
            // `array` is [1, heads, count*B, last]: block j of head h is one run of `row` bytes.
            let row = part.row_bytes(b);
            let bytes = host_bytes(array)?;
            let head_stride = count * row;
            for (j, block) in blocks.iter_mut().enumerate() {
                for h in 0..heads {
                    let at = h * head_stride + j * row;
                    block.data.extend_from_slice(&bytes[at..at + row]);
                }
            }
        }
    }
    debug_assert!(blocks.iter().all(|b| b.data.len() == layout.block_bytes()));
    Ok(blocks)
}

/// Appends `blocks` (consecutive, starting at the cache's current offset) to `cache`.
pub fn fill_cache_from_blocks<B: std::ops::Deref<Target = KvBlock>>(
    cache: &mut dyn KvCache,
    blocks: &[B],
) -> Result<(), PagedError> {
    let Some(first) = blocks.first() else {
        return Ok(());
    };
    let layout = first.layout;
    let count = blocks.len();
    // Where the current array starts in each block.
    let mut base = 0;
    for layer in layout.block_layers() {
        let (heads, _) = layout.shape(layer);
        let parts = layout.parts(layer);
        let mut arrays = Vec::with_capacity(2 * parts.len());
        for part in parts.iter().chain(parts.iter()) {
            let row = part.row_bytes(layout.block_size);
            let shape = [
                1,
                heads as i32,
                (count * layout.block_size) as i32,
                part.last as i32,
            ];
            let mut scratch = vec![0u8; heads * row * count];
            for (j, block) in blocks.iter().enumerate() {
                for h in 0..heads {
                    let src = base + h * row;
                    let dst = h * count * row + j * row;
                    scratch[dst..dst + row].copy_from_slice(&block.data[src..src + row]);
                }
            }
            // SAFETY: `scratch` holds exactly shape's element count of `dtype`; MLX copies it.
            arrays
                .push(unsafe { Array::from_raw_data(scratch.as_ptr().cast(), &shape, part.dtype) });
            base += heads * row;
        }
        load_stored(cache, &layout, layer, arrays, false)?;
    }
    cache.advance(count * layout.block_size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, base: f32, dtype: Dtype) -> Array {
        // Values that are exact in bf16 and f16 (small integers and halves).
        let v: Vec<f32> = (0..n).map(|i| (base + i as f32) / 2.0).collect();
        Array::from_slice(&v, &[1, 2, (n / 6) as i32, 3])
            .as_dtype(dtype)
            .unwrap()
    }

    fn filled(positions: usize, dtype: Dtype) -> DenseKvCache {
        let mut cache = DenseKvCache::new(2);
        for layer in 0..2 {
            let n = 2 * positions * 3;
            let base = 100.0 * layer as f32;
            cache
                .load_layer(layer, values(n, base, dtype), values(n, base + 50.0, dtype))
                .unwrap();
        }
        cache.advance(positions);
        cache
    }

    fn floats(a: &Array) -> Vec<f32> {
        a.as_dtype(Dtype::Float32)
            .unwrap()
            .contiguous()
            .unwrap()
            .as_slice::<f32>()
            .to_vec()
    }

    /// Layers of two head shapes (Gemma 4's sliding and full layers) share a block: their
    /// KV round-trips through blocks into a fresh cache; a third shape has no layout, so the
    /// prefix cache stays off rather than mixing them up.
    #[test]
    fn two_head_shapes_share_a_block_and_a_third_has_no_layout() {
        let cache = filled(4, Dtype::Float32);
        let wide = |n: i32, base: f32| {
            let v: Vec<f32> = (0..n * 6).map(|i| base + i as f32).collect();
            Array::from_slice(&v, &[1, 1, n, 6])
        };
        let mut mixed = DenseKvCache::new(3);
        for layer in 0..2 {
            let (k, v) = cache.range(layer, 0, 4).unwrap().unwrap();
            mixed.load_layer(layer, k, v).unwrap();
        }
        mixed
            .load_layer(1 + 1, wide(4, 0.0), wide(4, 500.0))
            .unwrap();
        mixed.advance(4);
        let layout = layout_of(&mixed, 2).unwrap();
        assert_eq!((layout.wide, layout.wide_shape), (0b100, (1, 6)));
        assert_eq!(layout.block_bytes(), 2 * (2 * 2 * 2 * 3 + 2 * 6) * 4);
        let blocks = blocks_from_cache(&mixed, &layout, 0, 2).unwrap();
        let mut target = DenseKvCache::new(3);
        fill_cache_from_blocks(&mut target, &blocks.iter().collect::<Vec<_>>()).unwrap();
        for layer in 0..3 {
            let (k0, v0) = mixed.range(layer, 0, 4).unwrap().unwrap();
            let (k1, v1) = target.range(layer, 0, 4).unwrap().unwrap();
            assert_eq!(k1.shape(), k0.shape());
            assert_eq!(floats(&k0), floats(&k1));
            assert_eq!(floats(&v0), floats(&v1));
        }

        let third = Array::zeros::<f32>(&[1, 3, 4, 2]).unwrap();
        let mut three = DenseKvCache::new(4);
        for layer in 0..3 {
            let (k, v) = mixed.range(layer, 0, 4).unwrap().unwrap();
            three.load_layer(layer, k, v).unwrap();
        }
        three.load_layer(3, third.clone(), third).unwrap();
        three.advance(4);
        assert!(matches!(
            layout_of(&three, 2),
            Err(PagedError::MixedShapes {
                layer: 3,
                shape: (3, 2),
                first: (2, 3),
                second: (1, 6)
            })
        ));
    }

    /// Quantized KV (`kv_bits`) goes into blocks as the packed words, scales and biases the
    /// cache holds, and comes back bit for bit: a hit restores what a cold run computes.
    #[test]
    fn quantized_kv_round_trips_bit_for_bit() {
        use crate::kv::quant::QuantizedKvCache;
        let q = KvQuant::new(4, 32).unwrap();
        let mut source = QuantizedKvCache::new(2, q);
        for layer in 0..2 {
            let kv = |seed: u64| {
                mlx_rs::random::normal::<f32>(
                    &[1, 2, 5, 64],
                    None,
                    None,
                    Some(&mlx_rs::random::key(seed).unwrap()),
                )
                .unwrap()
                .as_dtype(Dtype::Bfloat16)
                .unwrap()
            };
            source
                .store(layer, &kv(layer as u64), &kv(9 + layer as u64))
                .unwrap();
        }
        source.advance(5);
        let layout = layout_of(&source, 2).unwrap();
        assert_eq!((layout.quant, layout.dtype), (Some(q), KvDtype::Bf16));
        // Per layer, K and V: 2 heads × 2 positions × (32 words' bytes + 2 groups × bf16 scale
        // and bias).
        assert_eq!(layout.block_bytes(), 2 * 2 * 2 * 2 * (32 + 2 * 2 * 2));
        let blocks = blocks_from_cache(&source, &layout, 0, 2).unwrap();
        assert!(blocks.iter().all(|b| b.data.len() == layout.block_bytes()));
        let mut target = QuantizedKvCache::new(2, q);
        fill_cache_from_blocks(&mut target, &blocks.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(target.offset(), 4);
        for layer in 0..2 {
            let (k0, v0) = source.range_quantized(layer, 0, 4).unwrap().unwrap();
            let (k1, v1) = target.range_quantized(layer, 0, 4).unwrap().unwrap();
            for (a, b) in [(k0, k1), (v0, v1)] {
                assert_eq!(host_bytes(&a.w).unwrap(), host_bytes(&b.w).unwrap());
                assert_eq!(
                    host_bytes(&a.scales).unwrap(),
                    host_bytes(&b.scales).unwrap()
                );
                assert_eq!(
                    host_bytes(&a.biases).unwrap(),
                    host_bytes(&b.biases).unwrap()
                );
                assert_eq!(a.w.shape(), &[1, 2, 4, 8]);
            }
        }
        // A float cache cannot take them.
        let mut float = DenseKvCache::new(2);
        assert!(fill_cache_from_blocks(&mut float, &blocks.iter().collect::<Vec<_>>()).is_err());
    }

    #[test]
    fn blocks_round_trip_through_a_fresh_cache() {
        for (dtype, kv) in [
            (Dtype::Float32, KvDtype::F32),
            (Dtype::Bfloat16, KvDtype::Bf16),
            (Dtype::Float16, KvDtype::F16),
        ] {
            round_trip(dtype, kv);
        }
    }

    /// KV of a half-precision model (what a GPU runs) is stored and restored in its own dtype.
    fn round_trip(dtype: Dtype, kv: KvDtype) {
        // 5 positions, blocks of 2: two full blocks, the fifth position is never a block.
        let source = filled(5, dtype);
        let layout = layout_of(&source, 2).unwrap();
        assert_eq!((layout.layers, layout.kv_heads, layout.head_dim), (2, 2, 3));
        assert_eq!(layout.dtype, kv);
        let blocks = blocks_from_cache(&source, &layout, 0, 2).unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(blocks.iter().all(|b| b.data.len() == layout.block_bytes()));
        // Taken one at a time or together, a block holds the same bytes.
        assert_eq!(
            blocks_from_cache(&source, &layout, 1, 1).unwrap()[0],
            blocks[1]
        );

        let mut target = DenseKvCache::new(2);
        fill_cache_from_blocks(&mut target, &blocks.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(target.offset(), 4);
        for layer in 0..2 {
            let (k0, v0) = source.range(layer, 0, 4).unwrap().unwrap();
            let (k1, v1) = target.range(layer, 0, 4).unwrap().unwrap();
            assert_eq!(k1.dtype(), dtype);
            assert_eq!(floats(&k0), floats(&k1));
            assert_eq!(floats(&v0), floats(&v1));
        }
    }
}
