//! The few MLX operations the engine needs that mlx-rs 0.33 exposes only through its
//! index-macro machinery (plain strided-free slicing and in-place slice updates, scatter) or
//! not fully (quantized and gathered matmuls with a quantization mode), called through
//! mlx-sys.

use mlx_rs::{Array, Stream};

/// An MLX operation failed (shape mismatch, out of memory…); MLX's own message is in the log.
#[derive(Debug, thiserror::Error)]
#[error("MLX operation `{0}` failed")]
pub struct MlxOpError(&'static str);

impl From<MlxOpError> for mlx_rs::error::Exception {
    fn from(e: MlxOpError) -> Self {
        mlx_rs::error::Exception::custom(e.to_string())
    }
}

fn finish(status: i32, res: mlx_sys::mlx_array, op: &'static str) -> Result<Array, MlxOpError> {
    if status == 0 {
        // SAFETY: on success MLX initialised `res`, and we take ownership of it exactly once.
        Ok(unsafe { Array::from_ptr(res) })
    } else {
        // SAFETY: `res` came from mlx_array_new and is not used after this.
        unsafe { mlx_sys::mlx_array_free(res) };
        Err(MlxOpError(op))
    }
}

/// `a[start[0]..stop[0], start[1]..stop[1], …]` over the leading `start.len()` axes.
pub fn slice(a: &Array, start: &[i32], stop: &[i32]) -> Result<Array, MlxOpError> {
    let (start, stop) = full_bounds(a, start, stop);
    let strides = vec![1i32; start.len()];
    let stream = Stream::thread_local_or_default();
    // SAFETY: all pointers are valid for the lengths passed; MLX copies them.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_slice(
            &mut res,
            a.as_ptr(),
            start.as_ptr(),
            start.len(),
            stop.as_ptr(),
            stop.len(),
            strides.as_ptr(),
            strides.len(),
            stream.as_ptr(),
        );
        finish(status, res, "slice")
    }
}

/// A copy of `src` with `update` written at `src[start..start+update.shape]`.
pub fn slice_update(src: &Array, update: &Array, start: &[i32]) -> Result<Array, MlxOpError> {
    let shape = update.shape();
    let stop: Vec<i32> = start.iter().zip(shape).map(|(s, n)| s + n).collect();
    let (start, stop) = full_bounds(src, start, &stop);
    let strides = vec![1i32; start.len()];
    let stream = Stream::thread_local_or_default();
    // SAFETY: as in `slice`.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_slice_update(
            &mut res,
            src.as_ptr(),
            update.as_ptr(),
            start.as_ptr(),
            start.len(),
            stop.as_ptr(),
            stop.len(),
            strides.as_ptr(),
            strides.len(),
            stream.as_ptr(),
        );
        finish(status, res, "slice_update")
    }
}

/// Extends partial bounds to every axis (untouched axes are taken whole).
fn full_bounds(a: &Array, start: &[i32], stop: &[i32]) -> (Vec<i32>, Vec<i32>) {
    let shape = a.shape();
    let mut s = vec![0; shape.len()];
    let mut e = shape.to_vec();
    s[..start.len()].copy_from_slice(start);
    e[..stop.len()].copy_from_slice(stop);
    (s, e)
}

/// `a[.., start..stop, ..]` along one axis.
pub fn slice_axis(a: &Array, axis: usize, start: i32, stop: i32) -> Result<Array, MlxOpError> {
    let mut s = vec![0; axis + 1];
    let mut e: Vec<i32> = a.shape()[..=axis].to_vec();
    s[axis] = start;
    e[axis] = stop;
    slice(a, &s, &e)
}

/// A copy of `src` with `update` written starting at `start` along `axis`.
pub fn slice_update_axis(
    src: &Array,
    update: &Array,
    axis: usize,
    start: i32,
) -> Result<Array, MlxOpError> {
    let mut s = vec![0; axis + 1];
    s[axis] = start;
    slice_update(src, update, &s)
}

/// A copy of `a` with `updates` written at the positions `indices` give along `axes`
/// (`mlx.core` scatter: `updates` is `indices`' broadcast shape followed by `a`'s shape with
/// the indexed axes of size 1).
pub fn scatter(
    a: &Array,
    indices: &[Array],
    updates: &Array,
    axes: &[i32],
) -> Result<Array, MlxOpError> {
    let stream = Stream::thread_local_or_default();
    let ptrs: Vec<mlx_sys::mlx_array> = indices.iter().map(|i| i.as_ptr()).collect();
    // SAFETY: the vector copies the array handles it is given (MLX reference counts them) and
    // is freed here; all other pointers are valid for the lengths passed.
    unsafe {
        let vec = mlx_sys::mlx_vector_array_new_data(ptrs.as_ptr(), ptrs.len());
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_scatter(
            &mut res,
            a.as_ptr(),
            vec,
            updates.as_ptr(),
            axes.as_ptr(),
            axes.len(),
            stream.as_ptr(),
        );
        mlx_sys::mlx_vector_array_free(vec);
        finish(status, res, "scatter")
    }
}

/// `(a >> b) & 1` elementwise (integer arrays, broadcast): bit `b` of `a`. mlx-rs 0.33 binds
/// neither shift nor bitwise and.
pub fn bit_at(a: &Array, b: &Array) -> Result<Array, MlxOpError> {
    let stream = Stream::thread_local_or_default();
    let one = Array::from_slice(&[1u32], &[1]);
    // SAFETY: all handles are valid arrays; `shifted` is freed once used.
    unsafe {
        let mut shifted = mlx_sys::mlx_array_new();
        let status =
            mlx_sys::mlx_right_shift(&mut shifted, a.as_ptr(), b.as_ptr(), stream.as_ptr());
        let shifted = finish(status, shifted, "right_shift")?;
        let mut res = mlx_sys::mlx_array_new();
        let status =
            mlx_sys::mlx_bitwise_and(&mut res, shifted.as_ptr(), one.as_ptr(), stream.as_ptr());
        finish(status, res, "bitwise_and")
    }
}

// ---------------------------------------------------------------------------------------------
// Quantized and gathered matmuls with a quantization mode. mlx-rs 0.33 binds these with the
// mode fixed to "affine" (and leaks an empty array for each absent optional input); MLX 0.32
// also has "mxfp4", "mxfp8" and "nvfp4" (scales as uint8, no biases), which MoE checkpoints use.

/// MLX's quantization modes (`mode=` of `mx.quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantMode {
    Affine,
    Mxfp4,
    Mxfp8,
    Nvfp4,
}

impl QuantMode {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "affine" => QuantMode::Affine,
            "mxfp4" => QuantMode::Mxfp4,
            "mxfp8" => QuantMode::Mxfp8,
            "nvfp4" => QuantMode::Nvfp4,
            _ => return None,
        })
    }

    fn c_name(self) -> &'static std::ffi::CStr {
        match self {
            QuantMode::Affine => c"affine",
            QuantMode::Mxfp4 => c"mxfp4",
            QuantMode::Mxfp8 => c"mxfp8",
            QuantMode::Nvfp4 => c"nvfp4",
        }
    }
}

fn some_int(value: i32) -> mlx_sys::mlx_optional_int {
    mlx_sys::mlx_optional_int {
        value,
        has_value: true,
    }
}

/// An optional input: the array's handle, or an empty one that `Opt` frees.
struct Opt(mlx_sys::mlx_array, bool);

impl Opt {
    fn new(a: Option<&Array>) -> Self {
        match a {
            Some(a) => Opt(a.as_ptr(), false),
            // SAFETY: a fresh empty handle, freed in `drop`.
            None => Opt(unsafe { mlx_sys::mlx_array_new() }, true),
        }
    }
}

impl Drop for Opt {
    fn drop(&mut self) {
        if self.1 {
            // SAFETY: created by mlx_array_new in `new` and not used after this.
            unsafe { mlx_sys::mlx_array_free(self.0) };
        }
    }
}

/// `x @ w.T` (or `x @ w`) with `w` quantized (`mx.quantized_matmul`).
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    transpose: bool,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
) -> Result<Array, MlxOpError> {
    let stream = Stream::thread_local_or_default();
    let biases = Opt::new(biases);
    // SAFETY: every handle is valid for the call; MLX takes its own references.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_quantized_matmul(
            &mut res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.0,
            transpose,
            some_int(group_size),
            some_int(bits),
            mode.c_name().as_ptr(),
            stream.as_ptr(),
        );
        finish(status, res, "quantized_matmul")
    }
}

/// `mx.gather_qmm`: for each index of `rhs_indices` (broadcast with `x`'s batch axes), `x`
/// times that expert's quantized matrix of `w` (`[experts, out, in]` packed).
#[allow(clippy::too_many_arguments)]
pub fn gather_qmm(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    rhs_indices: &Array,
    transpose: bool,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
    sorted_indices: bool,
) -> Result<Array, MlxOpError> {
    let stream = Stream::thread_local_or_default();
    let biases = Opt::new(biases);
    let lhs = Opt::new(None);
    // SAFETY: as in `quantized_matmul`.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_gather_qmm(
            &mut res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.0,
            lhs.0,
            rhs_indices.as_ptr(),
            transpose,
            some_int(group_size),
            some_int(bits),
            mode.c_name().as_ptr(),
            sorted_indices,
            stream.as_ptr(),
        );
        finish(status, res, "gather_qmm")
    }
}

/// `mx.gather_mm(a, b, rhs_indices=…)`: float matmuls against the matrices of `b` the indices
/// pick (MLX's CPU kernel takes float32 only).
pub fn gather_mm(
    a: &Array,
    b: &Array,
    rhs_indices: &Array,
    sorted_indices: bool,
) -> Result<Array, MlxOpError> {
    let stream = Stream::thread_local_or_default();
    let lhs = Opt::new(None);
    // SAFETY: as in `quantized_matmul`.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_gather_mm(
            &mut res,
            a.as_ptr(),
            b.as_ptr(),
            lhs.0,
            rhs_indices.as_ptr(),
            sorted_indices,
            stream.as_ptr(),
        );
        finish(status, res, "gather_mm")
    }
}

/// `mx.dequantize`; the result has `dtype`, or MLX's default (the scales' dtype for affine,
/// bfloat16 for the float modes) when `None`.
pub fn dequantize(
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
    dtype: Option<mlx_rs::Dtype>,
) -> Result<Array, MlxOpError> {
    let stream = Stream::thread_local_or_default();
    let biases = Opt::new(biases);
    let global_scale = Opt::new(None);
    let dtype = mlx_sys::mlx_optional_dtype {
        value: dtype.map_or(mlx_sys::mlx_dtype__MLX_FLOAT32, |d| d as mlx_sys::mlx_dtype),
        has_value: dtype.is_some(),
    };
    // SAFETY: as in `quantized_matmul`.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = mlx_sys::mlx_dequantize(
            &mut res,
            w.as_ptr(),
            scales.as_ptr(),
            biases.0,
            some_int(group_size),
            some_int(bits),
            mode.c_name().as_ptr(),
            global_scale.0,
            dtype,
            stream.as_ptr(),
        );
        finish(status, res, "dequantize")
    }
}
