//! Link-time setup of the `wuwei` binary and tests:
//! - an rpath to the MLX wheel's `lib/`, so libmlx is found without LD_LIBRARY_PATH;
//! - on Linux, Debian's OpenBLAS as a direct dependency. libmlx calls `cblas_*` from the
//!   reference BLAS bundled in the wheel; a library the executable itself needs comes first
//!   in symbol lookup, so OpenBLAS serves those calls instead (measured 2-10x faster f32
//!   matmuls here). `WUWEI_OPENBLAS=0` opts out.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_SYS_MLX_DIR");
    println!("cargo:rerun-if-env-changed=WUWEI_OPENBLAS");
    if let Some(dir) = std::env::var_os("MLX_SYS_MLX_DIR") {
        let lib = PathBuf::from(dir).join("lib");
        // Resolve the .deps/mlx link so the rpath survives moving the link.
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let wanted = std::env::var("WUWEI_OPENBLAS").as_deref() != Ok("0");
    let arch_dir = format!(
        "/usr/lib/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
    );
    if linux && wanted && Path::new(&arch_dir).join("libopenblas.so.0").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-l:libopenblas.so.0");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
