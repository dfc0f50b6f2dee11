//! `genq serve`: the HTTP gateway. Bearer tokens come from the settings file or
//! `GENQ__GATEWAY__API_KEYS` only, never from a flag (flags show in `ps`), and are never logged.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use genq_producer::gateway::{self, Gateway};
use genq_shared::settings::Overrides;

use super::CommonArgs;

/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Arguments of `genq serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [gateway.listen; default 127.0.0.1:8080]; port 0 picks a free one.
    #[arg(long)]
    listen: Option<String>,
    /// Seconds a synchronous request waits for its job before 504 [gateway.request_timeout_secs; default 300].
    #[arg(long)]
    request_timeout: Option<u64>,
    /// Largest request body in bytes [gateway.max_body_bytes; default 1048576].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Models `GET /v1/models` looks for, comma-separated, besides the default model [gateway.models].
    #[arg(long)]
    models: Option<String>,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

pub async fn run(common: &CommonArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut o = Overrides::default();
    o.set("gateway.listen", args.listen.as_ref())
        .set("gateway.request_timeout_secs", args.request_timeout)
        .set("gateway.max_body_bytes", args.max_body_bytes)
        .set("gateway.models", args.models.as_ref());
    let settings = common.settings(o)?;
    let listen = settings.gateway.listen.clone();
    let auth = if settings.gateway.api_key_list().is_empty() { "off" } else { "bearer" };
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let gw = Gateway::new(settings).await.context("cannot register the gateway's metrics")?;
    // The one line tests and scripts read to find the port.
    eprintln!("genq serve listening on http://{addr} (auth: {auth})");
    tracing::info!(%addr, auth, "gateway listening");
    gateway::serve(listener, gw, shutdown_signal(), SHUTDOWN_GRACE).await?;
    Ok(ExitCode::SUCCESS)
}
