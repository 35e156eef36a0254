//! The few MLX operations the engine needs that mlx-rs 0.33 exposes only through its
//! index-macro machinery: plain strided-free slicing and in-place slice updates.

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
