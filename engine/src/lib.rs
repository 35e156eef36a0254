//! Wuwei's engine: models on MLX, the scheduler, and the HTTP APIs that serve them.

pub mod core;
