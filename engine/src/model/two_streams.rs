//! Two CPU cores for one engine thread. MLX runs each stream's CPU ops on a thread of that
//! stream's own, and some of its CPU kernels are single-threaded: the quantized matmuls
//! (`qmm`, ~90% of a 4-bit MoE decode step, profiled). So with the CPU levers on (CPU
//! backend, float32 activations) those are split in two independent halves, the second
//! queued on a side stream: each half's elements are computed by the same ops over the same
//! values as unsplit (bit-identical), and the two run on both cores. (Long prefill chunks'
//! attention, also single-threaded in MLX, has a kernel of its own: `cpu_attention`.) On a GPU, and in half precision
//! (the GPU configuration on the CPU), nothing is split.

use mlx_rs::error::Exception;
use mlx_rs::{Device, Stream};

thread_local! {
    /// This thread's second CPU stream. MLX streams belong to the thread that made them (a
    /// stream handed to another thread fails there: "There is no Stream(cpu, 1) in current
    /// thread"), so each engine thread makes its own, and `end_thread_streams` ends it.
    static SIDE_STREAM: Stream = Stream::new_with_device(&Device::cpu());
}

/// Whether heavy ops split over two CPU streams: the CPU levers' configuration only.
pub fn enabled() -> bool {
    crate::device::cpu_levers()
}

/// `f`'s ops queued on this thread's side stream (the second core).
pub fn on_side_stream<T>(f: impl FnOnce() -> Result<T, Exception>) -> Result<T, Exception> {
    SIDE_STREAM.with(|side| mlx_rs::with_stream(side, f))
}

/// Ends the MLX streams this thread made, the side stream among them, and their worker
/// threads: each would otherwise outlive the thread, one more per model load for the
/// daemon's lifetime. Call last on an engine thread, once nothing it built will be
/// evaluated again.
pub fn end_thread_streams() {
    // SAFETY: no arguments; MLX destroys only the calling thread's streams.
    unsafe {
        mlx_sys::mlx_clear_streams();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::Array;

    /// One thread after another splits work onto its side stream and reads the result, the
    /// first ending its streams as an engine thread does: each uses a stream of its own
    /// (a stream passed on from an ended thread failed to evaluate).
    #[test]
    fn each_thread_has_its_own_side_stream() {
        for end in [true, false, true] {
            std::thread::spawn(move || {
                let a = Array::from_slice(&[1.0f32, 2.0], &[2]);
                let b = on_side_stream(|| a.multiply(Array::from_f32(3.0))).unwrap();
                let c = &a + &b;
                c.eval().unwrap();
                assert_eq!(c.as_slice::<f32>(), &[4.0, 8.0]);
                if end {
                    end_thread_streams();
                }
            })
            .join()
            .unwrap();
        }
    }
}
