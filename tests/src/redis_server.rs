//! A private `redis-server` for tests that restart Redis or need AUTH or TLS: its own process on a
//! free loopback port with an append-only file in a temporary folder (so a restart keeps what
//! was written), stopped and removed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A `redis-server` of the test's own.
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one with `extra` arguments (e.g. `--requirepass x`, or TLS options, in which case
    /// `port` is the TLS port and the plain one is off).
    pub fn start(extra: &[&str]) -> Self {
        let dir = crate::scratch_dir().join(crate::unique("redis"));
        let _ = std::fs::create_dir_all(&dir);
        let mut r = PrivateRedis { port: free_port(), dir, extra: extra.iter().map(|s| s.to_string()).collect(), child: None };
        // A port found free can be taken again before redis-server binds it (by another test's
        // server, or as the local port of an outgoing connection): then it exits, and the next
        // free port is tried.
        for _ in 0..5 {
            if r.try_spawn() {
                return r;
            }
            r.port = free_port();
        }
        panic!("private redis did not start on any of 5 free ports")
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data folder (also a good place for TLS files).
    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    /// Starts the process (again, after [`PrivateRedis::stop`]) on the same port.
    pub fn spawn(&mut self) {
        assert!(self.try_spawn(), "private redis did not start again on port {}", self.port);
    }

    /// Starts the process; false if it exited before serving its port (the port was taken).
    fn try_spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let tls = self.extra.iter().any(|a| a == "--tls-port");
        let mut cmd = Command::new("redis-server");
        if tls {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        let extra: Vec<&String> = self.extra.iter().filter(|a| a.as_str() != "--tls-port").collect();
        let child = cmd
            .args(["--bind", "127.0.0.1", "--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if self.exited() {
                self.child = None;
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Whoever answered, the server must still be alive once it has had time to bind.
                std::thread::sleep(Duration::from_millis(50));
                if self.exited() {
                    self.child = None;
                    return false;
                }
                return true;
            }
            assert!(Instant::now() < until, "private redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process has exited.
    fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Stops the process (SIGTERM: Redis flushes its append-only file and exits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Kills the process (SIGKILL: no chance to flush anything), as a crash or an OOM kill does.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
