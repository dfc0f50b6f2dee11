//! OpenAI's Files API, for batch input and output: `POST /v1/files` (multipart, `purpose` and
//! `file`), `GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content` and
//! `DELETE /v1/files/{id}`. Files live in Redis (`genq:file:{id}`, listed in `genq:files`), so
//! every gateway sees the same ones, and expire after `gateway.file_ttl_secs`.

use std::collections::HashMap;

use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::Gateway;

/// Purposes a client may upload with.
const UPLOAD_PURPOSES: [&str; 1] = ["batch"];

/// A stored file's description, OpenAI's file object.
#[derive(Debug, Clone, PartialEq)]
pub struct FileMeta {
    /// `file-<hex>`.
    pub id: String,
    /// `batch` (uploads), `batch_output` (results and errors of a batch).
    pub purpose: String,
    /// The name it was uploaded with.
    pub filename: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds at which it is deleted.
    pub expires_at: u64,
}

impl FileMeta {
    /// OpenAI's file object.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
            "expires_at": self.expires_at, "filename": self.filename, "purpose": self.purpose, "status": "processed"
        })
    }

    fn from_fields(h: &HashMap<String, String>) -> Option<FileMeta> {
        let num = |k: &str| h.get(k).and_then(|v| v.parse().ok());
        Some(FileMeta {
            id: h.get("id")?.clone(),
            purpose: h.get("purpose")?.clone(),
            filename: h.get("filename").cloned().unwrap_or_default(),
            bytes: num("bytes")?,
            created_at: num("created_at")?,
            expires_at: num("expires_at").unwrap_or(0),
        })
    }
}

/// 503 for a failed Redis command on the gateway's records.
pub(crate) fn redis_error(e: redis::RedisError) -> ApiError {
    ApiError::unavailable("redis", e)
}

/// 404 for a file that does not exist or expired.
pub fn unknown_file(id: &str) -> ApiError {
    ApiError::not_found("file_not_found", "file_id", format!("file {id:?} does not exist or expired"))
}

/// Stores `content` as a new file and lists it.
pub async fn put_file(gw: &Gateway, purpose: &str, filename: &str, content: &[u8]) -> Result<FileMeta, ApiError> {
    let now = crate::openai::now_secs();
    let ttl = gw.settings().gateway.file_ttl_secs;
    let meta = FileMeta {
        id: format!("file-{}", uuid::Uuid::new_v4().simple()),
        purpose: purpose.into(),
        filename: filename.into(),
        bytes: content.len() as u64,
        created_at: now,
        expires_at: now + ttl,
    };
    let keys = gw.keys();
    let mut conn = gw.records().await?;
    redis::pipe()
        .cmd("HSET")
        .arg(keys.file(&meta.id))
        .arg("id")
        .arg(&meta.id)
        .arg("purpose")
        .arg(&meta.purpose)
        .arg("filename")
        .arg(&meta.filename)
        .arg("bytes")
        .arg(meta.bytes)
        .arg("created_at")
        .arg(meta.created_at)
        .arg("expires_at")
        .arg(meta.expires_at)
        .arg("content")
        .arg(content)
        .ignore()
        .cmd("EXPIRE")
        .arg(keys.file(&meta.id))
        .arg(ttl)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .map_err(redis_error)?;
    // The listing is another key (another cluster slot): a separate command.
    redis::cmd("ZADD").arg(keys.files()).arg(meta.created_at).arg(&meta.id).query_async::<()>(&mut conn).await.map_err(redis_error)?;
    Ok(meta)
}

/// The description of file `id`.
pub async fn file_meta(gw: &Gateway, id: &str) -> Result<FileMeta, ApiError> {
    let mut conn = gw.records().await?;
    let fields = ["id", "purpose", "filename", "bytes", "created_at", "expires_at"];
    let values: Vec<Option<String>> = redis::cmd("HMGET").arg(gw.keys().file(id)).arg(&fields[..]).query_async(&mut conn).await.map_err(redis_error)?;
    let h: HashMap<String, String> = fields.iter().zip(values).filter_map(|(k, v)| Some((k.to_string(), v?))).collect();
    FileMeta::from_fields(&h).ok_or_else(|| unknown_file(id))
}

/// The content of file `id`.
pub async fn file_content(gw: &Gateway, id: &str) -> Result<Vec<u8>, ApiError> {
    let mut conn = gw.records().await?;
    let content: Option<Vec<u8>> = redis::cmd("HGET").arg(gw.keys().file(id)).arg("content").query_async(&mut conn).await.map_err(redis_error)?;
    content.ok_or_else(|| unknown_file(id))
}

/// `POST /v1/files`: multipart with `purpose` (`batch`) and `file`.
pub async fn upload(State(gw): State<Gateway>, mut form: Multipart) -> Result<Response, ApiError> {
    let limit = gw.settings().gateway.file_max_bytes;
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(limit)
        } else {
            ApiError::bad_body(format!("cannot read the multipart body: {}", e.body_text()))
        }
    };
    let (mut purpose, mut file) = (None, None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(bad)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                file = Some((name, field.bytes().await.map_err(bad)?));
            }
            Some(other) => return Err(ApiError::bad_field(other, "is not a field of /v1/files (purpose, file)")),
            None => return Err(ApiError::bad_body("a multipart field without a name")),
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::bad_field("purpose", "is required"))?;
    if !UPLOAD_PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid_value("purpose", format!("{purpose:?} is not supported (only \"batch\")")));
    }
    let (filename, content) = file.ok_or_else(|| ApiError::bad_field("file", "is required"))?;
    let meta = put_file(&gw, &purpose, &filename, &content).await?;
    Ok(json_response(&meta.json()))
}

/// `GET /v1/files` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFiles {
    /// Only files of this purpose.
    pub purpose: Option<String>,
}

/// `GET /v1/files`: every file that has not expired, newest first.
pub async fn list(State(gw): State<Gateway>, Query(q): Query<ListFiles>) -> Result<Response, ApiError> {
    let mut conn = gw.records().await?;
    let ids: Vec<String> = redis::cmd("ZREVRANGE").arg(gw.keys().files()).arg(0).arg(-1).query_async(&mut conn).await.map_err(redis_error)?;
    let mut data = Vec::new();
    for id in ids {
        match file_meta(&gw, &id).await {
            Ok(m) if q.purpose.as_ref().is_none_or(|p| *p == m.purpose) => data.push(m.json()),
            Ok(_) => {}
            // Expired: drop it from the listing.
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
                let _: Result<(), _> = redis::cmd("ZREM").arg(gw.keys().files()).arg(&id).query_async(&mut conn).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(&json!({ "object": "list", "data": data, "has_more": false })))
}

/// `GET /v1/files/{id}`.
pub async fn retrieve(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(json_response(&file_meta(&gw, &id).await?.json()))
}

/// `GET /v1/files/{id}/content`: the bytes as uploaded (JSON Lines for batch files).
pub async fn content(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let bytes = file_content(&gw, &id).await?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], bytes).into_response())
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let mut conn = gw.records().await?;
    let removed: u64 = redis::cmd("DEL").arg(gw.keys().file(&id)).query_async(&mut conn).await.map_err(redis_error)?;
    let _: Result<(), _> = redis::cmd("ZREM").arg(gw.keys().files()).arg(&id).query_async(&mut conn).await;
    if removed == 0 {
        return Err(unknown_file(&id));
    }
    Ok(json_response(&json!({ "id": id, "object": "file", "deleted": true })))
}

/// A JSON answer with status 200.
pub fn json_response(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}
