//! Security against real services: Redis AUTH with the password kept out of every log line,
//! Redis over TLS (`rediss://`) and RabbitMQ over TLS (`amqps://`, through a `socat` TLS front
//! on the real broker) verified against a CA the test makes with `openssl`, and refused when the
//! client trusts only another CA the test makes (so the refusal is for the certificate's issuer,
//! not for a missing trust file).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use genq_shared::JobStatus;
use genq_tests::redis_server::{free_port, PrivateRedis};
use genq_tests::{scratch_dir, Sandbox};

/// Submits three echo jobs with `genq submit --wait` and checks they are all done.
fn submit_and_wait(sb: &Sandbox, env: &[(&str, &str)]) -> String {
    let file = scratch_dir().join(format!("{}.jsonl", sb.model));
    std::fs::write(&file, "\"one two\"\n\"three four\"\n\"five six\"\n").expect("jobs file");
    let out = sb.genq().envs(env.iter().copied()).arg("submit").arg(&file).args(["--wait", "--timeout", "60"]).output().expect("genq submit");
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let results: Vec<genq_shared::JobResult> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON result")).collect();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.status == Some(JobStatus::Done)), "{results:?}");
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_auth_works_and_the_password_never_reaches_the_logs() {
    let password = "s3cret-never-logged";
    let redis = PrivateRedis::start(&["--requirepass", password]);
    let url = format!("redis://:{password}@127.0.0.1:{}", redis.port());
    let sb = Sandbox::new("auth").with_redis(&url);
    let worker = sb.worker_with_env(&["--engine", "echo"], &[("RUST_LOG", "debug")]);
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let stderr = submit_and_wait(&sb, &[("RUST_LOG", "debug")]);
    let log = worker.log_text();
    assert!(log.contains(":***@127.0.0.1"), "the URL is logged redacted: {log}");
    assert!(!log.contains(password) && !stderr.contains(password), "password leaked");

    // A wrong password is refused with a clear error that does not echo it.
    let bad = Sandbox::new("badauth").with_redis(&format!("redis://:wrong-pass@127.0.0.1:{}", redis.port()));
    let w = bad.worker(&["--engine", "echo"]);
    let code = w.wait_exit(Duration::from_secs(30)).expect("the worker stops");
    assert_ne!(code, Some(0));
    let log = w.log_text();
    assert!(log.to_lowercase().contains("redis") && !log.contains("wrong-pass"), "{log}");
    drop(worker);
    sb.cleanup().await;
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 in `dir`.
fn make_certificates(dir: &Path) {
    openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=genq test CA", "-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("san");
    openssl(
        dir,
        &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem"],
    );
}

/// A second CA, unrelated to the server's: a client trusting only it must refuse the server.
fn other_ca() -> std::path::PathBuf {
    let dir = scratch_dir().join(genq_tests::unique("other-ca"));
    std::fs::create_dir_all(&dir).expect("cert dir");
    openssl(&dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=genq other CA", "-keyout", "ca.key", "-out", "ca.pem"]);
    dir
}

/// A worker trusting only another CA stops, and its log says the certificate was refused.
fn assert_refused_by_another_ca(sb: &Sandbox) {
    let other = other_ca();
    let ca = other.join("ca.pem").to_string_lossy().to_string();
    let untrusted = sb.worker_with_env(&["--engine", "echo"], &[("SSL_CERT_FILE", ca.as_str())]);
    let code = untrusted.wait_exit(Duration::from_secs(30)).expect("the worker stops");
    let log = untrusted.log_text();
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("UnknownIssuer") || log.to_lowercase().contains("unknown issuer"), "refused for the certificate's issuer: {log}");
    let _ = std::fs::remove_dir_all(&other);
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_urls_connect_over_tls_verified_against_the_ca() {
    let certs = scratch_dir().join(genq_tests::unique("tls"));
    std::fs::create_dir_all(&certs).expect("cert dir");
    make_certificates(&certs);
    let path = |f: &str| certs.join(f).to_string_lossy().to_string();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let redis = PrivateRedis::start(&[
        "--tls-port",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let sb = Sandbox::new("tls").with_redis(&format!("rediss://localhost:{}", redis.port()));
    // rustls-native-certs reads the trusted roots from SSL_CERT_FILE.
    let trust = [("SSL_CERT_FILE", ca.as_str())];
    let worker = sb.worker_with_env(&["--engine", "echo"], &trust);
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    submit_and_wait(&sb, &trust);

    // Trusting another CA, the server's certificate is refused: the worker does not start.
    assert_refused_by_another_ca(&sb);
    drop(worker);
    sb.cleanup().await;
    let _ = std::fs::remove_dir_all(&certs);
}

/// `socat` terminating TLS on `port` with the test's server certificate, forwarding to RabbitMQ.
struct TlsFront(std::process::Child);

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_urls_connect_over_tls_verified_against_the_ca() {
    let certs = scratch_dir().join(genq_tests::unique("amqps"));
    std::fs::create_dir_all(&certs).expect("cert dir");
    make_certificates(&certs);
    let path = |f: &str| certs.join(f).to_string_lossy().to_string();
    let port = free_port();
    let front = TlsFront(
        Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                path("server.pem"),
                path("server.key")
            ))
            .arg("TCP:127.0.0.1:5672")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat (scripts/services.sh installs it)"),
    );
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < until, "socat did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sb = Sandbox::new("amqps").with_amqp(&format!("amqps://guest:guest@localhost:{port}/%2f"));
    let ca = path("ca.pem");
    let trust = [("SSL_CERT_FILE", ca.as_str())];
    let worker = sb.worker_with_env(&["--engine", "echo"], &trust);
    worker.wait_ready(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert!(worker.log_text().contains("amqps://guest:***@localhost"), "the URL is logged redacted");
    submit_and_wait(&sb, &trust);

    // Trusting another CA, the broker's certificate is refused: the worker does not start.
    assert_refused_by_another_ca(&sb);
    drop(worker);
    drop(front);
    let plain = Sandbox { amqp: genq_tests::amqp_url(), ..sb };
    plain.cleanup().await;
    let _ = std::fs::remove_dir_all(&certs);
}
