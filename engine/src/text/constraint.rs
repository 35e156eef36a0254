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
        ToolParser::Qwen3Coder => return Some(xml_calls_lark(tools, &QWEN3_CODER)),
        ToolParser::MiniMax => return Some(xml_calls_lark(tools, &MINIMAX)),
        ToolParser::Glm45 => return Some(xml_calls_lark(tools, &GLM45)),
        ToolParser::Harmony => return Some(harmony_calls_lark(tools)),
        ToolParser::None => return None,
    };
    // One object per tool: its name fixed, its arguments its schema, name first (the parser
    // announces a call once it knows the name).
    let calls: Vec<Value> = tools
        .iter()
        .map(|t| {
            let mut properties = Map::new();
            properties.insert("name".into(), json!({"const": t.name}));
            properties.insert(arguments_key.into(), declared_only(&t.parameters));
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

/// A tool's parameter schema with no arguments beyond those it declares, unless it says
/// otherwise: JSON Schema lets an object hold any other key by default, and a forced call is
/// only of use with the tool's own parameters (a small model can otherwise wander into keys
/// without end).
fn declared_only(parameters: &Value) -> Value {
    let mut schema = parameters.clone();
    if let Some(map) = schema.as_object_mut() {
        if map.contains_key("properties") && !map.contains_key("additionalProperties") {
            map.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    schema
}

/// One harmony (gpt-oss) call of `tools`: a commentary message to `functions.NAME` whose
/// body is JSON of the tool's schema, ended by `<|call|>` — the markup as the model's special
/// tokens (llguidance's `<|…|>` syntax), not as text that merely spells them.
fn harmony_calls_lark(tools: &[&ToolSpec]) -> String {
    let mut rules = Vec::new();
    let mut calls = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let schema = serde_json::to_string(&with_json_options(declared_only(&tool.parameters)))
            .expect("serializes");
        rules.push(format!(
            "t{i}: <|channel|> {} <|constrain|> \"json\" <|message|> %json{schema} <|call|>",
            lark_str(&format!("commentary to=functions.{} ", tool.name)),
        ));
        calls.push(format!("t{i}"));
    }
    format!("({})\n{}", calls.join(" | "), rules.join("\n"))
}

/// How an XML call format writes one call, as its chat template renders it and its output
/// parser ([`crate::text::output_parser`]) reads it back.
struct XmlCallFormat {
    /// Before the function's name.
    open: &'static str,
    /// After the name.
    after_name: &'static str,
    /// Before a parameter's name.
    param_open: &'static str,
    /// Between a parameter's name and its value.
    before_value: &'static str,
    /// The value's closing tag.
    value_close: &'static str,
    /// After the closing tag.
    after_value: &'static str,
    /// The other tags that end a value in the parser: a text value may not contain them.
    value_enders: &'static [&'static str],
    /// After the last parameter.
    close: &'static str,
}

const QWEN3_CODER: XmlCallFormat = XmlCallFormat {
    open: "<tool_call>\n<function=",
    after_name: ">\n",
    param_open: "<parameter=",
    before_value: ">\n",
    value_close: "</parameter>",
    after_value: "\n",
    value_enders: &["<parameter=", "</function>", "</tool_call>"],
    close: "</function>\n</tool_call>",
};

const MINIMAX: XmlCallFormat = XmlCallFormat {
    open: "<minimax:tool_call>\n<invoke name=\"",
    after_name: "\">\n",
    param_open: "<parameter name=\"",
    before_value: "\">",
    value_close: "</parameter>",
    after_value: "\n",
    value_enders: &["<parameter name=", "</invoke>", "</minimax:tool_call>"],
    close: "</invoke>\n</minimax:tool_call>",
};

const GLM45: XmlCallFormat = XmlCallFormat {
    open: "<tool_call>",
    after_name: "\n",
    param_open: "<arg_key>",
    before_value: "</arg_key>\n<arg_value>",
    value_close: "</arg_value>",
    after_value: "\n",
    value_enders: &["<arg_key>", "</tool_call>"],
    close: "</tool_call>",
};

/// One call of `tools` in an XML format: the name fixed per tool, then the tool's parameters
/// in its schema's order (the required ones always, the others optionally), each value typed
/// by its schema — JSON for numbers, booleans, objects and arrays (how the templates write
/// them and the parsers read them), one of the literals for a string enum, and for any other
/// string free text up to the closing tag that contains no tag the parser would stop at.
fn xml_calls_lark(tools: &[&ToolSpec], format: &XmlCallFormat) -> String {
    let mut rules = Vec::new();
    let mut calls = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let properties = tool.parameters.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = tool
            .parameters
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut body = vec![
            lark_str(format.open),
            lark_str(&tool.name),
            lark_str(format.after_name),
        ];
        for (j, (name, schema)) in properties.into_iter().flatten().enumerate() {
            let rule = format!("t{i}_p{j}");
            let value = match xml_text_value(schema, format) {
                // A terminal of its own: the text and the closing tag that ends it.
                Some(text) => {
                    let terminal = format!("V{i}_{j}");
                    rules.push(format!("{terminal}: {text}"));
                    format!("{terminal} {}", lark_str(format.after_value))
                }
                None => format!(
                    "{} {}",
                    xml_typed_value(schema),
                    lark_str(&format!("{}{}", format.value_close, format.after_value))
                ),
            };
            rules.push(format!(
                "{rule}: {} {} {} {value}",
                lark_str(format.param_open),
                lark_str(name),
                lark_str(format.before_value),
            ));
            body.push(if required.contains(&name.as_str()) {
                rule
            } else {
                format!("{rule}?")
            });
        }
        body.push(lark_str(format.close));
        rules.push(format!("t{i}: {}", body.join(" ")));
        calls.push(format!("t{i}"));
    }
    // The first rule is the grammar's body (see `grammar_for`); the tools' rules follow.
    format!("({})\n{}", calls.join(" | "), rules.join("\n"))
}

/// For a free-text parameter (a string without an enum, or no type), the regex of its value
/// with the closing tag: any text up to the first closing tag, containing no tag the parser
/// would take as the value's end. The tag belongs to the same lexeme, so the text cannot
/// swallow it.
fn xml_text_value(schema: &Value, format: &XmlCallFormat) -> Option<String> {
    let kind = schema.get("type").and_then(Value::as_str);
    if !matches!(kind, None | Some("string")) || schema.get("enum").is_some() {
        return None;
    }
    let close = regex_escape(format.value_close);
    let enders: Vec<String> = format
        .value_enders
        .iter()
        .map(|t| regex_escape(t))
        .collect();
    Some(format!(
        "/(?s:.*){close}/ & ~/(?s:.*{close}.+)/ & ~/(?s:.*({}).*)/",
        enders.join("|")
    ))
}

/// Any other value: one of a string enum's literals, else JSON of its schema.
fn xml_typed_value(schema: &Value) -> String {
    let choices: Option<Vec<&str>> = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.iter().map(Value::as_str).collect());
    match choices {
        Some(choices) if !choices.is_empty() => {
            let alts: Vec<String> = choices.iter().map(|c| lark_str(c)).collect();
            format!("({})", alts.join(" | "))
        }
        _ => format!(
            "%json{}",
            serde_json::to_string(&with_json_options(schema.clone())).expect("serializes")
        ),
    }
}

/// `text` as a Lark string literal (JSON's escapes are Lark's).
fn lark_str(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// `text` as a regex matching itself, inside a Lark `/…/` literal.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~/\"".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
    fn xml_call_formats_follow_the_tools_schema() {
        let Some(tok) = smollm2() else { return };
        let compiler = GrammarCompiler::new(tok.clone()).unwrap();
        let tools = vec![
            ToolSpec {
                name: "get_weather".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"enum": ["c", "f"]},
                }, "required": ["city"]}),
            },
            ToolSpec {
                name: "noop".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {}}),
            },
        ];
        // (format, calls it accepts, calls it refuses)
        let cases: [(ToolParser, &[&str], &[&str]); 3] = [
            (
                ToolParser::Qwen3Coder,
                &[
                    "<tool_call>\n<function=get_weather>\n<parameter=city>\nNew <York>\n</parameter>\n<parameter=days>\n3</parameter>\n</function>\n</tool_call>",
                    "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n<parameter=unit>\nf</parameter>\n</function>\n</tool_call>",
                    "<tool_call>\n<function=noop>\n</function>\n</tool_call>",
                ],
                &[
                    // city is required; days is an integer; no such function; a value may
                    // not hold a tag the parser would end it at.
                    "<tool_call>\n<function=get_weather>\n<parameter=days>\n3</parameter>\n</function>\n</tool_call>",
                    "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n<parameter=days>\nthree</parameter>\n</function>\n</tool_call>",
                    "<tool_call>\n<function=other>\n</function>\n</tool_call>",
                    "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo</function>\n</parameter>\n</function>\n</tool_call>",
                ],
            ),
            (
                ToolParser::MiniMax,
                &["<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Paris</parameter>\n<parameter name=\"days\">2</parameter>\n</invoke>\n</minimax:tool_call>"],
                &["<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"unit\">k</parameter>\n</invoke>\n</minimax:tool_call>"],
            ),
            (
                ToolParser::Glm45,
                &["<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n</tool_call>"],
                &["<tool_call>get_weather\n<arg_key>town</arg_key>\n<arg_value>Rome</arg_value>\n</tool_call>"],
            ),
        ];
        for (format, good, bad) in cases {
            let g = || grammar_for(None, &ToolChoice::Required, &tools, format, false).unwrap();
            for text in good {
                assert!(
                    accepts(&compiler, &tok, g(), text),
                    "{format:?} refused {text}"
                );
            }
            for text in bad {
                assert!(
                    !accepts(&compiler, &tok, g(), text),
                    "{format:?} accepted {text}"
                );
            }
            // What the grammar lets through is what the format's parser reads as the call.
            use crate::text::output_parser::{OutputParser, ParserConfig, ParserSetup};
            let mut parser = OutputParser::with_setup(ParserSetup {
                config: ParserConfig {
                    tools: true,
                    ..ParserConfig::default()
                },
                format,
                tools: tools.clone(),
            });
            let events = parser.push(good[0]);
            let events = [events, parser.finish()].concat();
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, crate::core::Event::ToolCallStart { name, .. } if name == "get_weather")),
                "{format:?}: {events:?}"
            );
        }
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
        assert!(
            grammar_for(None, &ToolChoice::Required, &tools, ToolParser::None, false).is_none()
        );
        assert!(grammar_for(None, &ToolChoice::Auto, &tools, ToolParser::Hermes, false).is_none());
    }
}
