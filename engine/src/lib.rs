//! Wuwei's engine: models on MLX, the scheduler, and the HTTP APIs that serve them.

pub mod admin;
pub mod chat_template;
pub mod config;
pub mod core;
pub mod detokenizer;
pub mod device;
pub mod generate;
pub mod gguf;
pub mod integrity;
pub mod kv;
pub mod kv_cache;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod mlx_ext;
pub mod model;
pub mod output_parser;
pub mod prompt;
pub mod registry;
pub mod sampler;
pub mod scheduler;
pub mod server;
pub mod slot_cache;
pub mod stop;
pub mod tokenizer;
pub mod watcher;
