//! `genq get ID`, `genq wait ID [--timeout S]` and `genq cancel ID`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use genq_producer::{CancelOutcome, ResultClient, ResultError};

use super::CommonArgs;

/// Arguments of `genq get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// Job id.
    id: String,
}

/// Arguments of `genq wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Job id.
    id: String,
    /// Give up after this many seconds (default: wait as long as it takes).
    #[arg(long)]
    timeout: Option<f64>,
}

/// Arguments of `genq cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// Job id.
    id: String,
}

async fn client(common: &CommonArgs) -> anyhow::Result<ResultClient> {
    let s = common.settings(Default::default())?;
    Ok(ResultClient::connect(&s.redis.url, &s.redis.key_prefix).await?.with_ttl(s.redis.result_ttl_secs))
}

pub async fn get(common: &CommonArgs, args: GetArgs) -> anyhow::Result<ExitCode> {
    match client(common).await?.get(&args.id).await? {
        Some(r) => {
            println!("{}", serde_json::to_string(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("job {}: unknown or expired", args.id);
            Ok(ExitCode::from(2))
        }
    }
}

pub async fn wait(common: &CommonArgs, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let timeout = args.timeout.map(|s| Duration::from_secs_f64(s.max(0.0)));
    match client(common).await?.wait(&args.id, timeout).await {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ResultError::Unknown { .. }) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn cancel(common: &CommonArgs, args: CancelArgs) -> anyhow::Result<ExitCode> {
    match client(common).await?.cancel(&args.id).await {
        Ok(CancelOutcome::Requested) => {
            eprintln!("job {}: cancel requested; it ends `cancelled` at its worker's next check", args.id);
            Ok(ExitCode::SUCCESS)
        }
        Ok(CancelOutcome::AlreadyFinal(status)) => {
            eprintln!("job {}: already finished ({}); nothing to cancel", args.id, status.as_str());
            Ok(ExitCode::from(3))
        }
        Err(e @ ResultError::Unknown { .. }) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
