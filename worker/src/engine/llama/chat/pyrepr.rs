//! Python's `str()` and `repr()` of template values: what jinja2 prints for `{{ value }}` and
//! `value|string`.
//!
//! minijinja prints `none` and `["a"]` where jinja2 prints `None` and `['a']`; a template that
//! prints a list or an absent optional field would give the model different text. Scalars and
//! containers are covered (`None`, `True`, floats as Python's shortest repr, str with Python's
//! quote choice, lists, dicts); other objects fall back to minijinja's own text.
//!
//! Not covered: `~` concatenation, which minijinja performs with its own text (`'a' ~ none` is
//! `anone`, jinja2's `aNone`); templates concatenate strings with it.

use std::fmt::Write;

use minijinja::value::{Value, ValueKind};

/// Python's `str(value)`: strings as they are, everything else as [`repr`].
pub(super) fn str(value: &Value) -> String {
    match value.as_str() {
        Some(s) => s.to_owned(),
        None => repr(value),
    }
}

/// Python's `repr(value)`.
pub(super) fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Undefined => {}
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&number(value)),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &key);
                    out.push_str(": ");
                    let item = value.get_item(&key).unwrap_or_default();
                    write_repr(out, &item);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// An int as its digits, a float as Python's `repr(float)`.
pub(super) fn number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) => float_repr(f),
        Err(_) => value.to_string(),
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for exponents
/// -4..16, else `d.ddde±XX`; always with a fraction or exponent (`2.0`, `1e+16`).
pub(super) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` gives the shortest round-tripping digits: "-1.2345e-7", "0e0".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
            format!("{sign}0.{zeros}{digits}")
        } else {
            let point = usize::try_from(point).unwrap_or(0);
            if digits.len() <= point {
                let zeros = "0".repeat(point - digits.len());
                format!("{sign}{digits}{zeros}.0")
            } else {
                format!("{sign}{}.{}", &digits[..point], &digits[point..])
            }
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{exp_sign}{:02}", exp.abs())
    }
}

/// A str in Python's quotes: single unless it holds a `'` and no `"`.
fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            // Python escapes what `str.isprintable()` rejects; the common ones are the C0 and
            // C1 controls and the no-break/soft-hyphen/line-separator family.
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        // python3 -c 'print([1e16, 1.5e-07, 123.0, 0.1, -0.0, 1e-4, 12345678901234567.0, 5e-324])'
        let got: Vec<String> = [
            1e16,
            1.5e-7,
            123.0,
            0.1,
            -0.0,
            1e-4,
            12_345_678_901_234_567.0,
            5e-324,
        ]
        .into_iter()
        .map(float_repr)
        .collect();
        assert_eq!(
            got,
            [
                "1e+16",
                "1.5e-07",
                "123.0",
                "0.1",
                "-0.0",
                "0.0001",
                "1.2345678901234568e+16",
                "5e-324"
            ]
        );
        assert_eq!(float_repr(1234.5), "1234.5");
        assert_eq!(float_repr(0.00012), "0.00012");
    }

    #[test]
    fn containers_and_none_print_as_python_does() {
        let v = Value::from_iter([
            ("s", Value::from("it's")),
            ("q", Value::from("say \"hi\"")),
            ("n", Value::from(())),
            (
                "b",
                Value::from(vec![Value::from(true), Value::from(1), Value::from(2.5)]),
            ),
        ]);
        assert_eq!(
            repr(&v),
            r#"{'s': "it's", 'q': 'say "hi"', 'n': None, 'b': [True, 1, 2.5]}"#
        );
        assert_eq!(str(&Value::from("plain")), "plain");
        assert_eq!(repr(&Value::from("a\nb\\")), r"'a\nb\\'");
    }
}
