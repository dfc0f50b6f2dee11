//! `genq-gateway`: the HTTP gateway on its own, without the model code `genq` embeds; the same
//! flags as `genq serve`.

use std::process::ExitCode;

use clap::Parser;

use genq_gateway::args::{ServeArgs, SettingsArgs};

/// Serve genq's HTTP gateway: `POST /generate`, OpenAI-compatible `/v1/...` routes, `/v1/jobs`.
#[derive(Parser, Debug)]
#[command(name = "genq-gateway", version, after_long_help = genq_shared::settings::describe_settings())]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    genq_protocol::process::init_logs(cli.settings.log_json, "warn");
    let result = async { genq_gateway::run(cli.settings.settings(cli.serve.overrides())?, "genq-gateway").await }.await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
