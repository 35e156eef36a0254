//! The Wuwei daemon's admin API as its clients see it (docs/ADMIN_API.md): the JSON types of
//! its answers and events, and a small blocking client with the server-sent event stream.
//! The menu-bar app uses it; it links nothing of the engine.

pub mod client;
pub mod sse;
pub mod types;

#[cfg(test)]
mod typescript;

pub use client::{Client, Error, EventStream};
pub use types::*;
