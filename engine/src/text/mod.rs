//! The text pipeline: a prompt rendered (`prompt`, through the model's `chat_template`) and
//! tokenized (`tokenizer`); each step's logits sampled (`sampler`), the tokens turned back into
//! text (`detokenizer`), cut at stop strings (`stop`) and split into answer, reasoning and tool
//! calls (`output_parser`). A constrained request's grammar (`constraint`) masks what may be
//! sampled.

pub mod chat_template;
pub mod constraint;
pub mod detokenizer;
pub mod output_parser;
pub mod prompt;
pub mod sampler;
pub mod stop;
pub mod tokenizer;
