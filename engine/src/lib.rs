//! Wuwei's engine.
pub mod gguf;
