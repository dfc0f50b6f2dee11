//! `genq serve`: the HTTP gateway (`genq_gateway`), with the command line's settings flags.

use std::process::ExitCode;

use genq_gateway::args::ServeArgs;

use super::CommonArgs;

pub async fn run(common: &CommonArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    genq_gateway::run(common.settings(args.overrides())?, "genq serve").await?;
    Ok(ExitCode::SUCCESS)
}
