//! `genq-worker` processes started by `genq bench fleet`: spawned with the flags of the run,
//! their logs in the temp dir, waited on until ready, and stopped (SIGTERM, then SIGKILL) when
//! dropped, so a failed benchmark never leaves workers behind.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// One started worker.
pub struct WorkerProcess {
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
}

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

impl WorkerProcess {
    /// Starts `genq-worker` with `args`; its log goes to `<temp>/<name>.log`.
    pub fn spawn(args: &[String], name: &str) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        // Readiness is the worker's `worker ready` info line: keep it whatever RUST_LOG says.
        let filter = match std::env::var("RUST_LOG") {
            Ok(f) if !f.trim().is_empty() => format!("{f},genq_worker=info"),
            _ => "info".to_string(),
        };
        let child = Command::new(worker_binary()?)
            .args(args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("start genq-worker")?;
        Ok(Self { child: Some(child), log })
    }

    /// Process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Waits for the `worker ready` log line; fails with the log when the worker exits first or
    /// `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("worker ready") {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some();
            anyhow::ensure!(!exited && Instant::now() < until, "genq-worker did not start; its log ({}):\n{text}", self.log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}
