//! OpenAI's `response_format` as the job's wire `format`: `{"type":"text"}` (free text),
//! `{"type":"json_object"}`, `{"type":"json_schema","json_schema":{"name","schema","strict",
//! "description"}}`; and, as genq extensions, `{"type":"regex","pattern"}` and
//! `{"type":"lark","grammar"}`.

use genq_shared::OutputFormat;
use serde_json::Value;

use crate::error::ApiError;

const FIELD: &str = "response_format";

/// The wire format a request's `response_format` asks for (`None`: free text).
pub fn output_format(response_format: Option<&Value>) -> Result<Option<OutputFormat>, ApiError> {
    let Some(rf) = response_format.filter(|v| !v.is_null()) else { return Ok(None) };
    let bad = |m: &str| ApiError::invalid_value(FIELD, m);
    let fields = rf.as_object().ok_or_else(|| bad("must be an object with a `type`"))?;
    let kind = fields.get("type").and_then(Value::as_str).ok_or_else(|| bad("needs a `type`: text, json_object, json_schema, regex or lark"))?;
    let allowed: &[&str] = match kind {
        "text" | "json_object" => &["type"],
        "json_schema" => &["type", "json_schema"],
        "regex" => &["type", "pattern"],
        "lark" => &["type", "grammar"],
        other => return Err(bad(&format!("type {other:?} is not one of text, json_object, json_schema, regex, lark"))),
    };
    if let Some(extra) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(&format!("has an unknown field {extra:?} for type {kind:?}")));
    }
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad(&format!("of type {kind:?} needs `{key}` (a string)")));
    let format = match kind {
        "text" => return Ok(None),
        "json_object" => OutputFormat::JsonObject {},
        "regex" => OutputFormat::Regex { pattern: text("pattern")? },
        "lark" => OutputFormat::Lark { grammar: text("grammar")? },
        _ => json_schema(fields.get("json_schema"))?,
    };
    format.check().map_err(|e| bad(&e))?;
    Ok(Some(format))
}

/// `json_schema: {name, schema, strict, description}`: `name` is required as OpenAI requires it;
/// a missing `schema` accepts any JSON value. `strict` is accepted either way: the output always
/// follows the schema.
fn json_schema(spec: Option<&Value>) -> Result<OutputFormat, ApiError> {
    let bad = |m: &str| ApiError::invalid_value(FIELD, format!("json_schema {m}"));
    let spec = spec.and_then(Value::as_object).ok_or_else(|| bad("is required (an object with `name` and `schema`)"))?;
    if let Some(extra) = spec.keys().find(|k| !["name", "schema", "strict", "description"].contains(&k.as_str())) {
        return Err(bad(&format!("has an unknown field {extra:?}")));
    }
    let name = spec.get("name").and_then(Value::as_str).ok_or_else(|| bad("needs a `name` (a string)"))?;
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(bad("`name` must be 1..=64 characters of a-z, A-Z, 0-9, _ and -"));
    }
    if spec.get("strict").is_some_and(|s| !s.is_boolean() && !s.is_null()) {
        return Err(bad("`strict` must be a boolean"));
    }
    Ok(OutputFormat::JsonSchema { schema: spec.get("schema").cloned().unwrap_or(Value::Bool(true)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> Result<Option<OutputFormat>, String> {
        output_format(Some(&v)).map_err(|e| e.message)
    }

    #[test]
    fn openai_shapes_become_wire_formats() {
        assert_eq!(read(json!({"type": "text"})), Ok(None));
        assert_eq!(output_format(None).map_err(|e| e.message), Ok(None));
        assert_eq!(read(json!({"type": "json_object"})), Ok(Some(OutputFormat::JsonObject {})));
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            read(json!({"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": true}})),
            Ok(Some(OutputFormat::JsonSchema { schema }))
        );
        assert_eq!(read(json!({"type": "regex", "pattern": "[0-9]+"})), Ok(Some(OutputFormat::Regex { pattern: "[0-9]+".into() })));
        assert_eq!(read(json!({"type": "lark", "grammar": "start: \"a\""})), Ok(Some(OutputFormat::Lark { grammar: "start: \"a\"".into() })));
    }

    #[test]
    fn bad_shapes_name_the_field() {
        for (v, says) in [
            (json!("json"), "must be an object"),
            (json!({"type": "xml"}), "\"xml\""),
            (json!({"type": "json_schema"}), "json_schema is required"),
            (json!({"type": "json_schema", "json_schema": {"schema": {}}}), "name"),
            (json!({"type": "json_schema", "json_schema": {"name": "a b"}}), "name"),
            (json!({"type": "json_schema", "json_schema": {"name": "a", "schema": "int"}}), "schema must be"),
            (json!({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}), "strict"),
            (json!({"type": "json_object", "schema": {}}), "unknown field \"schema\""),
            (json!({"type": "regex"}), "pattern"),
        ] {
            let err = read(v.clone()).expect_err("refused");
            assert!(err.contains("response_format") && err.contains(says), "{v}: {err}");
        }
    }
}
