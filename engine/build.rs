//! Lets the `wuwei` binary and tests find libmlx at run time without LD_LIBRARY_PATH.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_SYS_MLX_DIR");
    if let Some(dir) = std::env::var_os("MLX_SYS_MLX_DIR") {
        let lib = PathBuf::from(dir).join("lib");
        // Resolve the .deps/mlx link so the rpath survives moving the link.
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
