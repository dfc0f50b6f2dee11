//! A job's output format (wire field `format`): the generated text is constrained to a JSON
//! Schema, any JSON object, a regular expression or a Lark grammar. The worker compiles it
//! against its tokenizer; here only its shape is checked.

use serde::{Deserialize, Serialize};

/// Most bytes a `format` may take, serialized (a schema or grammar, not a document).
pub const MAX_FORMAT_BYTES: usize = 64 * 1024;

/// What the generated text must be. `{"type": "json_schema", "schema": {...}}`,
/// `{"type": "json_object"}`, `{"type": "regex", "pattern": "..."}` or
/// `{"type": "lark", "grammar": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputFormat {
    /// A JSON value valid under this JSON Schema (an object or a boolean).
    JsonSchema {
        /// The schema.
        schema: serde_json::Value,
    },
    /// Any JSON object.
    JsonObject {},
    /// Text matching this regular expression in full.
    Regex {
        /// The expression (Rust `regex` syntax, no look-around or back-references).
        pattern: String,
    },
    /// Text in the language of this Lark grammar (llguidance's dialect; `start` is the root).
    Lark {
        /// The grammar.
        grammar: String,
    },
}

impl OutputFormat {
    /// The shape rules: a schema is an object or a boolean, a pattern or grammar is not empty,
    /// and the whole stays under [`MAX_FORMAT_BYTES`]. The message names the inner field.
    pub fn check(&self) -> Result<(), String> {
        let size = serde_json::to_vec(self).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_FORMAT_BYTES {
            return Err(format!("takes {size} bytes, at most {MAX_FORMAT_BYTES} are allowed"));
        }
        match self {
            OutputFormat::JsonSchema { schema } if !(schema.is_object() || schema.is_boolean()) => {
                Err("schema must be a JSON Schema (an object or a boolean)".into())
            }
            OutputFormat::Regex { pattern } if pattern.is_empty() => Err("pattern must not be empty".into()),
            OutputFormat::Lark { grammar } if grammar.trim().is_empty() => Err("grammar must not be empty".into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<OutputFormat, String> {
        let f: OutputFormat = serde_json::from_str(json).map_err(|e| e.to_string())?;
        f.check().map(|()| f)
    }

    #[test]
    fn each_kind_reads_from_its_tag() {
        assert_eq!(parse(r#"{"type":"json_object"}"#), Ok(OutputFormat::JsonObject {}));
        assert!(matches!(parse(r#"{"type":"json_schema","schema":{"type":"integer"}}"#), Ok(OutputFormat::JsonSchema { .. })));
        assert!(matches!(parse(r#"{"type":"json_schema","schema":true}"#), Ok(OutputFormat::JsonSchema { .. })));
        assert_eq!(parse(r#"{"type":"regex","pattern":"[a-z]+"}"#), Ok(OutputFormat::Regex { pattern: "[a-z]+".into() }));
        assert!(matches!(parse(r#"{"type":"lark","grammar":"start: \"a\""}"#), Ok(OutputFormat::Lark { .. })));
    }

    #[test]
    fn bad_shapes_are_refused_naming_what_is_wrong() {
        assert!(parse(r#"{"type":"xml"}"#).is_err_and(|e| e.contains("xml")));
        assert!(parse(r#"{"type":"json_schema"}"#).is_err_and(|e| e.contains("schema")));
        assert!(parse(r#"{"type":"json_schema","schema":"int"}"#).is_err_and(|e| e.contains("schema must be")));
        assert!(parse(r#"{"type":"regex","pattern":""}"#).is_err_and(|e| e.contains("pattern")));
        assert!(parse(r#"{"type":"lark","grammar":"  "}"#).is_err_and(|e| e.contains("grammar")));
        assert!(parse(r#"{"type":"regex","pattern":"a","flags":"i"}"#).is_err_and(|e| e.contains("flags")));
        let huge = format!(r#"{{"type":"regex","pattern":"{}"}}"#, "a".repeat(MAX_FORMAT_BYTES));
        assert!(parse(&huge).is_err_and(|e| e.contains("bytes")));
    }
}
