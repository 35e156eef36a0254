//! Wuwei's engine: models on MLX, the scheduler, and the HTTP APIs that serve them.

pub mod admin;
pub mod config;
pub mod core;
pub mod device;
pub mod embedding;
pub mod generate;
pub mod gguf;
pub mod integrity;
pub mod kv;
pub mod launch;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod mlx_ext;
pub mod model;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod text;
pub mod watcher;
