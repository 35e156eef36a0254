//! The device MLX computes on, and what follows from it: the dtype activations are computed
//! in, whether quantized weights may be expanded, and how much memory the models may use.
//!
//! The product runs on a GPU (Metal on a Mac; CUDA where measured): activations stay in the
//! checkpoint's dtype (bf16/f16) and quantized weights stay quantized, as in mlx-lm. The CPU
//! backend gets two levers of its own, because MLX's CPU kernels are slow in half precision
//! and its quantized matmul does not batch: float32 activations, and (`weights = auto`)
//! dequantized float32 weights through BLAS. Neither may ever apply on a GPU. Which device is
//! in use is asked of MLX at run time, not fixed at build time.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use mlx_rs::{Device, DeviceType, Dtype};
use serde::{Deserialize, Serialize};

/// MLX's backend for the default device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Metal,
    Cuda,
}

impl Backend {
    pub fn is_gpu(self) -> bool {
        self != Backend::Cpu
    }
}

/// What MLX says about its default device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub backend: Backend,
    pub name: String,
    /// Memory the device offers models, where MLX reports it: Metal's recommended working
    /// set (what macOS lets the GPU wire), CUDA's device memory. `None` on the CPU, where host
    /// RAM is the limit.
    pub memory_bytes: Option<u64>,
}

/// The default device, asked of MLX once per process.
pub fn info() -> &'static DeviceInfo {
    static INFO: OnceLock<DeviceInfo> = OnceLock::new();
    INFO.get_or_init(detect)
}

fn detect() -> DeviceInfo {
    let gpu = Device::try_default()
        .and_then(|d| d.get_type())
        .is_ok_and(|t| matches!(t, DeviceType::Gpu));
    let backend = if !gpu {
        Backend::Cpu
    } else if ffi_flag(mlx_sys::mlx_metal_is_available) {
        Backend::Metal
    } else {
        // MLX has two GPU backends; a GPU default that is not Metal is CUDA.
        Backend::Cuda
    };
    let device = if gpu { Device::gpu() } else { Device::cpu() };
    let props = DeviceProps::of(&device);
    let memory_bytes = match backend {
        Backend::Cpu => None,
        Backend::Metal => props
            .size("max_recommended_working_set_size")
            .or_else(|| props.size("memory_size")),
        Backend::Cuda => props
            .size("total_memory")
            .or_else(|| props.size("memory_size")),
    };
    DeviceInfo {
        backend,
        name: props
            .string("device_name")
            .unwrap_or_else(|| format!("{backend:?}")),
        memory_bytes: memory_bytes.map(|b| b as u64),
    }
}

fn ffi_flag(f: unsafe extern "C" fn(*mut bool) -> i32) -> bool {
    let mut flag = false;
    // SAFETY: the function writes one bool through the pointer it is given.
    let status = unsafe { f(&mut flag) };
    status == 0 && flag
}

/// `mlx_device_info`: a key → string-or-size map, freed on drop.
struct DeviceProps(mlx_sys::mlx_device_info);

impl DeviceProps {
    fn of(device: &Device) -> Self {
        // SAFETY: `info` is created here and filled by MLX for a valid device handle; on
        // failure it stays an empty map whose lookups fail.
        unsafe {
            let mut info = mlx_sys::mlx_device_info_new();
            let raw = device_handle(device);
            mlx_sys::mlx_device_info_get(&mut info, raw);
            mlx_sys::mlx_device_free(raw);
            DeviceProps(info)
        }
    }

    fn size(&self, key: &str) -> Option<usize> {
        let key = std::ffi::CString::new(key).ok()?;
        let mut value = 0usize;
        // SAFETY: a valid info handle and NUL-terminated key; MLX writes one size_t.
        let status = unsafe { mlx_sys::mlx_device_info_get_size(&mut value, self.0, key.as_ptr()) };
        (status == 0).then_some(value)
    }

    fn string(&self, key: &str) -> Option<String> {
        let key = std::ffi::CString::new(key).ok()?;
        let mut value: *const std::os::raw::c_char = std::ptr::null();
        // SAFETY: as in `size`; the string MLX returns lives as long as the info map.
        let status =
            unsafe { mlx_sys::mlx_device_info_get_string(&mut value, self.0, key.as_ptr()) };
        if status != 0 || value.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated string owned by the still-alive info map.
        Some(
            unsafe { std::ffi::CStr::from_ptr(value) }
                .to_string_lossy()
                .into_owned(),
        )
    }
}

impl Drop for DeviceProps {
    fn drop(&mut self) {
        // SAFETY: created by mlx_device_info_new and freed once.
        unsafe { mlx_sys::mlx_device_info_free(self.0) };
    }
}

/// A fresh C handle to the same device (mlx-rs keeps its own private).
fn device_handle(device: &Device) -> mlx_sys::mlx_device {
    let kind = match device.get_type() {
        Ok(DeviceType::Gpu) => mlx_sys::mlx_device_type__MLX_GPU,
        _ => mlx_sys::mlx_device_type__MLX_CPU,
    };
    // SAFETY: creates a new device handle, freed by the caller.
    unsafe { mlx_sys::mlx_device_new_type(kind, device.get_index().unwrap_or(0)) }
}

/// The dtype activations (and unquantized weights) are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activations {
    /// The checkpoint's dtype on a GPU, float32 on the CPU.
    #[default]
    Auto,
    /// The checkpoint's dtype (bf16/f16 for nearly every published model): what a GPU runs,
    /// and what the half-precision test lane runs on the CPU.
    Checkpoint,
    /// Everything cast to float32 at load (MLX's CPU kernels are much faster in float32).
    Float32,
}

impl Activations {
    /// `Auto` settled for the device in use.
    pub fn resolve(self) -> Activations {
        match self {
            Activations::Auto if info().backend.is_gpu() => Activations::Checkpoint,
            Activations::Auto => Activations::Float32,
            other => other,
        }
    }
}

impl std::str::FromStr for Activations {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Activations::Auto),
            "checkpoint" => Ok(Activations::Checkpoint),
            "float32" | "f32" => Ok(Activations::Float32),
            other => Err(format!(
                "activations {other:?}: expected auto, checkpoint or float32"
            )),
        }
    }
}

/// The process's setting (from the config at start-up; tests set it directly). MLX's device
/// is process-wide, and so is this.
static ACTIVATIONS: AtomicU8 = AtomicU8::new(0);

pub fn set_activations(a: Activations) {
    ACTIVATIONS.store(a as u8, Ordering::Relaxed);
}

/// The activations setting in force, settled for the device.
pub fn activations() -> Activations {
    let set = match ACTIVATIONS.load(Ordering::Relaxed) {
        1 => Activations::Checkpoint,
        2 => Activations::Float32,
        _ => Activations::Auto,
    };
    set.resolve()
}

/// The float dtype every float tensor is cast to at load, or `None` to keep the checkpoint's.
pub fn compute_dtype() -> Option<Dtype> {
    match activations() {
        Activations::Float32 => Some(Dtype::Float32),
        _ => None,
    }
}

/// Prompt tokens per scheduler step when the config sets none. On the CPU, 512: attention
/// there is unfused (MLX's CPU `scaled_dot_product_attention` computes the chunk's full score
/// matrix, `heads x chunk x context` floats per layer), and a step already saturates the
/// cores at 512 rows. A GPU runs a chunk's matmuls far below its throughput at 512 rows, and
/// fewer steps mean fewer launches and fewer passes over the cached keys: 2048, as mlx-lm's
/// `prefill_step_size` — not yet measured here (no GPU on this machine); set
/// `prefill_chunk` to tune.
pub fn default_prefill_chunk(backend: Backend) -> usize {
    if backend.is_gpu() {
        2048
    } else {
        512
    }
}

/// Whether `weights = auto` may expand quantized weights: only on the CPU backend, with
/// float32 activations (the configuration whose batched matmuls BLAS serves). On a GPU the
/// expanded weights would only cost memory and bandwidth.
pub fn cpu_levers() -> bool {
    !info().backend.is_gpu() && activations() == Activations::Float32
}

/// The kernel set OpenBLAS chose at load (e.g. "SkylakeX"), where the binary links it (Linux,
/// CPU backend; engine/build.rs). OpenBLAS picks by CPU model number and falls back to
/// "Prescott" (SSE3) on CPUs it does not know, ~1.6x slower prefill on an AVX-512 Xeon here;
/// `OPENBLAS_CORETYPE`, read when the library loads, overrides it (scripts/openblas-core.sh).
pub fn openblas_core() -> Option<String> {
    #[cfg(wuwei_openblas)]
    {
        extern "C" {
            fn openblas_get_corename() -> *const std::ffi::c_char;
        }
        // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr(openblas_get_corename()) };
        Some(name.to_string_lossy().into_owned())
    }
    #[cfg(not(wuwei_openblas))]
    None
}

/// Whether OpenBLAS runs its generic fallback kernels on a CPU that has AVX2: worth a warning,
/// since setting `OPENBLAS_CORETYPE` before start-up makes every f32 matmul faster.
pub fn openblas_misdetected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        openblas_core().is_some_and(|c| c.eq_ignore_ascii_case("prescott"))
            && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_build_reports_the_cpu() {
        // CI and development run the mlx-cpu wheel: MLX's default device is the CPU.
        let i = info();
        assert_eq!(i.backend, Backend::Cpu);
        assert!(!i.name.is_empty());
        assert_eq!(i.memory_bytes, None);
        assert_eq!(Activations::Auto.resolve(), Activations::Float32);
        assert_eq!(Activations::Checkpoint.resolve(), Activations::Checkpoint);
        assert_eq!("CHECKPOINT".parse(), Ok(Activations::Checkpoint));
        assert!("fp8".parse::<Activations>().is_err());
    }
}
