//! Wuwei's engine.
pub mod chat_template;
pub mod detokenizer;
pub mod stop;
pub mod tokenizer;
