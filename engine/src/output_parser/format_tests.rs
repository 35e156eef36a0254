//! Tests of the formats beyond Hermes/Llama: each on transcripts from the models' own chat
//! templates and documentation, split everywhere a detokenizer could split them.

mod glm;
mod harmony;
mod minimax;
mod qwen3_coder;
mod support;
