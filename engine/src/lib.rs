//! Wuwei's engine.
