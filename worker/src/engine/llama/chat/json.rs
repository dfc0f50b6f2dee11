//! The `tojson` filter as transformers defines it for chat templates:
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//!
//! transformers replaces jinja2's own `tojson` (which escapes `<`, `>`, `&` and `'` for HTML and
//! sorts keys) so that tool schemas reach the model as plain JSON; minijinja's built-in filter
//! escapes like jinja2's. This module writes Python's `json.dumps` text: `", "` and `": "`
//! separators (`","` between items once indented), keys in insertion order, floats as Python's
//! repr, non-ASCII kept unless `ensure_ascii`.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

use super::pyrepr;

/// `json.dumps`' formatting arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DumpOptions {
    ensure_ascii: bool,
    /// Text repeated per nesting level, each item on its own line; `None`: one line.
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// The filter: `value | tojson`, `tojson(indent=4)`, `tojson(ensure_ascii=true)`,
/// `tojson(separators=(',', ':'))`, `tojson(sort_keys=true)`; the first three also positional.
pub(super) fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    separators: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let ensure_ascii = kwargs
        .get::<Option<Value>>("ensure_ascii")?
        .or(ensure_ascii);
    let indent = kwargs.get::<Option<Value>>("indent")?.or(indent);
    let separators = kwargs.get::<Option<Value>>("separators")?.or(separators);
    let sort_keys = kwargs.get::<Option<Value>>("sort_keys")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_integer() => {
            let n = i64::try_from(v)?;
            Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
        }
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                return Err(invalid(format!(
                    "tojson: indent must be an int or str, not {v}"
                )))
            }
        },
    };
    let (item_separator, key_separator) = match separators {
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => (item.to_string(), key.to_string()),
                _ => return Err(invalid("tojson: separators must be an (item, key) pair")),
            }
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let options = DumpOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    write_value(&mut out, value, &options, 0)?;
    Ok(Value::from(out))
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

fn write_value(
    out: &mut String,
    value: &Value,
    opts: &DumpOptions,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let text = pyrepr::number(value);
            // json.dumps spells the non-finite floats as JavaScript does.
            out.push_str(match text.as_str() {
                "nan" => "NaN",
                "inf" => "Infinity",
                "-inf" => "-Infinity",
                other => other,
            });
        }
        ValueKind::String => {
            write_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), items.len(), opts, depth, |out, i| {
                write_value(out, &items[i], opts, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_text(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, ('{', '}'), entries.len(), opts, depth, |out, i| {
                let (key, item) = &entries[i];
                write_string(out, key, opts.ensure_ascii);
                out.push_str(&opts.key_separator);
                write_value(out, item, opts, depth + 1)
            })?;
        }
        other => {
            return Err(invalid(format!(
                "tojson: object of type {other} is not JSON serializable"
            )))
        }
    }
    Ok(())
}

/// `open`, the items (each written by `item`) with separators and indentation, `close`;
/// `[]`/`{}` when empty, as Python writes them even when indenting.
fn write_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    opts: &DumpOptions,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&opts.item_separator);
        }
        newline(out, depth + 1);
        item(out, i)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A dict key as json.dumps writes it: str as is, numbers, booleans and None as JSON text.
fn key_text(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number => Ok(pyrepr::number(key)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        other => Err(invalid(format!(
            "tojson: keys must be str, int, float, bool or None, not {other}"
        ))),
    }
}

/// A JSON string as Python writes it: `\"`, `\\`, `\n`-style escapes, other controls as
/// `\u00XX`; with `ensure_ascii`, everything outside ' '..'~' as `\uXXXX` (surrogate pairs
/// above the BMP).
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
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
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(value: &Value, kwargs: &[(&str, Value)]) -> String {
        let kwargs = Kwargs::from_iter(kwargs.iter().map(|(k, v)| (*k, v.clone())));
        tojson(value, None, None, None, kwargs)
            .expect("serializable")
            .to_string()
    }

    #[test]
    fn json_is_written_as_python_json_dumps_writes_it() {
        let v = Value::from_iter([
            ("b", Value::from(vec![Value::from(1), Value::from(())])),
            ("a", Value::from("é<'>\u{1f30d}\u{1}")),
            ("e", Value::from(Vec::<Value>::new())),
        ]);
        // json.dumps({"b": [1, None], "a": "é<'>🌍\x01", "e": []}, ensure_ascii=False)
        assert_eq!(
            dumps(&v, &[]),
            r#"{"b": [1, null], "a": "é<'>🌍\u0001", "e": []}"#
        );
        assert_eq!(
            dumps(
                &v,
                &[("indent", Value::from(2)), ("sort_keys", Value::from(true))]
            ),
            "{\n  \"a\": \"é<'>🌍\\u0001\",\n  \"b\": [\n    1,\n    null\n  ],\n  \"e\": []\n}"
        );
        assert_eq!(
            dumps(&v, &[("ensure_ascii", Value::from(true))]),
            r#"{"b": [1, null], "a": "\u00e9<'>\ud83c\udf0d\u0001", "e": []}"#
        );
    }

    #[test]
    fn unserializable_values_are_an_error_not_a_panic() {
        let err = tojson(
            &Value::UNDEFINED,
            None,
            None,
            None,
            Kwargs::from_iter(std::iter::empty::<(&str, Value)>()),
        )
        .expect_err("undefined");
        assert!(err.to_string().contains("not JSON serializable"), "{err}");
    }
}
