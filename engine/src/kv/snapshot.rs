//! What a prefix hit needs beside the blocks, at a snapshot boundary, as host bytes: a hybrid
//! model's recurrent state, and the window of KV before the boundary of sliding-window layers
//! (whose KV the blocks do not hold). The RAM tier keeps it beside the block that ends there
//! and the SSD tier writes it to a file.
//!
//! Host bytes rather than MLX arrays for the same reasons as KV blocks (`paged`): the SSD
//! writer is another thread (MLX streams are per thread), the size is exact, and no chunk's
//! buffer is kept alive by a view of it. Restoring copies the bytes into fresh arrays.
//!
//! A snapshot carries its own shape: which layers, and each state array's dtype and shape
//! ([`StateLayout`]). The model's expected shape is fixed when its prefix cache is built;
//! a snapshot whose shape differs (another model, another layout, another dtype) is never
//! restored.

use mlx_rs::error::Exception;
use mlx_rs::Array;

use super::cache::KvCache;
use super::paged::{host_bytes, load_stored, KvDtype, KvLayout, PagedError};

/// One state array's place and form: its layer, dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateShape {
    pub layer: usize,
    pub dtype: KvDtype,
    pub shape: Vec<i32>,
}

impl StateShape {
    pub fn bytes(&self) -> usize {
        self.shape
            .iter()
            .map(|&d| d.max(0) as usize)
            .product::<usize>()
            * self.dtype.size()
    }
}

/// Every state array of one sequence, in layer order, then in the order the layer keeps them.
pub type StateLayout = Vec<StateShape>;

/// The shapes a windowed `layer`'s KV takes in a snapshot holding `positions` positions: K's
/// stored arrays then V's, each `[1, kv_heads, positions, last]` (as the blocks store them).
pub fn window_shapes(layout: &KvLayout, layer: usize, positions: usize) -> Vec<StateShape> {
    let (heads, _) = layout.shape(layer);
    let parts = layout.parts(layer);
    parts
        .iter()
        .chain(parts.iter())
        .map(|p| StateShape {
            layer,
            dtype: KvDtype::from_mlx(p.dtype).expect("blocks store floats and packed words"),
            shape: vec![1, heads as i32, positions as i32, p.last as i32],
        })
        .collect()
}

/// The recurrent state of every linear layer, and the window of every sliding-window layer,
/// of one sequence after some prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateSnapshot {
    pub layout: StateLayout,
    /// The arrays' bytes, one after another in `layout`'s order.
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Paged(#[from] PagedError),
    #[error(transparent)]
    Mlx(#[from] Exception),
    #[error("recurrent state shaped {got:?}, the model's is {want:?}")]
    LayoutMismatch {
        got: Box<StateLayout>,
        want: Box<StateLayout>,
    },
    #[error("layer {0} has no recurrent state")]
    NoState(usize),
}

/// The layout of the state `cache` holds for `layers` (evaluated arrays or lazy ones).
pub fn state_layout(
    cache: &mut dyn KvCache,
    layers: impl Iterator<Item = usize>,
) -> Result<StateLayout, SnapshotError> {
    let mut out = Vec::new();
    for layer in layers {
        let state = cache
            .state(layer)
            .as_ref()
            .ok_or(SnapshotError::NoState(layer))?;
        for a in state {
            let dtype =
                KvDtype::from_mlx(a.dtype()).ok_or(PagedError::UnsupportedDtype(a.dtype()))?;
            out.push(StateShape {
                layer,
                dtype,
                shape: a.shape().to_vec(),
            });
        }
    }
    Ok(out)
}

impl StateSnapshot {
    /// Appends `a` (one of `layer`'s arrays) as host bytes, evaluating it.
    pub fn push(&mut self, layer: usize, a: &Array) -> Result<(), SnapshotError> {
        let dtype = KvDtype::from_mlx(a.dtype()).ok_or(PagedError::UnsupportedDtype(a.dtype()))?;
        self.data.extend_from_slice(&host_bytes(a)?);
        self.layout.push(StateShape {
            layer,
            dtype,
            shape: a.shape().to_vec(),
        });
        Ok(())
    }

    /// Appends every array of `other`.
    pub fn append(&mut self, other: StateSnapshot) {
        self.layout.extend(other.layout);
        self.data.extend(other.data);
    }

    /// Bytes held (what the RAM tier counts).
    pub fn nbytes(&self) -> usize {
        self.data.len()
    }

    /// Whether the payload length agrees with the layout (checked when decoding a file).
    pub fn consistent(&self) -> bool {
        self.layout.iter().map(StateShape::bytes).sum::<usize>() == self.data.len()
    }

    /// Puts the state into `cache`'s linear layers and the windows into its windowed layers
    /// (`blocks` says which layers those are; the cache stands at the snapshot's boundary),
    /// when its layout is exactly `expected`.
    pub fn restore(
        &self,
        expected: &StateLayout,
        blocks: &KvLayout,
        cache: &mut dyn KvCache,
    ) -> Result<(), SnapshotError> {
        if &self.layout != expected || !self.consistent() {
            return Err(SnapshotError::LayoutMismatch {
                got: Box::new(self.layout.clone()),
                want: Box::new(expected.clone()),
            });
        }
        let mut by_layer: Vec<(usize, Vec<Array>)> = Vec::new();
        let mut at = 0;
        for s in &self.layout {
            if s.layer >= cache.num_layers() {
                return Err(SnapshotError::NoState(s.layer));
            }
            let n = s.bytes();
            // SAFETY: `data[at..at + n]` holds exactly the shape's element count of `dtype`
            // (checked by `consistent`); MLX copies it.
            let array = unsafe {
                Array::from_raw_data(
                    self.data[at..at + n].as_ptr().cast(),
                    &s.shape,
                    s.dtype.to_mlx(),
                )
            };
            at += n;
            match by_layer.last_mut() {
                Some((l, arrays)) if *l == s.layer => arrays.push(array),
                _ => by_layer.push((s.layer, vec![array])),
            }
        }
        for (layer, arrays) in by_layer {
            if blocks.is_windowed(layer) {
                load_stored(cache, blocks, layer, arrays, true)?;
            } else {
                *cache.state(layer) = Some(arrays);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::cache::DenseKvCache;
    use mlx_rs::Dtype;

    fn floats(a: &Array) -> Vec<f32> {
        a.as_dtype(Dtype::Float32)
            .unwrap()
            .as_slice::<f32>()
            .to_vec()
    }

    #[test]
    fn a_snapshot_restores_only_into_its_own_layout() {
        let conv = Array::from_slice(&[1.5f32, 2.0, -3.0, 4.25, 5.0, 6.0], &[1, 2, 3])
            .as_dtype(Dtype::Bfloat16)
            .unwrap();
        let rec = Array::from_slice(&[0.125f32, -7.0, 8.5, 9.0], &[1, 1, 2, 2]);
        let mut snap = StateSnapshot::default();
        snap.push(1, &conv).unwrap();
        snap.push(1, &rec).unwrap();
        assert_eq!(snap.nbytes(), 6 * 2 + 4 * 4);
        let mut source = DenseKvCache::new(3);
        *source.state(1) = Some(vec![conv.clone(), rec.clone()]);
        let layout = state_layout(&mut source, [1].into_iter()).unwrap();
        assert_eq!(snap.layout, layout);

        // Blocks of a model with no windowed layer.
        let blocks = KvLayout {
            layers: 3,
            kv_heads: 1,
            head_dim: 2,
            block_size: 2,
            dtype: KvDtype::F32,
            linear: 0b10,
            wide: 0,
            wide_shape: (0, 0),
            windowed: 0,
            quant: None,
        };
        let mut target = DenseKvCache::new(3);
        snap.restore(&layout, &blocks, &mut target).unwrap();
        let got = target.state(1).clone().unwrap();
        assert_eq!(got[0].dtype(), Dtype::Bfloat16);
        assert_eq!(floats(&got[0]), floats(&conv));
        assert_eq!(floats(&got[1]), floats(&rec));

        // Another layer, dtype or shape: refused, and the cache is left as it was.
        let mut other = layout.clone();
        other[0].layer = 2;
        let mut fresh = DenseKvCache::new(3);
        assert!(snap.restore(&other, &blocks, &mut fresh).is_err());
        let mut other = layout.clone();
        other[1].dtype = KvDtype::F16;
        assert!(snap.restore(&other, &blocks, &mut fresh).is_err());
        let mut other = layout;
        other[1].shape = vec![1, 2, 1, 2];
        assert!(snap.restore(&other, &blocks, &mut fresh).is_err());
        assert!(fresh.state(1).is_none() && fresh.state(2).is_none());
    }
}
