//! Link-time setup of the `wuwei` binary and tests:
//! - an rpath to the MLX wheel's `lib/`, so libmlx is found without LD_LIBRARY_PATH;
//! - on Linux with MLX's CPU backend, Debian's OpenBLAS as a direct dependency. libmlx calls
//!   `cblas_*` from the reference BLAS bundled in the wheel; a library the executable itself
//!   needs comes first in symbol lookup, so OpenBLAS serves those calls instead (measured
//!   2-10x faster f32 matmuls here). `WUWEI_OPENBLAS=0` opts out. A CUDA build of MLX does its
//!   math on the GPU, so it gets none.
//! - with MLX's CUDA backend, leave libmlx's references into the driver (`libcuda.so.1`)
//!   unresolved at link time: the driver comes with the GPU, and the machine that builds may
//!   have neither.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_SYS_MLX_DIR");
    println!("cargo:rerun-if-env-changed=WUWEI_OPENBLAS");
    println!("cargo::rustc-check-cfg=cfg(wuwei_openblas)");
    let mlx_dir = std::env::var_os("MLX_SYS_MLX_DIR").map(PathBuf::from);
    if let Some(dir) = &mlx_dir {
        let lib = dir.join("lib");
        // Resolve the .deps/mlx link so the rpath survives moving the link.
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    let cuda = mlx_dir.as_deref().is_some_and(mlx_uses_cuda);
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if linux && cuda {
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
    let wanted = std::env::var("WUWEI_OPENBLAS").as_deref() != Ok("0");
    let arch_dir = format!(
        "/usr/lib/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
    );
    if linux && wanted && !cuda && Path::new(&arch_dir).join("libopenblas.so.0").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-l:libopenblas.so.0");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        // device.rs asks OpenBLAS which kernels it chose, for the startup log.
        println!("cargo:rustc-cfg=wuwei_openblas");
    }
}

/// Whether the MLX at `dir` was built with the CUDA backend. Every wheel (CPU, CUDA) ships the
/// same MLXConfig.cmake template, with the backend's switches filled in: the CUDA build's
/// `if(ON)` guards its `find_dependency(CUDAToolkit ...)`, the CPU build's `if(OFF)`.
fn mlx_uses_cuda(dir: &Path) -> bool {
    let config = dir.join("share/cmake/MLX/MLXConfig.cmake");
    // A backend switch (setup.sh installing the other wheel) rewrites this file.
    println!("cargo:rerun-if-changed={}", config.display());
    let Ok(text) = std::fs::read_to_string(&config) else {
        return false;
    };
    let mut guard_on = false;
    for line in text.lines().map(str::trim) {
        if let Some(cond) = line
            .strip_prefix("if(")
            .or_else(|| line.strip_prefix("if ("))
        {
            guard_on = cond.trim_end_matches(')').trim() == "ON";
        } else if line.starts_with("find_dependency(CUDAToolkit") {
            return guard_on;
        }
    }
    false
}
