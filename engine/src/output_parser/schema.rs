//! Types the XML formats' parameter values by the tool's JSON schema. Those models write every
//! value as bare text (`<parameter=n>\n5\n</parameter>`), so only the schema says whether `5`
//! is the number 5 or the string "5". The rules follow vLLM's qwen3coder and MiniMax's
//! reference parsers: type names as they spell them, integer before number before boolean
//! before object/array before string, and text that fits no allowed type stays a string, so
//! nothing the model wrote is lost.

use serde_json::{Number, Value};

use super::pyliteral;
use crate::core::ToolSpec;

/// The JSON types a schema allows, as a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Types(u8);

const STRING: u8 = 1;
const INTEGER: u8 = 2;
const NUMBER: u8 = 4;
const BOOLEAN: u8 = 8;
const OBJECT: u8 = 16;
const ARRAY: u8 = 32;
const NULL: u8 = 64;
/// A type name nobody knows: JSON of any kind, else a string.
const OTHER: u8 = 128;

impl Types {
    pub const STRING: Self = Self(STRING);
    /// What a schema without any type information allows: mlx-lm's rule, a value that reads
    /// as a JSON object or array is one, anything else a string.
    const UNTYPED: Self = Self(OBJECT | ARRAY | STRING);
    /// Any JSON value (GLM's reference parser decodes every value not declared a string).
    pub const ANY: Self = Self(OTHER);

    /// The types `schema` allows: its `type` (a name or a list), the kinds of its `enum`
    /// values, and the same of its `anyOf`/`oneOf`/`allOf` branches.
    pub fn of_schema(schema: &Value) -> Self {
        let mut bits = 0;
        collect(schema, &mut bits, 0);
        if bits == 0 {
            Self::UNTYPED
        } else {
            Self(bits)
        }
    }

    /// Only strings (or null): such a value can stream as it arrives.
    pub fn is_string(self) -> bool {
        self.0 & !NULL == STRING
    }

    pub fn allows_null(self) -> bool {
        self.0 & NULL != 0
    }
}

/// Words that mean null where a schema allows null (MiniMax's parser reads all three).
pub(super) const NULL_WORDS: [&str; 3] = ["null", "none", "nil"];

/// How a format types a parameter its tool's schema does not describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Untyped {
    /// As a string (vLLM's qwen3coder and MiniMax's parsers).
    String,
    /// As JSON when it reads as JSON, else a string (GLM's parsers).
    Json,
}

/// The types of parameter `param` of tool `tool`.
pub(super) fn param_types(tools: &[ToolSpec], tool: &str, param: &str, untyped: Untyped) -> Types {
    let schema = tools
        .iter()
        .find(|t| t.name == tool)
        .and_then(|t| t.parameters.get("properties"))
        .and_then(|props| props.get(param));
    match (schema, untyped) {
        (Some(schema), _) => Types::of_schema(schema),
        (None, Untyped::String) => Types::STRING,
        (None, Untyped::Json) => Types::ANY,
    }
}

fn collect(schema: &Value, bits: &mut u8, depth: usize) {
    // Schemas nest; a cyclic-looking or absurdly deep one stops here rather than recursing on.
    if depth > 8 {
        return;
    }
    let Value::Object(fields) = schema else {
        return;
    };
    match fields.get("type") {
        Some(Value::String(name)) => *bits |= type_bit(name),
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .for_each(|name| *bits |= type_bit(name)),
        _ => {}
    }
    if let Some(Value::Array(values)) = fields.get("enum") {
        for value in values {
            *bits |= match value {
                Value::Null => NULL,
                Value::Bool(_) => BOOLEAN,
                Value::Number(n) if n.is_f64() => NUMBER,
                Value::Number(_) => INTEGER,
                Value::String(_) => STRING,
                Value::Array(_) => ARRAY,
                Value::Object(_) => OBJECT,
            };
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = fields.get(key) {
            branches.iter().for_each(|b| collect(b, bits, depth + 1));
        }
    }
}

/// A type name as the reference parsers read it (they accept SQL- and Python-style names).
fn type_bit(name: &str) -> u8 {
    let name = name.trim().to_ascii_lowercase();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| name.starts_with(p));
    match name.as_str() {
        "string" | "str" | "text" | "varchar" | "char" | "enum" => STRING,
        "boolean" | "bool" | "binary" => BOOLEAN,
        "object" => OBJECT,
        "array" | "arr" => ARRAY,
        "null" | "none" => NULL,
        _ if starts(&["int", "uint", "long", "short", "unsigned"]) => INTEGER,
        _ if starts(&["num", "float", "double"]) => NUMBER,
        _ if starts(&["dict"]) => OBJECT,
        _ if starts(&["list"]) => ARRAY,
        _ => OTHER,
    }
}

/// The value `raw` (already trimmed) as JSON of one of `types`, the most specific that fits;
/// text that fits none is a string.
pub(super) fn convert(raw: &str, types: Types) -> Value {
    let allowed = |bit: u8| types.0 & bit != 0;
    // `null` means null wherever the schema allows more than strings (the reference parsers
    // return None for it); a plain string parameter keeps the word. Where null is allowed
    // outright, Python's `None` (how templates print it with `str()`) is null too.
    let lower = raw.to_ascii_lowercase();
    if lower == "null" && (allowed(NULL) || !types.is_string())
        || allowed(NULL) && NULL_WORDS.contains(&lower.as_str())
    {
        return Value::Null;
    }
    if allowed(INTEGER) {
        if let Some(n) = parse_integer(raw) {
            return Value::Number(n);
        }
    }
    if allowed(NUMBER) {
        if let Some(n) = parse_number(raw) {
            return Value::Number(n);
        }
    }
    if allowed(BOOLEAN) {
        match raw.to_ascii_lowercase().as_str() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    if allowed(OBJECT | ARRAY | OTHER) {
        let fits = |v: &Value| {
            (allowed(OBJECT) && v.is_object()) || (allowed(ARRAY) && v.is_array()) || allowed(OTHER)
        };
        // Templates that print values with Python's `str()` teach the model Python literals
        // (`{'a': True}`), so those are read too, as vLLM does with `ast.literal_eval`.
        let parsed = serde_json::from_str::<Value>(raw)
            .ok()
            .filter(fits)
            .or_else(|| pyliteral::parse(raw).filter(fits));
        if let Some(value) = parsed {
            return value;
        }
    }
    Value::String(raw.to_string())
}

/// An integer, also written as a float with no fraction (`3.0`).
fn parse_integer(raw: &str) -> Option<Number> {
    if let Ok(n) = raw.parse::<i64>() {
        return Some(n.into());
    }
    if let Ok(n) = raw.parse::<u64>() {
        return Some(n.into());
    }
    let f = finite(raw)?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| (f as i64).into())
}

/// A number; one with no fraction is written as an integer, as the reference parsers do.
fn parse_number(raw: &str) -> Option<Number> {
    parse_integer(raw).or_else(|| Number::from_f64(finite(raw)?))
}

fn finite(raw: &str) -> Option<f64> {
    // Rust also reads `inf` and `NaN`, which are not JSON numbers.
    let looks_numeric = raw
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'));
    raw.parse::<f64>()
        .ok()
        .filter(|f| looks_numeric && f.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn types(schema: Value) -> Types {
        Types::of_schema(&schema)
    }

    #[test]
    fn values_take_the_schema_type() {
        let int = types(json!({"type": "integer"}));
        assert_eq!(convert("5", int), json!(5));
        assert_eq!(convert("5.0", int), json!(5));
        assert_eq!(convert("5.5", int), json!("5.5"));
        let num = types(json!({"type": "number"}));
        assert_eq!(convert("2.5", num), json!(2.5));
        assert_eq!(convert("-3", num), json!(-3));
        assert_eq!(convert("1e3", num), json!(1000));
        assert_eq!(convert("inf", num), json!("inf"));
        assert_eq!(convert("many", num), json!("many"));
        let boolean = types(json!({"type": "boolean"}));
        assert_eq!(convert("true", boolean), json!(true));
        assert_eq!(convert("False", boolean), json!(false));
        assert_eq!(convert("yes", boolean), json!("yes"));
        let string = types(json!({"type": "string"}));
        assert_eq!(convert("5", string), json!("5"));
        assert_eq!(convert("null", string), json!("null"));
        assert_eq!(convert("[1]", string), json!("[1]"));
    }

    #[test]
    fn objects_and_arrays_parse_as_json_or_python() {
        let arr = types(json!({"type": "array", "items": {"type": "string"}}));
        assert_eq!(convert(r#"["a", "b"]"#, arr), json!(["a", "b"]));
        assert_eq!(convert("['a', 'b']", arr), json!(["a", "b"]));
        assert_eq!(convert(r#"{"a": 1}"#, arr), json!(r#"{"a": 1}"#));
        let obj = types(json!({"type": "object"}));
        assert_eq!(
            convert("{'k': True, 'n': None, 'x': 1.5}", obj),
            json!({"k": true, "n": null, "x": 1.5})
        );
        assert_eq!(convert("{broken", obj), json!("{broken"));
        assert_eq!(convert("null", obj), Value::Null);
    }

    #[test]
    fn unions_enums_and_missing_types() {
        let nullable = types(json!({"type": ["string", "null"]}));
        assert!(nullable.is_string() && nullable.allows_null());
        assert_eq!(convert("null", nullable), Value::Null);
        assert_eq!(convert("None", nullable), Value::Null);
        assert_eq!(
            convert("None", types(json!({"type": "string"}))),
            json!("None")
        );
        assert_eq!(convert("x", nullable), json!("x"));
        let any_of = types(json!({"anyOf": [{"type": "integer"}, {"type": "string"}]}));
        assert_eq!(convert("7", any_of), json!(7));
        assert_eq!(convert("seven", any_of), json!("seven"));
        let enum_ints = types(json!({"enum": [1, 2, 3]}));
        assert_eq!(convert("2", enum_ints), json!(2));
        // No type at all: JSON containers are read, scalars stay text.
        let untyped = types(json!({"description": "anything"}));
        assert_eq!(convert(r#"{"a": 1}"#, untyped), json!({"a": 1}));
        assert_eq!(convert("5", untyped), json!("5"));
        assert_eq!(convert("5", Types::ANY), json!(5));
        assert_eq!(convert("five", Types::ANY), json!("five"));
        // SQL-ish names, as vLLM reads them.
        assert_eq!(convert("4", types(json!({"type": "int64"}))), json!(4));
        assert_eq!(convert("4.5", types(json!({"type": "float"}))), json!(4.5));
    }

    #[test]
    fn parameters_are_found_in_the_tool_schema() {
        let tools = vec![ToolSpec {
            name: "f".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
        }];
        let int = param_types(&tools, "f", "n", Untyped::String);
        assert_eq!(convert("3", int), json!(3));
        for (tool, param) in [("f", "other"), ("g", "n")] {
            let t = param_types(&tools, tool, param, Untyped::String);
            assert_eq!(t, Types::STRING);
            assert_eq!(param_types(&tools, tool, param, Untyped::Json), Types::ANY);
        }
    }
}
