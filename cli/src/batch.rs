//! `genq batch create FILE`, `genq batch status ID`, `genq batch results ID`: OpenAI batches from
//! the command line, the same ones `/v1/batches` serves (records and files in Redis), without a
//! gateway running.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use genq_gateway::batches::{batch_status, create_batch, CreateBatch};
use genq_gateway::files::{file_content, put_file};
use genq_gateway::Gateway;

use super::CommonArgs;

/// Arguments of `genq batch`.
#[derive(Args, Debug)]
pub struct BatchArgs {
    #[command(subcommand)]
    command: BatchCommand,
}

#[derive(Subcommand, Debug)]
enum BatchCommand {
    /// Upload a JSONL file of requests (`{"custom_id","method","url","body"}` per line) and start
    /// a batch; prints the batch (its `id` is what `status` and `results` take).
    Create {
        /// The input file.
        file: String,
        /// The route every line calls: /v1/completions or /v1/chat/completions.
        #[arg(long, default_value = "/v1/completions")]
        endpoint: String,
        /// Wait until the batch is over before printing it.
        #[arg(long)]
        wait: bool,
        /// With `--wait`: give up after this many seconds (exit code 2).
        #[arg(long, default_value_t = 86_400)]
        timeout: u64,
    },
    /// Print a batch as it is now (status, request counts, file ids).
    Status {
        /// Batch id.
        id: String,
    },
    /// Print a finished batch's output file (one result line per request done); `--errors`
    /// prints its error file instead.
    Results {
        /// Batch id.
        id: String,
        /// The error file (refused, failed, expired and cancelled requests).
        #[arg(long)]
        errors: bool,
    },
}

const OVER: [&str; 4] = ["completed", "failed", "cancelled", "expired"];

pub async fn run(common: &CommonArgs, args: BatchArgs) -> anyhow::Result<ExitCode> {
    let gw = Gateway::new(common.settings(Default::default())?).await.context("cannot register metrics")?;
    let api = |e: genq_gateway::ApiError| anyhow::anyhow!(e.message);
    match args.command {
        BatchCommand::Create { file, endpoint, wait, timeout } => {
            let content = std::fs::read(&file).with_context(|| format!("cannot read {file}"))?;
            let name = std::path::Path::new(&file).file_name().and_then(|n| n.to_str()).unwrap_or("input.jsonl");
            let input = put_file(&gw, "batch", name, &content).await.map_err(api)?;
            let req = CreateBatch { input_file_id: input.id, endpoint, completion_window: "24h".into(), metadata: None };
            let (mut rec, mut counts) = create_batch(&gw, req).await.map_err(api)?;
            let until = std::time::Instant::now() + Duration::from_secs(timeout);
            while wait && !OVER.contains(&rec.status.as_str()) {
                if std::time::Instant::now() > until {
                    println!("{}", rec.json(counts));
                    eprintln!("batch {} is still {} after {timeout} s", rec.id, rec.status);
                    return Ok(ExitCode::from(2));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                (rec, counts) = batch_status(&gw, &rec.id).await.map_err(api)?;
            }
            println!("{}", rec.json(counts));
        }
        BatchCommand::Status { id } => {
            let (rec, counts) = batch_status(&gw, &id).await.map_err(api)?;
            println!("{}", rec.json(counts));
        }
        BatchCommand::Results { id, errors } => {
            let (rec, counts) = batch_status(&gw, &id).await.map_err(api)?;
            if !OVER.contains(&rec.status.as_str()) {
                eprintln!("batch {id} is {} ({} of {} requests final); no results yet", rec.status, counts.completed + counts.failed, counts.total);
                return Ok(ExitCode::from(2));
            }
            match if errors { rec.error_file_id } else { rec.output_file_id } {
                Some(file) => std::io::stdout().write_all(&file_content(&gw, &file).await.map_err(api)?)?,
                None => eprintln!("batch {id} has no {} file: no request {}", if errors { "error" } else { "output" }, if errors { "failed" } else { "completed" }),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
