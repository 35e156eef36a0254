//! Hugging Face chat templates rendered with minijinja.
//!
//! Templates on the Hub are written for Jinja2 as `transformers` configures it, so the
//! environment here copies that setup: `trim_blocks` and `lstrip_blocks`, loop controls,
//! Python string/dict methods (`.strip()`, `.items()`, ...), a `tojson` filter that prints like
//! Python's `json.dumps`, and the globals `raise_exception` and `strftime_now`. The variables a
//! template sees are the ones `apply_chat_template` passes: `messages`, `tools`, `documents`,
//! `add_generation_prompt`, the named special tokens and any extra keyword arguments.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value as Json};

use crate::tokenizer::TokenizerError;

/// Name HF gives the template used when no other one is asked for.
pub const DEFAULT_TEMPLATE: &str = "default";
/// Name of the template HF prefers when tools are passed.
pub const TOOL_USE_TEMPLATE: &str = "tool_use";

/// Message fields HF treats as the same reasoning text (`_alias_reasoning_fields`).
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// One or more named chat templates, compiled once.
pub struct ChatTemplates {
    env: Environment<'static>,
    names: Vec<String>,
    /// Each template's source, as written (the environment keeps only compiled forms).
    sources: Vec<String>,
    /// Whether the template used with tools mentions `tools` at all (SmolLM2's does not),
    /// decided once here rather than per request.
    renders_tools: bool,
}

impl std::fmt::Debug for ChatTemplates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplates")
            .field("names", &self.names)
            .finish()
    }
}

impl ChatTemplates {
    /// Reads the `chat_template` field of tokenizer_config.json: either one template string or
    /// a list of `{"name": .., "template": ..}`.
    pub fn from_config_field(field: &Json) -> Result<Self, TokenizerError> {
        let bad = |reason: String| TokenizerError::Config {
            field: "chat_template".into(),
            reason,
        };
        let templates = match field {
            Json::String(source) => vec![(DEFAULT_TEMPLATE.to_owned(), source.clone())],
            Json::Array(items) => {
                let mut templates = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    let name = item.get("name").and_then(Json::as_str);
                    let source = item.get("template").and_then(Json::as_str);
                    match (name, source) {
                        (Some(name), Some(source)) => {
                            templates.push((name.to_owned(), source.to_owned()))
                        }
                        _ => {
                            return Err(bad(format!(
                                "entry {index} needs string fields `name` and `template`"
                            )))
                        }
                    }
                }
                templates
            }
            other => {
                return Err(bad(format!(
                    "expected a string or a list of {{name, template}}, found {}",
                    json_type_name(other)
                )))
            }
        };
        Self::new(templates)
    }

    /// Compiles `(name, source)` pairs.
    pub fn new(templates: Vec<(String, String)>) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson_filter);
        env.add_filter("string", string_filter);
        env.add_test("iterable", is_iterable);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);

        let mut names = Vec::with_capacity(templates.len());
        let mut sources = Vec::with_capacity(templates.len());
        for (name, source) in templates {
            sources.push(source.clone());
            env.add_template_owned(name.clone(), rewrite_generation_tags(&source))
                .map_err(|err| TokenizerError::ChatTemplate {
                    name: name.clone(),
                    message: format!("{err:#}"),
                })?;
            names.push(name);
        }
        let mut templates = Self {
            env,
            names,
            sources,
            renders_tools: false,
        };
        templates.renders_tools = templates
            .select(true)
            .ok()
            .and_then(|name| templates.env.get_template(name).ok())
            .is_some_and(|t| t.source().contains("tools"));
        Ok(templates)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The source of the template used with tools (`with_tools`) or without.
    pub fn source(&self, with_tools: bool) -> Option<&str> {
        let name = self.select(with_tools).ok()?;
        let at = self.names.iter().position(|n| n == name)?;
        Some(&self.sources[at])
    }

    /// Whether the template used with tools renders them at all.
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// Picks the template the way `transformers` does: the only one if there is one;
    /// otherwise `tool_use` when tools are given and it exists, else `default`.
    pub fn select(&self, with_tools: bool) -> Result<&str, TokenizerError> {
        if let [only] = self.names.as_slice() {
            return Ok(only);
        }
        let has = |wanted: &str| self.names.iter().any(|name| name == wanted);
        if with_tools && has(TOOL_USE_TEMPLATE) {
            return Ok(TOOL_USE_TEMPLATE);
        }
        if has(DEFAULT_TEMPLATE) {
            return Ok(DEFAULT_TEMPLATE);
        }
        Err(TokenizerError::Config {
            field: "chat_template".into(),
            reason: format!(
                "several templates ({}) and none is named `default`",
                self.names.join(", ")
            ),
        })
    }

    /// Renders the selected template. `special_tokens` are `bos_token`, `eos_token`, ...;
    /// `extra` (template kwargs such as `enable_thinking`) override them.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        special_tokens: &Map<String, Json>,
        extra: &Map<String, Json>,
    ) -> Result<String, TokenizerError> {
        let name = self.select(tools.is_some())?;
        let template_error = |message: String| TokenizerError::ChatTemplate {
            name: name.to_owned(),
            message,
        };
        let template = self
            .env
            .get_template(name)
            .map_err(|err| template_error(format!("{err:#}")))?;

        let messages: Vec<Json> = messages.iter().map(alias_reasoning_fields).collect();
        let mut context: Vec<(String, Value)> = Vec::new();
        if let Some(effort) = effort_for_budget(extra) {
            context.push(("reasoning_effort".into(), Value::from(effort)));
        }
        for (key, value) in special_tokens.iter().chain(extra.iter()) {
            context.push((key.clone(), Value::from_serialize(value)));
        }
        context.push(("messages".into(), Value::from_serialize(&messages)));
        context.push((
            "tools".into(),
            match tools {
                Some(tools) => Value::from_serialize(tools),
                None => Value::from(()),
            },
        ));
        context.push(("documents".into(), Value::from(())));
        context.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        // Later entries win, as keyword arguments do in Python.
        let context: Value = context.into_iter().collect();

        template
            .render(context)
            .map_err(|err| template_error(format!("{err:#}")))
    }
}

/// A thinking budget (`reasoning_budget`, from Anthropic's `thinking.budget_tokens`) as the
/// `reasoning_effort` templates such as gpt-oss's read instead, when the request named no
/// effort: Claude Code's think / think hard / ultrathink budgets (4k, 10k, 32k tokens) become
/// low / medium / high.
fn effort_for_budget(extra: &Map<String, Json>) -> Option<&'static str> {
    if extra.contains_key("reasoning_effort") {
        return None;
    }
    let budget = extra.get("reasoning_budget")?.as_u64()?;
    Some(match budget {
        0..4096 => "low",
        4096..16384 => "medium",
        _ => "high",
    })
}

/// Copies reasoning text given under any of HF's names to both `thinking` and
/// `reasoning_content`, as `transformers` does before rendering, so templates reading either
/// name see it.
fn alias_reasoning_fields(message: &Json) -> Json {
    let Json::Object(fields) = message else {
        return message.clone();
    };
    let reasoning = REASONING_FIELDS
        .iter()
        .find_map(|key| fields.get(*key).filter(|value| !value.is_null()));
    let Some(reasoning) = reasoning else {
        return message.clone();
    };
    // Python: {"thinking": r, **message, "reasoning_content": r}; keys keep their first position.
    let mut aliased = Map::new();
    aliased.insert("thinking".into(), reasoning.clone());
    for (key, value) in fields {
        aliased.insert(key.clone(), value.clone());
    }
    aliased.insert("reasoning_content".into(), reasoning.clone());
    Json::Object(aliased)
}

/// HF templates may mark assistant text with `{% generation %}...{% endgeneration %}` (a
/// transformers extension for assistant masks). It renders its body unchanged, so it becomes
/// an always-true `if`, which keeps the tags' whitespace control intact.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..close];
        let (lead, body) = split_whitespace_control_prefix(inner);
        let (body, trail) = split_whitespace_control_suffix(body);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(keyword) => {
                out.push_str("{%");
                out.push_str(lead);
                out.push(' ');
                out.push_str(keyword);
                out.push(' ');
                out.push_str(trail);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

fn split_whitespace_control_prefix(inner: &str) -> (&str, &str) {
    match inner.chars().next() {
        Some(c @ ('-' | '+')) => inner.split_at(c.len_utf8()),
        _ => ("", inner),
    }
}

fn split_whitespace_control_suffix(inner: &str) -> (&str, &str) {
    match inner.chars().last() {
        Some(c @ ('-' | '+')) => inner.split_at(inner.len() - c.len_utf8()),
        _ => (inner, ""),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `datetime.now().strftime(format)`, local time.
fn strftime_now(format: String) -> Result<String, Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        )
    })?;
    Ok(out)
}

/// `iterable` as Jinja2 has it: whatever Python can iterate. minijinja iterates `none` and
/// undefined as empty, so its own test says yes to them, and Qwen3-Coder's template
/// (`tools is iterable and tools | length > 0`) then fails without tools.
fn is_iterable(value: Value) -> bool {
    use minijinja::value::ValueKind;
    matches!(
        value.kind(),
        ValueKind::Seq
            | ValueKind::Map
            | ValueKind::String
            | ValueKind::Bytes
            | ValueKind::Iterable
    )
}

/// `string` as Jinja2 has it, Python's `str()`: containers print as Python literals
/// (`{'a': True, 'b': None}`). Qwen3-Coder's template shows the model its earlier calls'
/// arguments this way, so the model writes them back so.
fn string_filter(value: Value) -> Value {
    if value.is_undefined() {
        return Value::from("");
    }
    if value.kind() == minijinja::value::ValueKind::String {
        return value;
    }
    match serde_json::to_value(&value) {
        Ok(json) => {
            let mut out = String::new();
            write_python_repr(&json, &mut out);
            Value::from(out)
        }
        Err(_) => Value::from(value.to_string()),
    }
}

/// Python's `repr` of a JSON value (`str` of a string is the string itself, handled above).
fn write_python_repr(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("None"),
        Json::Bool(true) => out.push_str("True"),
        Json::Bool(false) => out.push_str("False"),
        Json::Number(number) => write_python_number(number, out),
        Json::String(text) => write_python_str_repr(text, out),
        Json::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_python_repr(item, out);
            }
            out.push(']');
        }
        Json::Object(fields) => {
            out.push('{');
            for (index, (key, item)) in fields.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_python_str_repr(key, out);
                out.push_str(": ");
                write_python_repr(item, out);
            }
            out.push('}');
        }
    }
}

/// Python's `repr` of a string: single quotes unless only double quotes avoid escaping.
fn write_python_str_repr(text: &str, out: &mut String) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            // Python escapes what it does not consider printable.
            c if c.is_control() || (c.is_whitespace() && c != ' ') || c == '\u{feff}' => {
                let code = c as u32;
                if code < 0x100 {
                    out.push_str(&format!("\\x{code:02x}"));
                } else if code < 0x10000 {
                    out.push_str(&format!("\\u{code:04x}"));
                } else {
                    out.push_str(&format!("\\U{code:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, with no HTML escaping.
fn tojson_filter(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            if let Some(text) = v.as_str() {
                Some(text.to_owned())
            } else if let Some(n) = v.as_i64() {
                Some(" ".repeat(n.max(0) as usize))
            } else {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        }
    };
    let (item_sep, key_sep) = match separators {
        Some(pair) if pair.len() == 2 => (pair[0].clone(), pair[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ))
        }
        // Python's defaults depend on whether an indent is given.
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let json = serde_json::to_value(&value).map_err(|err| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: value is not JSON: {err}"),
        )
    })?;
    let style = PyJsonStyle {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Formatting options of Python's `json.dumps`.
pub struct PyJsonStyle {
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub ensure_ascii: bool,
    pub sort_keys: bool,
}

impl PyJsonStyle {
    /// Python's `json.dumps(value, ensure_ascii=False)` defaults.
    pub fn python_default() -> Self {
        Self {
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            ensure_ascii: false,
            sort_keys: false,
        }
    }

    pub fn dumps(&self, value: &Json) -> String {
        let mut out = String::new();
        self.write(value, 0, &mut out);
        out
    }

    fn newline(&self, level: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn write(&self, value: &Json, level: usize, out: &mut String) {
        match value {
            Json::Null => out.push_str("null"),
            Json::Bool(true) => out.push_str("true"),
            Json::Bool(false) => out.push_str("false"),
            Json::Number(number) => write_python_number(number, out),
            Json::String(text) => write_python_string(text, self.ensure_ascii, out),
            Json::Array(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            Json::Object(fields) => {
                if fields.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Json)> = fields.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (index, (key, item)) in entries.into_iter().enumerate() {
                    if index > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    write_python_string(key, self.ensure_ascii, out);
                    out.push_str(&self.key_sep);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
        }
    }
}

/// Integers as is; floats as Python's `repr` writes them (`1.0`, `1e+20`, `1e-07`).
fn write_python_number(number: &serde_json::Number, out: &mut String) {
    if let Some(value) = number.as_i64() {
        out.push_str(&value.to_string());
        return;
    }
    if let Some(value) = number.as_u64() {
        out.push_str(&value.to_string());
        return;
    }
    let Some(value) = number.as_f64() else {
        out.push_str(&number.to_string());
        return;
    };
    if value.is_nan() {
        out.push_str("NaN");
        return;
    }
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Python's repr switches to exponent form for exponents below -4 or from 16 on.
    let exponent = value.abs().log10().floor();
    if value != 0.0 && !(-4.0..16.0).contains(&exponent) {
        let formatted = format!("{value:e}"); // shortest digits, e.g. "1e20", "1.5e-7"
        let (mantissa, exp) = formatted.split_once('e').unwrap_or((&formatted, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        out.push_str(&format!("{mantissa}e{sign}{:02}", exp.abs()));
    } else {
        // Debug gives the shortest round-trip digits and keeps a ".0" on whole numbers.
        out.push_str(&format!("{value:?}"));
    }
}

/// A JSON string as Python's encoder writes it.
fn write_python_string(text: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_type_name(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_plain_blocks() {
        let source = "a{%- generation -%}b{% endgeneration %}c{% if x %}d{% endif %}";
        assert_eq!(
            rewrite_generation_tags(source),
            "a{%- if true -%}b{% endif %}c{% if x %}d{% endif %}"
        );
    }

    #[test]
    fn thinking_budget_sets_the_reasoning_effort() {
        let t = ChatTemplates::new(vec![(
            "default".into(),
            "{{ reasoning_effort | default('unset') }}".into(),
        )])
        .unwrap();
        let render = |extra: serde_json::Value| {
            let extra: Map<String, Json> = serde_json::from_value(extra).unwrap();
            t.render(&[], None, false, &Map::new(), &extra).unwrap()
        };
        assert_eq!(render(serde_json::json!({})), "unset");
        assert_eq!(render(serde_json::json!({"reasoning_budget": 1024})), "low");
        assert_eq!(
            render(serde_json::json!({"reasoning_budget": 10000})),
            "medium"
        );
        assert_eq!(
            render(serde_json::json!({"reasoning_budget": 31999})),
            "high"
        );
        // An effort the request names wins.
        let named = serde_json::json!({"reasoning_budget": 31999, "reasoning_effort": "low"});
        assert_eq!(render(named), "low");
    }

    #[test]
    fn string_filter_is_python_str() {
        let t = ChatTemplates::new(vec![(
            "default".into(),
            "{{ v | string }}|{{ s | string }}|{{ n | string }}|{{ missing | string }}".into(),
        )])
        .unwrap();
        let extra: Map<String, Json> = serde_json::from_value(serde_json::json!({
            "v": {"a": [true, null, 1.5, "it's", "q\"x", "tab\tz"]}, "s": "plain", "n": null
        }))
        .unwrap();
        let out = t.render(&[], None, false, &Map::new(), &extra).unwrap();
        assert_eq!(
            out,
            r#"{'a': [True, None, 1.5, "it's", 'q"x', 'tab\tz']}|plain|None|"#
        );
    }

    #[test]
    fn python_float_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e20, "1e+20"),
            (1.5e-7, "1.5e-07"),
            (123.25, "123.25"),
        ];
        for (value, expected) in cases {
            let mut out = String::new();
            write_python_number(&serde_json::Number::from_f64(value).unwrap(), &mut out);
            assert_eq!(out, expected);
        }
    }
}
