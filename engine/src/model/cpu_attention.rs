//! Attention of a long prefill chunk by the engine's own CPU kernel (`wuwei-cpu-attention`:
//! tiles that stay in cache, an online softmax with a vectorised `exp`, all cores), for the
//! CPU levers only (CPU backend, float32 activations).
//!
//! Why not MLX's: on the CPU its attention materialises the whole `[heads, queries, keys]`
//! score matrix, adds the mask and takes a softmax whose `exp` is scalar in the x86 wheel
//! (profiled at ~55% of a 12k-token prefill), with a pass over that matrix per op. Measured
//! on SmolLM2's shapes (9 heads over 3, a 512-query chunk after 8k keys, 2 cores): MLX
//! 0.73-0.82 s split over two streams, this kernel 0.15-0.21 s.
//!
//! The price is a synchronisation: the chunk's queries and keys are evaluated before the
//! kernel runs, and its output enters the graph as a new array. On a GPU, and in half
//! precision (the GPU configuration on the CPU), this never runs: MLX's fused attention
//! does, as mlx-lm calls it.

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};
use wuwei_cpu_attention::{attend, Params, Shapes};

/// Causal attention of `q` (`[1, heads, n, dim]`, the last `n` positions) over `k`/`v`
/// (`[1, kv_heads, keys, dim]`), float32, each query seeing the keys up to its own position
/// and, with a `window`, only the last `window` of them; `sinks` (`[heads]`, gpt-oss) add a
/// logit per head to each softmax. Returns `[1, heads, n, dim]`.
pub fn causal(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    window: Option<i32>,
    sinks: Option<&Array>,
) -> Result<Array, Exception> {
    let (qs, ks) = (q.shape(), k.shape());
    let mut shapes = Shapes {
        heads: qs[1] as usize,
        kv_heads: ks[1] as usize,
        queries: qs[2] as usize,
        keys: ks[2] as usize,
        dim: qs[3] as usize,
        kv_stride: 0,
    };
    if [q.dtype(), k.dtype(), v.dtype()] != [Dtype::Float32; 3]
        || shapes.kv_heads == 0
        || !shapes.heads.is_multiple_of(shapes.kv_heads)
        || shapes.queries > shapes.keys
        || v.shape() != ks
    {
        return Err(Exception::custom(
            "cpu attention: float32, grouped heads, causal only",
        ));
    }
    let q = q.contiguous()?;
    let sinks = sinks.map(|s| s.as_dtype(Dtype::Float32)).transpose()?;
    mlx_rs::transforms::eval([&q, k, v].into_iter().chain(&sinks))?;
    if sinks.as_ref().is_some_and(|s| s.size() != shapes.heads) {
        return Err(Exception::custom("cpu attention: one sink per head"));
    }
    // Keys and values as the cache holds them (a view of its longer buffers), not copied.
    let (k, v) = match (head_stride(k), head_stride(v)) {
        (Some(a), Some(b)) if a == b => {
            shapes.kv_stride = a;
            (k.clone(), v.clone())
        }
        _ => {
            shapes.kv_stride = shapes.keys * shapes.dim;
            let (k, v) = (k.contiguous()?, v.contiguous()?);
            mlx_rs::transforms::eval([&k, &v])?;
            (k, v)
        }
    };
    let params = Params {
        scale,
        window: window.map(|w| w.max(1) as usize),
        sinks: sinks.as_ref().map(|s| s.as_slice()),
    };
    let len = shapes.kv_len();
    // SAFETY: `k` and `v` are evaluated float32 arrays `[1, kv_heads, keys, dim]` whose rows
    // are `dim` packed floats and whose heads are `kv_stride` floats apart (`head_stride`),
    // so their data spans `kv_len()` floats from their first element, within the buffer they
    // view; both stay alive (held here) while the slices are read.
    let (k_data, v_data) = unsafe {
        (
            std::slice::from_raw_parts(k.as_slice_unchecked::<f32>().as_ptr(), len),
            std::slice::from_raw_parts(v.as_slice_unchecked::<f32>().as_ptr(), len),
        )
    };
    let out = attend(q.as_slice(), k_data, v_data, shapes, params);
    Ok(Array::from_slice(&out, qs))
}

/// Floats from one head to the next of an evaluated `[1, heads, rows, dim]` array whose rows
/// are `dim` packed floats (a KV cache's keys: a slice of a buffer with room for more rows),
/// or `None` if it is laid out otherwise.
fn head_stride(a: &Array) -> Option<usize> {
    let (shape, strides) = (a.shape(), a.strides());
    let (heads, rows, dim) = (shape[1] as usize, shape[2] as usize, shape[3] as usize);
    let rows_packed = strides[3] == 1 && (strides[2] == dim || rows == 1);
    let heads_apart = heads == 1 || strides[1] >= rows * dim;
    (shape.len() == 4 && shape[0] == 1 && rows_packed && heads_apart).then(|| {
        if heads == 1 {
            rows * dim
        } else {
            strides[1]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlx_ext::slice_axis;
    use crate::model::attention::chunk_mask;
    use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
    use mlx_rs::random::{key, normal};

    fn random(shape: &[i32], seed: u64) -> Array {
        normal::<f32>(shape, None, None, Some(&key(seed).unwrap())).unwrap()
    }

    fn worst(a: &Array, b: &Array) -> f32 {
        assert_eq!(a.shape(), b.shape());
        let (a, b) = (a.as_slice::<f32>(), b.as_slice::<f32>());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Causal, grouped heads (6 over 2), a chunk of 150 queries after 1,000 cached keys (key
    /// tiles the chunk spans in part), as MLX's fused attention computes it.
    #[test]
    fn attends_as_mlx_does() {
        let q = random(&[1, 6, 150, 64], 1);
        let k = random(&[1, 2, 1150, 64], 2);
        let v = random(&[1, 2, 1150, 64], 3);
        let mask = ScaledDotProductAttentionMask::Causal;
        let want = scaled_dot_product_attention(&q, &k, &v, 0.125, mask, None).unwrap();
        let got = causal(&q, &k, &v, 0.125, None, None).unwrap();
        assert!(worst(&got, &want) < 1e-5, "{}", worst(&got, &want));
    }

    /// A sliding window of 300 keys, as an explicit mask gives it to MLX.
    #[test]
    fn attends_within_a_window_as_mlx_does() {
        let (n, keys, window) = (200, 900, 300);
        let q = random(&[1, 4, n, 32], 4);
        let k = random(&[1, 4, keys, 32], 5);
        let v = random(&[1, 4, keys, 32], 6);
        // The engine's own mask for a chunk at the end of the keys.
        let mask = chunk_mask(keys - n, n, 0, Some(window)).unwrap();
        let mask = ScaledDotProductAttentionMask::Array(&mask);
        let want = scaled_dot_product_attention(&q, &k, &v, 0.2, mask, None).unwrap();
        let got = causal(&q, &k, &v, 0.2, Some(window), None).unwrap();
        assert!(worst(&got, &want) < 1e-5, "{}", worst(&got, &want));
    }

    /// Keys and values that are a view of longer buffers (as a KV cache returns them) are read
    /// in place, and give what their packed copies give; one query (decode) as well.
    #[test]
    fn reads_a_cache_view_in_place() {
        let buffer_k = random(&[1, 2, 1024, 32], 13);
        let buffer_v = random(&[1, 2, 1024, 32], 14);
        let (k, v) = (
            slice_axis(&buffer_k, 2, 0, 700).unwrap(),
            slice_axis(&buffer_v, 2, 0, 700).unwrap(),
        );
        mlx_rs::transforms::eval([&k, &v]).unwrap();
        assert_eq!(head_stride(&k), Some(1024 * 32));
        for n in [1, 100] {
            let q = random(&[1, 4, n, 32], 15);
            let viewed = causal(&q, &k, &v, 0.2, None, None).unwrap();
            let (kc, vc) = (k.contiguous().unwrap(), v.contiguous().unwrap());
            let packed = causal(&q, &kc, &vc, 0.2, None, None).unwrap();
            assert_eq!(worst(&viewed, &packed), 0.0);
            let mask = ScaledDotProductAttentionMask::Causal;
            let want = scaled_dot_product_attention(&q, &kc, &vc, 0.2, mask, None).unwrap();
            assert!(worst(&viewed, &want) < 1e-5);
        }
    }

    /// Attention sinks (gpt-oss), with a window, as MLX's fused attention takes them.
    #[test]
    fn attends_with_sinks_as_mlx_does() {
        let (n, keys, window) = (100, 400, 128);
        let q = random(&[1, 4, n, 32], 10);
        let k = random(&[1, 2, keys, 32], 11);
        let v = random(&[1, 2, keys, 32], 12);
        let sinks = Array::from_slice(&[0.5f32, -1.0, 2.0, 0.0], &[4]);
        let causal_mask = chunk_mask(keys - n, n, 0, None).unwrap();
        let windowed = chunk_mask(keys - n, n, 0, Some(window)).unwrap();
        for (w, mask) in [(None, &causal_mask), (Some(window), &windowed)] {
            let m = ScaledDotProductAttentionMask::Array(mask);
            let want = scaled_dot_product_attention(&q, &k, &v, 0.2, m, Some(&sinks)).unwrap();
            let got = causal(&q, &k, &v, 0.2, w, Some(&sinks)).unwrap();
            assert!(worst(&got, &want) < 1e-5, "{w:?}: {}", worst(&got, &want));
        }
    }

    /// A row's numbers do not depend on the chunk it is read in: the last 100 queries read
    /// alone (as after a prefix-cache hit) are bit for bit those of the whole chunk.
    #[test]
    fn a_row_is_the_same_in_any_chunk() {
        let q = random(&[1, 2, 700, 16], 7);
        let k = random(&[1, 1, 700, 16], 8);
        let v = random(&[1, 1, 700, 16], 9);
        let whole = causal(&q, &k, &v, 0.25, None, None).unwrap();
        let tail = causal(
            &slice_axis(&q, 2, 600, 700).unwrap(),
            &k,
            &v,
            0.25,
            None,
            None,
        )
        .unwrap();
        let whole_tail = slice_axis(&whole, 2, 600, 700).unwrap();
        assert_eq!(worst(&tail, &whole_tail.contiguous().unwrap()), 0.0);
    }
}
