//! A real Prometheus for tests: its own process on a free loopback port, with a temporary config
//! and storage, scraping the given targets every second; stopped when dropped. Also a minimal
//! HTTP GET (no client crate needed) to read `/metrics` and Prometheus' query API.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a Prometheus binary (`prometheus`, `promtool`) on `PATH`; `None` when absent.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `GET path` on `addr` over HTTP/1.0 (so the body is never chunked); returns status and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A scrape job: Prometheus `job` name and `host:port` targets.
pub struct ScrapeJob<'a> {
    /// `job_name`.
    pub name: &'a str,
    /// Targets.
    pub targets: Vec<String>,
}

/// A running Prometheus; killed (and its storage removed) on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:<port>` of its HTTP API.
    pub addr: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every second and waits until it is ready.
    pub fn start(jobs: &[ScrapeJob<'_>]) -> Prometheus {
        let bin = tool("prometheus").expect("prometheus is not installed: run scripts/prometheus.sh (scripts/test.sh does)");
        let dir = crate::scratch_dir().join(crate::unique("prometheus"));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for job in jobs {
            let targets: Vec<String> = job.targets.iter().map(|t| format!("\"{t}\"")).collect();
            config.push_str(&format!("  - job_name: {}\n    static_configs:\n      - targets: [{}]\n", job.name, targets.join(", ")));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, dir, addr };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if matches!(http_get(&p.addr, "/-/ready"), Ok((200, _))) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus did not become ready:\n{}", p.log());
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluates `expr` at `time` (Unix seconds) through `/api/v1/query`; returns `data.result`,
    /// or the error Prometheus gave.
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<serde_json::Value>, String> {
        let query: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("query", expr).append_pair("time", &format!("{time:.3}")).finish();
        let path = format!("/api/v1/query?{query}");
        let (status, body) = http_get(&self.addr, &path).map_err(|e| format!("query {expr}: {e}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {} {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Health of every scrape target, as `(job, health, last error)`.
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let Ok((_, body)) = http_get(&self.addr, "/api/v1/targets") else { return Vec::new() };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                        (t["labels"]["job"].as_str().unwrap_or_default().to_string(), s("health"), s("lastError"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The folder of its config and storage.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `promtool check config` on `file`; returns its output on failure.
pub fn check_config(file: &Path) -> Result<String, String> {
    let bin = tool("promtool").ok_or("promtool is not installed: run scripts/prometheus.sh")?;
    let out = Command::new(bin).args(["check", "config"]).arg(file).output().map_err(|e| e.to_string())?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
