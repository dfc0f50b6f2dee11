//! A `genq-worker` child process, for the programs that start workers (`genq bench fleet`, the
//! integration tests): its log in a file, waited on until ready, signalled, and stopped
//! (SIGTERM, then SIGKILL) when dropped, so a failed run never leaves workers behind.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The line a worker logs once it consumes and serves metrics.
pub const READY_LINE: &str = "worker ready";

/// How long [`Drop`] waits for a clean exit after SIGTERM before killing.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// One started `genq-worker`.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Behind a lock so that every method takes `&self`.
    state: Mutex<State>,
    log: PathBuf,
}

#[derive(Debug)]
enum State {
    Running(Child),
    /// Reaped, with its exit code (None when a signal killed it).
    Exited(Option<i32>),
}

impl WorkerProcess {
    /// Starts `command` (a `genq-worker` with its flags and environment) with stderr, where it
    /// logs, going to the file `log`. Unless `command` sets `RUST_LOG` itself, the one it
    /// inherits gets `genq_worker=info` added, so a quieter filter in the caller's environment
    /// never hides [`READY_LINE`].
    pub fn spawn(mut command: Command, log: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::File::create(&log)?;
        if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
            let filter = match std::env::var("RUST_LOG") {
                Ok(f) if !f.trim().is_empty() => format!("{f},genq_worker=info"),
                _ => "info".to_string(),
            };
            command.env("RUST_LOG", filter);
        }
        let child = command.stdout(Stdio::null()).stderr(file).spawn()?;
        Ok(Self { state: Mutex::new(State::Running(child)), log })
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        match &*self.state() {
            State::Running(child) => child.id(),
            State::Exited(_) => 0,
        }
    }

    /// Sends a signal (`TERM`, `KILL`) with `kill(1)`; does nothing once the process is reaped.
    pub fn signal(&self, name: &str) {
        let pid = self.pid();
        if pid > 0 {
            let _ = Command::new("kill").args([format!("-{name}"), pid.to_string()]).status();
        }
    }

    /// Its exit code (None when a signal killed it) once it has exited; None while it runs.
    pub fn exit_code(&self) -> Option<Option<i32>> {
        let mut state = self.state();
        if let State::Running(child) = &mut *state {
            let status = child.try_wait().ok().flatten()?;
            *state = State::Exited(status.code());
        }
        match *state {
            State::Exited(code) => Some(code),
            State::Running(_) => None,
        }
    }

    /// Waits for the process to exit: its exit code (None when a signal killed it); None when
    /// it is still running after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<Option<i32>> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code() {
                return Some(code);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `needle`; false when `timeout` passes or the process
    /// exits without having logged it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if self.exit_code().is_some() {
                // It may have logged the line just before exiting.
                return self.log_text().contains(needle);
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for [`READY_LINE`]; the error carries the log when the worker exits first or
    /// `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        if self.wait_for_log(READY_LINE, timeout) {
            return Ok(());
        }
        Err(format!("genq-worker did not start; its log ({}):\n{}", self.log.display(), self.log_text()))
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then kills it.
    pub fn stop(&self, grace: Duration) {
        self.signal("TERM");
        if self.wait_exit(grace).is_some() {
            return;
        }
        let mut state = self.state();
        if let State::Running(child) = &mut *state {
            let _ = child.kill();
            let code = child.wait().ok().and_then(|s| s.code());
            *state = State::Exited(code);
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.stop(DROP_GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, tag: &str) -> WorkerProcess {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        let log = std::env::temp_dir().join(format!("genq-process-test-{tag}-{}.log", std::process::id()));
        WorkerProcess::spawn(command, log).expect("spawn sh")
    }

    #[test]
    fn a_process_that_exits_without_the_ready_line_fails_at_once_with_its_log() {
        let p = shell("echo 'cannot connect' >&2; exit 3", "early-exit");
        let started = Instant::now();
        let err = p.wait_ready(Duration::from_secs(30)).expect_err("never ready");
        assert!(started.elapsed() < Duration::from_secs(10), "did not wait out the timeout");
        assert!(err.contains("cannot connect"), "{err}");
        assert_eq!(p.wait_exit(Duration::from_secs(1)), Some(Some(3)), "the exit code is kept once reaped");
        assert_eq!(p.pid(), 0);
    }

    #[test]
    fn ready_then_stopped_by_sigterm_or_killed() {
        let p = shell("echo 'worker ready' >&2; exec sleep 30", "ready");
        p.wait_ready(Duration::from_secs(10)).expect("ready");
        assert!(p.pid() > 0);
        let started = Instant::now();
        p.stop(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5), "SIGTERM ends sleep at once");
        assert_eq!(p.wait_exit(Duration::ZERO), Some(None), "killed by a signal: no exit code");

        let stubborn = shell("trap '' TERM; echo 'worker ready' >&2; while :; do sleep 0.1; done", "stubborn");
        stubborn.wait_ready(Duration::from_secs(10)).expect("ready");
        stubborn.stop(Duration::from_millis(300));
        assert_eq!(stubborn.wait_exit(Duration::ZERO), Some(None), "killed after the grace period");
    }
}
