//! Streaming answers: a task follows a job's Redis stream (`XREAD BLOCK` on
//! `genq:job:{id}:stream`, where the worker appends `text` chunks and then an `end` entry) and
//! hands [`StreamItem`]s to the response, which renders them as Server-Sent Events and ends with
//! `data: [DONE]`. When the client goes away the response (and its receiver) is dropped, the
//! follower's next send fails, and its [`CancelOnDrop`] cancels the job.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use redis::streams::StreamReadReply;
use tokio::sync::mpsc;

use genq_shared::keys::{STREAM_END_FIELD, STREAM_TEXT_FIELD};
use genq_shared::JobResult;

use super::error::ApiError;
use super::jobs::CancelOnDrop;
use super::state::Gateway;

/// What the follower reports, in order: text chunks, then one `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// Newly generated text.
    Text(String),
    /// The job is done; its final record (finish reason, token counts).
    Done(Box<JobResult>),
    /// The job failed, or following it did; nothing comes after this.
    Error(ApiError),
}

/// Items buffered between the follower and the response: a slow client slows the follower,
/// never the worker (the chunks wait in Redis).
const ITEM_BUFFER: usize = 64;
/// Longest `XREAD BLOCK`; between blocks the follower checks the job's status and whether the
/// client is still there.
const POLL: Duration = Duration::from_millis(1000);
/// Stream entries read per `XREAD`.
const READ_COUNT: usize = 256;
/// How often an idle stream sends a comment, which also finds out that a client has gone.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Starts following job `id`; `guard` cancels it unless the job ends while followed.
pub fn follow(gw: Gateway, id: String, guard: CancelOnDrop) -> mpsc::Receiver<StreamItem> {
    let (tx, rx) = mpsc::channel(ITEM_BUFFER);
    tokio::spawn(async move {
        if let Err(e) = follow_job(&gw, &id, guard, &tx).await {
            let _ = tx.send(StreamItem::Error(e)).await;
        }
    });
    rx
}

/// Text from one `XREAD` reply, and whether it held the end marker.
fn entries(reply: Option<StreamReadReply>, last: &mut String) -> (Vec<String>, bool) {
    let mut texts = Vec::new();
    let mut ended = false;
    for key in reply.map(|r| r.keys).unwrap_or_default() {
        for entry in key.ids {
            if let Some(text) = entry.get::<String>(STREAM_TEXT_FIELD) {
                texts.push(text);
            }
            ended |= entry.map.contains_key(STREAM_END_FIELD);
            *last = entry.id;
        }
    }
    (texts, ended)
}

async fn follow_job(gw: &Gateway, id: &str, guard: CancelOnDrop, tx: &mpsc::Sender<StreamItem>) -> Result<(), ApiError> {
    let results = gw.results().await?;
    let mut conn = gw.blocking_redis().await?;
    let key = gw.keys().stream(id);
    let timeout = gw.request_timeout();
    let deadline = Instant::now() + timeout;
    let mut last = "0-0".to_string();
    let mut sent = String::new();
    loop {
        if tx.is_closed() {
            return Ok(()); // the client is gone: `guard` cancels the job
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ApiError::timeout(id, timeout.as_secs()));
        }
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(left.min(POLL).as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::unavailable("redis", e))?;
        let quiet = reply.is_none();
        let (texts, ended) = entries(reply, &mut last);
        for text in texts {
            sent.push_str(&text);
            if tx.send(StreamItem::Text(text)).await.is_err() {
                return Ok(());
            }
        }
        if !(ended || quiet) {
            continue;
        }
        // The end marker, or a quiet spell: is the job final? (A job that fails before it
        // starts, e.g. on a rule the worker checks, may end without an end marker.)
        let result = match results.get(id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(ApiError::unknown_job(id)),
            Err(e) => {
                gw.redis_failed(&e).await;
                return Err(ApiError::from_result(&e));
            }
        };
        if !result.status.is_some_and(|s| s.is_final()) {
            continue;
        }
        guard.disarm();
        // The stored text is the truth: send whatever the chunks did not carry.
        match result.text.as_deref().map(|full| full.strip_prefix(sent.as_str())) {
            Some(Some(rest)) if !rest.is_empty() => {
                let _ = tx.send(StreamItem::Text(rest.to_string())).await;
            }
            Some(None) => tracing::warn!(job = %id, "streamed chunks are not a prefix of the final text"),
            _ => {}
        }
        let item = match ApiError::from_final(&result, crate::openai::openai_names) {
            None => StreamItem::Done(Box::new(result)),
            Some(e) => StreamItem::Error(e),
        };
        let _ = tx.send(item).await;
        return Ok(());
    }
}

/// An SSE response: each item rendered to events by `render`, then `data: [DONE]`.
pub fn respond<F>(items: mpsc::Receiver<StreamItem>, render: F) -> Response
where
    F: FnMut(StreamItem) -> Vec<Event> + Send + 'static,
{
    let events = futures::stream::unfold((items, render, false), |(mut items, mut render, finished)| async move {
        if finished {
            return None;
        }
        match items.recv().await {
            Some(item) => Some((futures::stream::iter(render(item)), (items, render, false))),
            None => Some((futures::stream::iter(vec![Event::default().data("[DONE]")]), (items, render, true))),
        }
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// An event whose data is `value` as JSON.
pub fn json_event(value: &serde_json::Value) -> Event {
    Event::default().data(value.to_string())
}
