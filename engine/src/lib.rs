//! Wuwei's engine: models on MLX, the scheduler, and the HTTP APIs that serve them.

pub mod config;
pub mod core;
pub mod gguf;
pub mod kv_cache;
pub mod mlx_ext;
pub mod model;
pub mod output_parser;
pub mod sampler;
