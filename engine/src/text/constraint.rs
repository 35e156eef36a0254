//! Constrained decoding with llguidance: a request's required output form (a JSON schema, any
//! JSON object, or a call of the model's tool-call syntax whose arguments follow the tool's
//! schema) becomes a grammar, and the grammar, token by token, the set of tokens the model may
//! sample next.
//!
//! [`GrammarCompiler`] is built once per model, on its first constrained request (its token
//! trie comes from the tokenizer's `tokenizer.json`, read by llguidance). Compiling a request's
//! grammar happens at admission, off the engine thread; the engine keeps each constrained
//! sequence's [`Grammar`], feeds it every token sampled and asks it for the next mask
//! ([`TokenMask`]), which the sampler applies on the device.
//!
//! JSON is written with fixed separators (`", "`, `": "`) and no free whitespace: a small model
//! left free to write whitespace between tokens can fill `max_tokens` with newlines.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Map, Value};

use crate::core::{OutputConstraint, ToolChoice, ToolSpec};
use crate::text::output_parser::ToolParser;
use crate::text::tokenizer::Tokenizer;

/// Why a constraint cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConstraintError {
    /// The request's schema (or the tools' schemas) could not be compiled: the client's fault.
    #[error("invalid schema: {0}")]
    Invalid(String),
    /// The model's tokenizer could not be read into a token trie.
    #[error("constrained decoding is unavailable for this model: {0}")]
    Unavailable(String),
}

/// The allowed tokens of one step: bit `t % 32` of word `t / 32` set when token `t` may come
/// next. Tokens past its end (the model's logits may be wider than the tokenizer) never may.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMask(pub Arc<[u32]>);

impl TokenMask {
    pub fn allows(&self, token: usize) -> bool {
        self.0
            .get(token / 32)
            .is_some_and(|w| (w >> (token % 32)) & 1 == 1)
    }
}

/// The grammar a request's output must follow, or `None` when it is free. An enforced tool
/// choice wins over an output format (the answer is a call, not text); a tool-call format this
/// module cannot write a grammar for leaves the choice to the template, as before.
pub fn grammar_for(
    constraint: Option<&OutputConstraint>,
    tool_choice: &ToolChoice,
    tools: &[ToolSpec],
    format: ToolParser,
    starts_in_reasoning: bool,
) -> Option<TopLevelGrammar> {
    let called: Vec<&ToolSpec> = match tool_choice {
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::None => Vec::new(),
    };
    // A prompt that opened the model's reasoning: close it first, then the constrained answer.
    let lead = if starts_in_reasoning {
        r#""</think>\n\n" "#
    } else {
        ""
    };
    if !called.is_empty() {
        if let Some(lark) = tool_call_lark(&called, format) {
            return Some(TopLevelGrammar::from_lark(format!("start: {lead}{lark}")));
        }
        tracing::debug!(
            ?format,
            "no grammar for this tool-call format: tool choice left to the template"
        );
    }
    let schema = match constraint? {
        OutputConstraint::JsonObject => json!({"type": "object"}),
        OutputConstraint::JsonSchema(schema) => schema.clone(),
    };
    let schema = with_json_options(schema);
    if lead.is_empty() {
        Some(TopLevelGrammar::from_json_schema(schema))
    } else {
        Some(TopLevelGrammar::from_lark(format!(
            "start: {lead}%json{}",
            serde_json::to_string(&schema).expect("a JSON value serializes")
        )))
    }
}

/// The schema with llguidance's options for how JSON is written.
fn with_json_options(schema: Value) -> Value {
    let options = json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    });
    match schema {
        Value::Object(mut map) => {
            map.entry("x-guidance").or_insert(options);
            Value::Object(map)
        }
        // `true` / `false` schemas: llguidance reads them as they are.
        other => other,
    }
}

/// The Lark body of one call of `tools` in `format` (`None`: no grammar for that format).
fn tool_call_lark(tools: &[&ToolSpec], format: ToolParser) -> Option<String> {
    let arguments_key = match format {
        ToolParser::Hermes => "arguments",
        ToolParser::Llama3 => "parameters",
        _ => return None,
    };
    // One object per tool: its name fixed, its arguments its schema, name first (the parser
    // announces a call once it knows the name).
    let calls: Vec<Value> = tools
        .iter()
        .map(|t| {
            let mut properties = Map::new();
            properties.insert("name".into(), json!({"const": t.name}));
            properties.insert(arguments_key.into(), t.parameters.clone());
            json!({
                "type": "object",
                "properties": properties,
                "required": ["name", arguments_key],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = if calls.len() == 1 {
        calls.into_iter().next().expect("one call")
    } else {
        json!({"anyOf": calls})
    };
    let schema = serde_json::to_string(&with_json_options(schema)).expect("serializes");
    Some(match format {
        ToolParser::Hermes => format!(r#""<tool_call>\n" %json{schema} "\n</tool_call>""#),
        _ => format!("%json{schema}"),
    })
}

/// The token trie of a model's tokenizer, with its tokenizer for the grammar's own tokenizing.
struct TokenizerEnvOf {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for TokenizerEnvOf {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            // Part of a character: only the trie can spell it.
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles grammars for one model's tokenizer.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self, ConstraintError> {
        let unavailable = |e: &dyn std::fmt::Display| ConstraintError::Unavailable(e.to_string());
        let text = tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| unavailable(&e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| unavailable(&e))?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| unavailable(&e))?;
        let vocab = words.len().max(tokenizer.vocab_size());
        words.resize(vocab, Vec::new());
        let eos = tokenizer.eos_token_ids();
        let Some(&first_eos) = eos.first() else {
            return Err(unavailable(&"the tokenizer names no end-of-sequence token"));
        };
        let trie =
            TokTrie::from(&TokRxInfo::new(vocab as u32, first_eos), &words).with_eos_tokens(eos);
        let env: TokEnv = Arc::new(TokenizerEnvOf { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| unavailable(&e))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh grammar state for one generation.
    pub fn compile(&self, grammar: TopLevelGrammar) -> Result<Grammar, ConstraintError> {
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ConstraintError::Invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Invalid(e));
        }
        Ok(Grammar {
            matcher: Box::new(matcher),
        })
    }
}

/// One constrained generation's grammar state.
pub struct Grammar {
    /// Boxed: the matcher is large, and requests move through channels and queues.
    matcher: Box<Matcher>,
}

impl Grammar {
    /// The tokens allowed next. An error (which the masks make unreachable) or a finished
    /// grammar allows only the end of sequence.
    pub fn mask(&mut self) -> Result<TokenMask, String> {
        let vob = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        Ok(TokenMask(vob.as_slice().into()))
    }

    /// Advances past a sampled token.
    pub fn consume(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// Whether nothing may follow: the sequence is complete.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> Option<Arc<Tokenizer>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.deps/test-models/SmolLM2-135M-Instruct");
        dir.exists()
            .then(|| Arc::new(Tokenizer::from_dir(&dir).expect("tokenizer")))
    }

    /// Feeds `text`'s tokens through `grammar`, each checked against the mask before it.
    fn accepts(
        compiler: &GrammarCompiler,
        tok: &Tokenizer,
        grammar: TopLevelGrammar,
        text: &str,
    ) -> bool {
        let mut g = compiler.compile(grammar).unwrap();
        for t in tok.encode(text, false).unwrap() {
            if !g.mask().unwrap().allows(t as usize) || g.consume(t).is_err() {
                return false;
            }
        }
        g.is_finished()
            || tok
                .eos_token_ids()
                .iter()
                .any(|&e| g.mask().unwrap().allows(e as usize))
    }

    #[test]
    fn schemas_allow_what_validates_and_nothing_else() {
        let Some(tok) = smollm2() else { return };
        let compiler = GrammarCompiler::new(tok.clone()).unwrap();
        let schema = json!({
            "type": "object",
            "properties": {"color": {"enum": ["red", "blue"]}, "n": {"type": "integer"}},
            "required": ["color", "n"],
            "additionalProperties": false,
        });
        let g = || {
            grammar_for(
                Some(&OutputConstraint::JsonSchema(schema.clone())),
                &ToolChoice::Auto,
                &[],
                ToolParser::Hermes,
                false,
            )
            .unwrap()
        };
        assert!(accepts(&compiler, &tok, g(), r#"{"color": "red", "n": 3}"#));
        assert!(!accepts(
            &compiler,
            &tok,
            g(),
            r#"{"color": "green", "n": 3}"#
        ));
        assert!(!accepts(
            &compiler,
            &tok,
            g(),
            r#"Sure! {"color": "red", "n": 3}"#
        ));
        let bad = grammar_for(
            Some(&OutputConstraint::JsonSchema(
                json!({"type": "object", "properties": {"a": {"type": "nonsense"}}}),
            )),
            &ToolChoice::Auto,
            &[],
            ToolParser::Hermes,
            false,
        )
        .unwrap();
        assert!(matches!(
            compiler.compile(bad),
            Err(ConstraintError::Invalid(_))
        ));
    }

    #[test]
    fn a_required_tool_call_is_the_models_call_syntax() {
        let Some(tok) = smollm2() else { return };
        let compiler = GrammarCompiler::new(tok.clone()).unwrap();
        let tools = vec![ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }];
        let g = || {
            grammar_for(
                None,
                &ToolChoice::Required,
                &tools,
                ToolParser::Hermes,
                false,
            )
            .unwrap()
        };
        assert!(accepts(&compiler, &tok, g(), "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"));
        assert!(!accepts(
            &compiler,
            &tok,
            g(),
            "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>"
        ));
        // Llama 3 writes the bare object, its arguments under `parameters`.
        let llama = || {
            grammar_for(
                None,
                &ToolChoice::Named("get_weather".into()),
                &tools,
                ToolParser::Llama3,
                false,
            )
            .unwrap()
        };
        assert!(accepts(
            &compiler,
            &tok,
            llama(),
            r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#
        ));
        assert!(!accepts(
            &compiler,
            &tok,
            llama(),
            r#"{"name": "get_weather", "arguments": {"city": "Oslo"}}"#
        ));
        // A prompt that opened reasoning: the grammar closes it first.
        let thinking = || {
            grammar_for(
                None,
                &ToolChoice::Required,
                &tools,
                ToolParser::Hermes,
                true,
            )
            .unwrap()
        };
        assert!(accepts(&compiler, &tok, thinking(), "</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>"));
        // A format without a grammar leaves the choice to the template.
        assert!(grammar_for(
            None,
            &ToolChoice::Required,
            &tools,
            ToolParser::Harmony,
            false
        )
        .is_none());
        assert!(grammar_for(None, &ToolChoice::Auto, &tools, ToolParser::Hermes, false).is_none());
    }
}
