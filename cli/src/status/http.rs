//! A minimal HTTP/1.0 GET over a plain TCP connection: enough for a worker's `/metrics` and the
//! RabbitMQ management API without an HTTP client dependency. No TLS, no redirects.

use std::time::Duration;

use genq_protocol::url::HttpTarget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, sending or reading failed, or it took too long.
    #[error("{addr}: {message}")]
    Io {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with a status other than 200.
    #[error("{addr}: HTTP {status}")]
    Status {
        /// `host:port`.
        addr: String,
        /// The status code.
        status: u16,
    },
}

fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// GETs `target`, with basic auth when `auth` is given; returns the body of a 200 answer.
pub async fn get(target: &HttpTarget, auth: Option<(&str, &str)>, timeout: Duration) -> Result<String, HttpError> {
    let (addr, path) = (target.addr.as_str(), target.path.as_str());
    let io = |e: std::io::Error| HttpError::Io { addr: addr.to_string(), message: e.to_string() };
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n");
        if let Some((user, password)) = auth {
            request.push_str(&format!("Authorization: Basic {}\r\n", base64(format!("{user}:{password}").as_bytes())));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(io)?;
        Ok::<_, HttpError>(String::from_utf8_lossy(&raw).into_owned())
    };
    let raw = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Io { addr: addr.to_string(), message: format!("no answer within {timeout:?}") })??;
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if status != 200 {
        return Err(HttpError::Status { addr: addr.to_string(), status });
    }
    Ok(raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_standard_base64() {
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
