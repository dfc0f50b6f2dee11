//! Queue depths for `genq status`. The RabbitMQ management API gives ready, unacked and
//! consumers; when it is not reachable, a passive `queue.declare` per queue gives ready and
//! consumers only (AMQP has no unacked count), and the report says why.

use std::time::Duration;


use genq_protocol::broker;

use super::http;

/// One queue's depth; `None` where the source cannot tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// Queue name.
    pub name: String,
    /// False when the queue does not exist.
    pub exists: bool,
    /// Messages ready for delivery.
    pub ready: Option<u64>,
    /// Messages delivered and not yet acked.
    pub unacked: Option<u64>,
    /// Consumers.
    pub consumers: Option<u64>,
}

/// Where the depths came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepthSource {
    /// The management API at this URL.
    Management(String),
    /// Passive declares over AMQP, because the management API failed for this reason.
    Amqp {
        /// Why the management API was not used.
        why: String,
    },
}

/// Depths of several queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReport {
    /// In the order asked.
    pub queues: Vec<QueueDepth>,
    /// Their source.
    pub source: DepthSource,
}

/// The parts of an AMQP URL the management API needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpParts {
    /// Host name.
    pub host: String,
    /// User (`guest` when the URL names none).
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host, URL-encoded as the management API wants it (`%2F` for `/`).
    pub vhost: String,
}

/// Splits `amqp://user:pass@host:port/vhost`.
pub fn amqp_parts(url: &str) -> AmqpParts {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("guest:guest", authority));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let host = hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport);
    let vhost = path.split('?').next().unwrap_or("");
    let vhost = if vhost.is_empty() || vhost.eq_ignore_ascii_case("%2f") { "%2F".to_string() } else { vhost.to_string() };
    AmqpParts { host: host.to_string(), user: user.to_string(), password: password.to_string(), vhost }
}

/// The management API URL guessed from an AMQP URL: same host, port 15672.
pub fn default_management_url(amqp_url: &str) -> String {
    format!("http://{}:15672", amqp_parts(amqp_url).host)
}

async fn from_management(base: &str, parts: &AmqpParts, names: &[String]) -> Result<Vec<QueueDepth>, String> {
    let (addr, prefix) = http::split_url(base).map_err(|e| e.to_string())?;
    let prefix = prefix.trim_end_matches('/');
    let mut out = Vec::new();
    for name in names {
        let path = format!("{prefix}/api/queues/{}/{}", parts.vhost, name);
        let body = match http::get(&addr, &path, Some((&parts.user, &parts.password)), Duration::from_secs(5)).await {
            Ok(body) => body,
            Err(http::HttpError::Status { status: 404, .. }) => {
                out.push(QueueDepth { name: name.clone(), exists: false, ready: None, unacked: None, consumers: None });
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("management API answer is not JSON: {e}"))?;
        out.push(QueueDepth {
            name: name.clone(),
            exists: true,
            ready: v["messages_ready"].as_u64(),
            unacked: v["messages_unacknowledged"].as_u64(),
            consumers: v["consumers"].as_u64(),
        });
    }
    Ok(out)
}

async fn from_amqp(amqp_url: &str, names: &[String]) -> Result<Vec<QueueDepth>, String> {
    let connection = broker::connect(amqp_url, "genq-status").await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for name in names {
        let depth = match broker::probe_queue(&connection, name).await.map_err(|e| e.to_string())? {
            Some(q) => QueueDepth {
                name: name.clone(),
                exists: true,
                ready: Some(u64::from(q.ready)),
                unacked: None,
                consumers: Some(u64::from(q.consumers)),
            },
            None => QueueDepth { name: name.clone(), exists: false, ready: None, unacked: None, consumers: None },
        };
        out.push(depth);
    }
    let _ = connection.close(200, "bye".into()).await;
    Ok(out)
}

/// Depths of `names`: from the management API at `management_url` (default: the AMQP host, port
/// 15672) when it answers, else by passive declares over AMQP.
pub async fn depths(amqp_url: &str, management_url: Option<&str>, names: &[String]) -> Result<QueueReport, String> {
    let parts = amqp_parts(amqp_url);
    let base = management_url.map(str::to_string).unwrap_or_else(|| default_management_url(amqp_url));
    match from_management(&base, &parts, names).await {
        Ok(mut queues) => {
            // The management API publishes a new queue's counts only after its first stats
            // interval (5 s): take those from a passive declare meanwhile.
            let missing: Vec<String> = queues.iter().filter(|q| q.exists && q.ready.is_none()).map(|q| q.name.clone()).collect();
            if !missing.is_empty() {
                if let Ok(fresh) = from_amqp(amqp_url, &missing).await {
                    for f in fresh {
                        if let Some(q) = queues.iter_mut().find(|q| q.name == f.name) {
                            q.ready = f.ready;
                            q.consumers = q.consumers.or(f.consumers);
                        }
                    }
                }
            }
            Ok(QueueReport { queues, source: DepthSource::Management(base) })
        }
        Err(why) => {
            let queues = from_amqp(amqp_url, names).await?;
            Ok(QueueReport { queues, source: DepthSource::Amqp { why: format!("management API at {base}: {why}") } })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_api_credentials_come_from_the_amqp_url() {
        let p = amqp_parts("amqp://genq:s3cret@rabbitmq:5672/%2f");
        assert_eq!((p.host.as_str(), p.user.as_str(), p.password.as_str(), p.vhost.as_str()), ("rabbitmq", "genq", "s3cret", "%2F"));
        assert_eq!(amqp_parts("amqp://localhost/prod").vhost, "prod");
        assert_eq!(default_management_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "http://127.0.0.1:15672");
    }
}
