//! Reading request bodies: bytes (within the body limit) parsed as JSON into a typed request,
//! with errors that name the field. Shapes shared by several routes (`stop`, chat `content`)
//! live here too.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;

/// The body, or 413 when it is over `limit` bytes.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(limit)
        } else {
            ApiError::bad_body(format!("cannot read the request body: {}", rejection.body_text()))
        }
    })
}

/// Parses `bytes` as `T`: 400 naming the field for a wrong type or an unknown field, 400 for a
/// body that is not JSON at all.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    naming_the_field(serde_path_to_error::deserialize(de))
}

/// A deserialization error as a 400 naming the field at fault.
fn naming_the_field<T>(parsed: Result<T, serde_path_to_error::Error<serde_json::Error>>) -> Result<T, ApiError> {
    parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_body(format!("the body is not valid JSON: {inner}"));
        }
        let text = inner.to_string();
        // serde names an unknown or missing field in its message, not in the path.
        let named = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|lead| text.split_once(lead).and_then(|(_, rest)| rest.split_once('`')).map(|(f, _)| f.to_string()));
        // The path ends at an unknown field, but stops at the parent of a missing one.
        let field = match (named, path.as_str()) {
            (Some(f), ".") => f,
            (Some(f), p) if p == f || p.ends_with(&format!(".{f}")) => p.to_string(),
            (Some(f), p) => format!("{p}.{f}"),
            (None, p) => p.to_string(),
        };
        if field == "." || field.is_empty() {
            ApiError::bad_body(format!("the body is not the expected JSON object: {text}"))
        } else {
            let message = text.split(" at line ").next().unwrap_or(&text).to_string();
            ApiError::bad_field(&field, format!("is wrong: {message}"))
        }
    })
}

/// OpenAI's `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// `"stop": "\n"`.
    One(String),
    /// `"stop": ["\n", "."]`.
    Many(Vec<String>),
}

impl StopField {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        text: String,
        #[serde(default)]
        top_p: Option<f64>,
    }

    #[test]
    fn a_field_of_the_wrong_type_is_400_naming_it() {
        let e = parse_json::<Req>(br#"{"text":"hi","top_p":"high"}"#).expect_err("wrong type");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("top_p"), "{e}");
    }

    #[test]
    fn an_unknown_or_missing_field_is_400_naming_it() {
        let e = parse_json::<Req>(br#"{"text":"hi","temprature":1}"#).expect_err("typo");
        assert_eq!(e.param.as_deref(), Some("temprature"), "{e}");
        let e = parse_json::<Req>(br#"{"top_p":1}"#).expect_err("missing");
        assert_eq!(e.param.as_deref(), Some("text"), "{e}");
    }

    #[test]
    fn a_body_that_is_not_json_is_400_without_a_field() {
        let e = parse_json::<Req>(b"text=hi").expect_err("not json");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param, None);
        assert_eq!(e.code, Some("invalid_json"));
    }

    #[test]
    fn stop_is_a_string_or_a_list() {
        let one: StopField = serde_json::from_str(r#""\n""#).expect("string");
        let many: StopField = serde_json::from_str(r#"["a","b"]"#).expect("list");
        assert_eq!(one.into_vec(), vec!["\n".to_string()]);
        assert_eq!(many.into_vec().len(), 2);
    }
}
