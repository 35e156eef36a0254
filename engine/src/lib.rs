//! Wuwei's engine: models on MLX, the scheduler, and the HTTP APIs that serve them.

pub mod config;
pub mod core;
pub mod output_parser;
pub mod server;
