//! Request values the way adnanh/webhook sees them: a JSON tree whose numbers keep the text the
//! sender wrote (Go decodes with `UseNumber`, so `10.50` reaches the program as `10.50`, never
//! `10.5`), dotted-path lookups (`commits.0.id`), and Go's `json.Marshal` output for
//! `entire-payload` and nested values (sorted keys, `<`, `>`, `&` escaped).
//!
//! serde_json cannot keep number text without its `arbitrary_precision` feature, which would
//! change number handling for the whole crate (it breaks `#[serde(flatten)]` of numbers used by
//! the admin API), so this module has its own small parser.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object; keys sorted as Go's encoder writes them.
    Object(Object),
}

/// A JSON object.
pub type Object = BTreeMap<String, Value>;

/// Why a lookup found nothing. adnanh tells the two apart: a missing node is tolerated inside an
/// `or` rule, "no parameters" (walking into a `null`) is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lookup {
    /// The path is not in the request.
    #[error("parameter node not found: {0}")]
    NotFound(String),
    /// The path runs into a `null`.
    #[error("no parameters")]
    NoParameters,
}

/// Deepest nesting accepted; deeper documents are refused rather than risking the stack.
const MAX_DEPTH: usize = 512;

impl Value {
    /// The value as a program receives it: strings as they are, numbers as written, `null` as Go
    /// prints it (`<nil>`), arrays and objects as JSON.
    pub fn to_arg(&self) -> String {
        match self {
            Value::Null => "<nil>".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.clone(),
            Value::String(s) => s.clone(),
            Value::Array(_) | Value::Object(_) => self.to_json(),
        }
    }

    /// Go's `json.Marshal` of this value.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(n),
            Value::String(s) => write_json_string(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_json(out);
                }
                out.push(']');
            }
            Value::Object(map) => write_json_object(map, out),
        }
    }
}

/// Go's `json.Marshal` of an object.
pub fn object_to_json(map: &Object) -> String {
    let mut out = String::new();
    write_json_object(map, &mut out);
    out
}

fn write_json_object(map: &Object, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(k, out);
        out.push(':');
        v.write_json(out);
    }
    out.push('}');
}

/// A JSON string as Go writes it: HTML-sensitive characters and line separators escaped.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Walk a dotted path (`a.b.0.c`) the way adnanh's `GetParameter` does: a key that itself
/// contains dots wins over the path split; array steps are decimal indices.
pub fn get<'a>(path: &str, value: &'a Value) -> Result<&'a Value, Lookup> {
    let not_found = || Lookup::NotFound(path.to_string());
    match value {
        Value::Array(items) if !items.is_empty() => {
            let (first, rest) = match path.split_once('.') {
                Some((f, r)) => (f, Some(r)),
                None => (path, None),
            };
            let index: usize = first.parse().map_err(|_| not_found())?;
            let item = items.get(index).ok_or_else(not_found)?;
            match rest {
                Some(rest) => get(rest, item),
                None => Ok(item),
            }
        }
        Value::Object(map) => get_in_object(path, map),
        Value::Null => Err(Lookup::NoParameters),
        _ => Err(not_found()),
    }
}

/// [`get`] starting at an object (payload, headers, query).
pub fn get_in_object<'a>(path: &str, map: &'a Object) -> Result<&'a Value, Lookup> {
    if let Some(v) = map.get(path) {
        return Ok(v);
    }
    match path.split_once('.') {
        Some((first, rest)) => match map.get(first) {
            Some(v) => get(rest, v),
            None => Err(Lookup::NotFound(path.to_string())),
        },
        None => Err(Lookup::NotFound(path.to_string())),
    }
}

/// Replace the value at a dotted path, if it exists (for `parse-parameters-as-json`). Returns
/// whether something was replaced.
pub fn replace_in_object(path: &str, map: &mut Object, new: Value) -> bool {
    if let Some(slot) = map.get_mut(path) {
        *slot = new;
        return true;
    }
    let Some((first, rest)) = path.split_once('.') else {
        return false;
    };
    match map.get_mut(first) {
        Some(Value::Object(inner)) => replace_in_object(rest, inner, new),
        Some(Value::Array(items)) => replace_in_array(rest, items, new),
        _ => false,
    }
}

fn replace_in_array(path: &str, items: &mut [Value], new: Value) -> bool {
    let (first, rest) = match path.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (path, None),
    };
    let Some(item) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) else {
        return false;
    };
    match (rest, item) {
        (None, slot) => {
            *slot = new;
            true
        }
        (Some(rest), Value::Object(inner)) => replace_in_object(rest, inner, new),
        (Some(rest), Value::Array(inner)) => replace_in_array(rest, inner, new),
        _ => false,
    }
}

/// A JSON text that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at byte {offset}")]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub offset: usize,
}

/// Parse the first JSON value of `text`; whatever follows it is ignored, as Go's streaming
/// decoder does. Invalid UTF-8 inside strings becomes U+FFFD, as in Go.
pub fn parse(text: &[u8]) -> Result<Value, ParseError> {
    let mut p = Parser { s: text, i: 0 };
    p.skip_ws();
    p.value(0)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err<T>(&self, message: &str) -> Result<T, ParseError> {
        Err(ParseError {
            message: message.to_string(),
            offset: self.i,
        })
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, ParseError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("invalid literal")
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        match self.s.get(self.i) {
            None => self.err("unexpected end of JSON input"),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("invalid character looking for beginning of value"),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.i += 1;
        let mut map = Object::new();
        self.skip_ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_ws();
            if self.s.get(self.i) != Some(&b'"') {
                return self.err("expected a string key");
            }
            let key = self.string()?;
            self.skip_ws();
            if self.s.get(self.i) != Some(&b':') {
                return self.err("expected `:` after object key");
            }
            self.i += 1;
            self.skip_ws();
            let v = self.value(depth + 1)?;
            // Duplicate keys: the last one wins, as in Go.
            map.insert(key, v);
            self.skip_ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                _ => return self.err("expected `,` or `}` in object"),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.i += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                _ => return self.err("expected `,` or `]` in array"),
            }
        }
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while let Some(b'0'..=b'9') = p.s.get(p.i) {
                p.i += 1;
            }
            p.i - from
        };
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return self.err("invalid number"),
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return self.err("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return self.err("invalid number");
            }
        }
        // Only ASCII was consumed.
        Ok(Value::Number(
            String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
        ))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let Some(h) = self.s.get(self.i..self.i + 4) else {
            return self.err("truncated \\u escape");
        };
        let text = std::str::from_utf8(h).ok();
        match text.and_then(|t| u32::from_str_radix(t, 16).ok()) {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("invalid \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.i += 1;
        let mut raw: Vec<u8> = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            match b {
                b'"' => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&raw).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated string");
                    };
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi)
                                && self.s.get(self.i..self.i + 2) == Some(b"\\u")
                            {
                                let save = self.i;
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                    char::from_u32(cp).unwrap_or('\u{FFFD}')
                                } else {
                                    self.i = save;
                                    '\u{FFFD}'
                                }
                            } else {
                                char::from_u32(hi).unwrap_or('\u{FFFD}')
                            }
                        }
                        _ => return self.err("invalid escape in string"),
                    };
                    let mut buf = [0u8; 4];
                    raw.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return self.err("control character in string"),
                _ => {
                    raw.push(b);
                    self.i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> Object {
        match parse(text.as_bytes()).unwrap() {
            Value::Object(m) => m,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn numbers_keep_their_text() {
        let m = obj(r#"{"a": 10.50, "b": 1e3, "c": -0, "d": 12345678901234567890123}"#);
        assert_eq!(m["a"].to_arg(), "10.50");
        assert_eq!(m["b"].to_arg(), "1e3");
        assert_eq!(m["c"].to_arg(), "-0");
        assert_eq!(m["d"].to_arg(), "12345678901234567890123");
    }

    #[test]
    fn scalars_print_as_go_prints_them() {
        let m = obj(r#"{"t": true, "n": null, "s": "x y"}"#);
        assert_eq!(m["t"].to_arg(), "true");
        assert_eq!(m["n"].to_arg(), "<nil>");
        assert_eq!(m["s"].to_arg(), "x y");
    }

    #[test]
    fn marshal_sorts_keys_and_escapes_html() {
        let m = obj(r#"{"b": [1, "<a&b>"], "a": {"z": null, "y": "\u2028\n"}}"#);
        assert_eq!(
            object_to_json(&m),
            r#"{"a":{"y":"\u2028\n","z":null},"b":[1,"\u003ca\u0026b\u003e"]}"#
        );
    }

    #[test]
    fn dotted_paths_and_indices() {
        let m = obj(r#"{"commits": [{"id": "abc"}, {"id": "def"}], "a.b": 1, "a": {"b": 2}, "n": null}"#);
        assert_eq!(get_in_object("commits.1.id", &m).unwrap().to_arg(), "def");
        assert_eq!(
            get_in_object("commits.0", &m).unwrap().to_arg(),
            r#"{"id":"abc"}"#
        );
        // A literal key with a dot wins over the path.
        assert_eq!(get_in_object("a.b", &m).unwrap().to_arg(), "1");
        assert_eq!(
            get_in_object("commits.5.id", &m),
            Err(Lookup::NotFound("5.id".into()))
        );
        assert_eq!(
            get_in_object("missing", &m),
            Err(Lookup::NotFound("missing".into()))
        );
        assert_eq!(get_in_object("n.x", &m), Err(Lookup::NoParameters));
    }

    #[test]
    fn replace_walks_the_same_paths() {
        let mut m = obj(r#"{"a": {"b": "x"}, "l": [{"c": "y"}]}"#);
        assert!(replace_in_object("a.b", &mut m, Value::Bool(true)));
        assert!(replace_in_object("l.0.c", &mut m, Value::Null));
        assert!(!replace_in_object("a.zz", &mut m, Value::Null));
        assert_eq!(object_to_json(&m), r#"{"a":{"b":true},"l":[{"c":null}]}"#);
    }

    #[test]
    fn strings_escapes_and_surrogates() {
        let m = obj(r#"{"s": "\ud83d\ude00 \u00e9 \/ \ud800x"}"#);
        assert_eq!(m["s"].to_arg(), "😀 é / \u{FFFD}x");
    }

    #[test]
    fn first_value_only_and_errors() {
        assert_eq!(parse(b"{} trailing").unwrap(), Value::Object(Object::new()));
        assert!(parse(b"{\"a\":}").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"[1,]").is_err());
        let deep = "[".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
