//! `genq-worker` processes started by `genq bench fleet`: the binary next to this `genq`,
//! spawned with the flags of the run and their logs in the temp dir
//! ([`genq_worker::process::WorkerProcess`] waits for them and stops them when dropped).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use genq_worker::process::WorkerProcess;

/// The `genq-worker` binary next to this `genq` (both are built into the same folder).
pub fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("GENQ_WORKER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("path of this program")?;
    let path = exe.with_file_name("genq-worker");
    anyhow::ensure!(path.exists(), "{} is missing: build it with `cargo build --release --bins` (or set GENQ_WORKER_BIN)", path.display());
    Ok(path)
}

/// Starts `genq-worker` with `args`; its log goes to `<temp>/<name>.log`.
pub fn spawn(args: &[String], name: &str) -> anyhow::Result<WorkerProcess> {
    let log = std::env::temp_dir().join(format!("{name}.log"));
    let mut command = Command::new(worker_binary()?);
    command.args(args);
    WorkerProcess::spawn(command, log.clone()).with_context(|| format!("start genq-worker (log {})", log.display()))
}
