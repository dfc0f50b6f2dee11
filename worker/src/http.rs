//! The worker's HTTP listener: `/metrics` (Prometheus text format), `/livez` (the process and its
//! engine thread run), `/readyz` (ready for jobs: 503 naming why not), and `/healthz` (the same
//! as `/livez`, for older probes).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::WorkerMetrics;

async fn metrics(State(m): State<WorkerMetrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

async fn livez(State(m): State<WorkerMetrics>) -> impl IntoResponse {
    if m.health.live() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the engine thread stopped\n".to_string())
    }
}

async fn readyz(State(m): State<WorkerMetrics>) -> impl IntoResponse {
    match m.health.not_ready() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: &str,
    metrics_state: WorkerMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/healthz", get(livez))
        .route("/readyz", get(readyz))
        .with_state(metrics_state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(local)
}
