//! `GET /v1/models`: the models that have live workers right now. A model is a candidate when
//! it is `producer.default_model`, listed in `gateway.models`, or has a live worker heartbeat in
//! the registry (`genq_protocol::registry`, what `genq models` reads); it is listed when its queue
//! `genq.jobs.<model>` has at least one consumer (a passive `queue.declare`, which creates
//! nothing), RabbitMQ's own word. No guessing from past traffic.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use lapin::Connection;
use serde::Serialize;
use tokio::sync::Mutex;

use genq_shared::topology;
use genq_shared::Priority;
use genq_protocol::{broker, registry};

use super::error::ApiError;
use super::state::Gateway;

/// A model with live workers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveModel {
    /// The model name (the `model` of requests).
    pub id: String,
    /// Consumers of its normal queue: roughly, its workers.
    pub workers: u32,
    /// Jobs waiting in its normal queue.
    pub queued: u32,
}

/// Looks models up on RabbitMQ over a connection of its own.
pub struct ModelProbe {
    url: String,
    /// A Tokio mutex: held across the connect `.await`.
    conn: Mutex<Option<Connection>>,
}

impl ModelProbe {
    /// A probe for the broker at `url`; connects on first use.
    pub fn new(url: String) -> Self {
        Self { url, conn: Mutex::new(None) }
    }

    /// The candidates that have at least one consumer, in the order given.
    pub async fn live(&self, candidates: &[String]) -> Result<Vec<LiveModel>, ApiError> {
        let mut slot = self.conn.lock().await;
        if !slot.as_ref().is_some_and(|c| c.status().connected()) {
            let conn = broker::connect(&self.url, "genq-gateway-models").await.map_err(|e| ApiError::unavailable("rabbitmq", e))?;
            *slot = Some(conn);
        }
        let Some(conn) = slot.as_ref() else { return Err(ApiError::internal("no broker connection")) };
        let mut live = Vec::new();
        for model in candidates {
            let queue = topology::queue_name(model, Priority::Normal);
            match broker::probe_queue(conn, &queue).await {
                Ok(Some(q)) if q.consumers > 0 => live.push(LiveModel { id: model.clone(), workers: q.consumers, queued: q.ready }),
                Ok(_) => {}
                Err(e) => {
                    *slot = None;
                    return Err(ApiError::unavailable("rabbitmq", e));
                }
            }
        }
        Ok(live)
    }
}

async fn candidates(gw: &Gateway) -> Vec<String> {
    let mut models = vec![gw.default_model().to_string()];
    let redis = &gw.settings().redis;
    let announced = match registry::live_models(&redis.url, &redis.key_prefix).await {
        Ok(live) => live.into_iter().map(|m| m.model).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "worker registry unreadable; probing the configured models only");
            Vec::new()
        }
    };
    for m in gw.settings().gateway.model_list().into_iter().chain(announced) {
        if !models.contains(&m) {
            models.push(m);
        }
    }
    models
}

fn model_object(m: &LiveModel) -> serde_json::Value {
    serde_json::json!({ "id": m.id, "object": "model", "created": 0, "owned_by": "genq", "workers": m.workers, "queued": m.queued })
}

fn json(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// `GET /v1/models`: OpenAI's model list, with `workers` and `queued` added.
pub async fn list(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let live = gw.models().live(&candidates(&gw).await).await?;
    let data: Vec<_> = live.iter().map(model_object).collect();
    Ok(json(serde_json::json!({ "object": "list", "data": data })))
}

/// `GET /v1/models/{model}`: one model, 404 unless it has live workers.
pub async fn retrieve(State(gw): State<Gateway>, Path(model): Path<String>) -> Result<Response, ApiError> {
    let live = gw.models().live(std::slice::from_ref(&model)).await?;
    live.first().map(|m| json(model_object(m))).ok_or_else(|| ApiError::model_not_found(&model))
}
