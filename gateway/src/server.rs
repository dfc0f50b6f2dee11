//! The router (every route, the auth, body-limit and counting layers), `/healthz`, `/metrics`,
//! and serving until a shutdown signal, with a bounded wait for requests in flight.

use std::future::Future;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::error::ApiError;
use super::state::Gateway;
use super::{auth, batches, files, generate, jobs, metrics, models, openai};

/// Every route of the gateway.
pub fn router(gw: Gateway) -> Router {
    let api = Router::new()
        .route("/generate", post(generate::generate))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{model}", get(models::retrieve))
        .route("/v1/jobs", post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/files", post(files::upload).get(files::list).layer(DefaultBodyLimit::max(gw.settings().gateway.file_max_bytes)))
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::retrieve))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route_layer(from_fn_with_state(gw.tokens().clone(), auth::require_token));
    api.route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(gw.settings().gateway.max_body_bytes))
        .layer(from_fn_with_state(gw.metrics().clone(), metrics::count_requests))
        .with_state(gw)
}

/// 200 when RabbitMQ and Redis are reachable (reconnecting if needed), else 503 saying which.
async fn healthz(State(gw): State<Gateway>) -> Response {
    let redis = gw.results().await.err();
    let amqp = gw.producer().await.err();
    let state = |e: &Option<ApiError>| e.as_ref().map(|e| e.message.clone()).unwrap_or_else(|| "ok".into());
    let status = if redis.is_none() && amqp.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "status": if status == StatusCode::OK { "ok" } else { "unavailable" }, "rabbitmq": state(&amqp), "redis": state(&redis) });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn render_metrics(State(gw): State<Gateway>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], gw.metrics().render()).into_response()
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

/// Serves on `listener` until `shutdown` resolves, then waits up to `grace` for requests in
/// flight (streams included) before returning.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let server = axum::serve(listener, router(gw)).with_graceful_shutdown(signal);
    let server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    let stopping = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r,
        () = stopping => {
            tracing::warn!(grace_secs = grace.as_secs(), "requests still in flight after the grace period; closing them");
            Ok(())
        }
    }
}

/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Listens on `gateway.listen` and serves until SIGTERM or Ctrl-C (what `genq serve` and
/// `genq-gateway` run, each passing its name as `program`). Prints one line naming the address,
/// which scripts and tests read to find a port picked with `:0`.
pub async fn run(settings: genq_shared::settings::Settings, program: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let listen = settings.gateway.listen.clone();
    let auth = if settings.gateway.api_key_list().is_empty() { "off" } else { "bearer" };
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let gw = Gateway::new(settings).await.context("cannot register the gateway's metrics")?;
    eprintln!("{program} listening on http://{addr} (auth: {auth})");
    tracing::info!(%addr, auth, "gateway listening");
    serve(listener, gw, genq_protocol::process::shutdown_signal(), SHUTDOWN_GRACE).await?;
    Ok(())
}
