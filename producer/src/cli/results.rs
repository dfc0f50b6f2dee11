//! `genq get ID` and `genq wait ID [--timeout S]`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use genq_producer::ResultClient;

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

async fn client(common: &CommonArgs) -> anyhow::Result<ResultClient> {
    let s = common.settings(Default::default())?;
    Ok(ResultClient::connect(&s.redis.url, &s.redis.key_prefix).await?)
}

pub async fn get(common: &CommonArgs, args: GetArgs) -> anyhow::Result<ExitCode> {
    match client(common).await?.get(&args.id).await? {
        Some(r) => {
            println!("{}", serde_json::to_string(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("job {}: unknown, not started yet, or expired", args.id);
            Ok(ExitCode::from(2))
        }
    }
}

pub async fn wait(common: &CommonArgs, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let timeout = args.timeout.map(|s| Duration::from_secs_f64(s.max(0.0)));
    let r = client(common).await?.wait(&args.id, timeout).await?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(ExitCode::SUCCESS)
}
