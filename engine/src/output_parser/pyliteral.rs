//! Python literals (`{'a': [1, 2.5, True, None]}`) read as JSON. Some chat templates print
//! argument values with Python's `str()`, so models trained on them answer in that syntax;
//! this reads the subset `ast.literal_eval` is used for in vLLM's parsers.

use serde_json::{Map, Number, Value};

/// The JSON value of a Python literal (dict, list, tuple, str, int, float, True/False/None),
/// or `None` when `text` is not exactly one of those.
pub(super) fn parse(text: &str) -> Option<Value> {
    let mut p = Parser {
        chars: text.chars().collect(),
        at: 0,
    };
    let value = p.value(0)?;
    p.skip_ws();
    (p.at == p.chars.len()).then_some(value)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > 64 {
            return None;
        }
        self.skip_ws();
        match self.peek()? {
            '{' => self.dict(depth),
            '[' => self.list(']', depth),
            '(' => self.list(')', depth),
            '\'' | '"' => self.string().map(Value::String),
            c if c == '-' || c == '+' || c == '.' || c.is_ascii_digit() => self.number(),
            _ => self.word(),
        }
    }

    fn dict(&mut self, depth: usize) -> Option<Value> {
        self.at += 1;
        let mut map = Map::new();
        loop {
            self.skip_ws();
            if self.peek()? == '}' {
                self.at += 1;
                return Some(Value::Object(map));
            }
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                // Python allows any hashable key; JSON keys are strings.
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                _ => return None,
            };
            self.skip_ws();
            if self.peek()? != ':' {
                return None;
            }
            self.at += 1;
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            if !self.separator('}')? {
                return None;
            }
        }
    }

    fn list(&mut self, close: char, depth: usize) -> Option<Value> {
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek()? == close {
                self.at += 1;
                return Some(Value::Array(items));
            }
            items.push(self.value(depth + 1)?);
            if !self.separator(close)? {
                return None;
            }
        }
    }

    /// After an item: a comma (true), or the closing bracket, left for the caller (true);
    /// anything else is not a literal (false).
    fn separator(&mut self, close: char) -> Option<bool> {
        self.skip_ws();
        match self.peek()? {
            ',' => {
                self.at += 1;
                Some(true)
            }
            c => Some(c == close),
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.at += 1;
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.at += 1;
            match c {
                c if c == quote => return Some(out),
                '\\' => {
                    let e = self.peek()?;
                    self.at += 1;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'x' => out.push(self.hex(2)?),
                        'u' => out.push(self.hex(4)?),
                        'U' => out.push(self.hex(8)?),
                        '\n' => {}
                        other => {
                            // Python keeps unknown escapes as written.
                            if !matches!(other, '\\' | '\'' | '"') {
                                out.push('\\');
                            }
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn hex(&mut self, digits: usize) -> Option<char> {
        let end = self.at + digits;
        let text: String = self.chars.get(self.at..end)?.iter().collect();
        self.at = end;
        char::from_u32(u32::from_str_radix(&text, 16).ok()?)
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'))
        {
            self.at += 1;
        }
        let text: String = self.chars[start..self.at]
            .iter()
            .filter(|c| **c != '_')
            .collect();
        if let Ok(n) = text.parse::<i64>() {
            return Some(Value::Number(n.into()));
        }
        let f: f64 = text.parse().ok()?;
        Number::from_f64(f).map(Value::Number)
    }

    fn word(&mut self) -> Option<Value> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.at += 1;
        }
        let word: String = self.chars[start..self.at].iter().collect();
        match word.as_str() {
            "True" => Some(Value::Bool(true)),
            "False" => Some(Value::Bool(false)),
            "None" => Some(Value::Null),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_literals_read_as_json() {
        assert_eq!(
            parse("{'a': [1, -2.5, True, False, None], \"b\": ('x', 'it\\'s')}"),
            Some(json!({"a": [1, -2.5, true, false, null], "b": ["x", "it's"]}))
        );
        assert_eq!(
            parse("[{'content': 'Fix bug', 'status': 'pending'},]"),
            Some(json!([{"content": "Fix bug", "status": "pending"}]))
        );
        assert_eq!(parse("{1: 'one'}"), Some(json!({"1": "one"})));
        assert_eq!(parse("'\\u00e9\\n'"), Some(json!("é\n")));
        assert_eq!(parse("  [ ]  "), Some(json!([])));
        for bad in [
            "", "{'a': }", "[1, 2", "{'a' 1}", "true", "[1] x", "print(1)", "nan",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
