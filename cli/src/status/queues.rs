//! Queue depths for `genq status`. The RabbitMQ management API gives ready, unacked and
//! consumers; when it is not reachable, a passive `queue.declare` per queue gives ready and
//! consumers only (AMQP has no unacked count), and the report says why.

use std::time::Duration;

use genq_protocol::broker;
use genq_protocol::url::{join_segments, url_list, AmqpEndpoint, HttpTarget};

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

/// The management API URL guessed from an AMQP URL: same host, port 15672.
pub fn default_management_url(amqp: &AmqpEndpoint) -> String {
    format!("http://{}:15672", amqp.host)
}

async fn from_management(base: &str, amqp: &AmqpEndpoint, names: &[String]) -> Result<Vec<QueueDepth>, String> {
    let mut out = Vec::new();
    for name in names {
        let url = join_segments(base, &["api", "queues", &amqp.vhost, name]).map_err(|e| e.to_string())?;
        let target = HttpTarget::parse(&url).map_err(|e| e.to_string())?;
        let body = match http::get(&target, Some((&amqp.user, &amqp.password)), Duration::from_secs(5)).await {
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
    // The management API of the first node listed; the AMQP fallback tries them all.
    let first = url_list(amqp_url).first().copied().unwrap_or(amqp_url);
    let amqp = AmqpEndpoint::parse(first).map_err(|e| e.to_string())?;
    let base = management_url.map(str::to_string).unwrap_or_else(|| default_management_url(&amqp));
    match from_management(&base, &amqp, names).await {
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
        let amqp = AmqpEndpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("a valid AMQP URL");
        assert_eq!(default_management_url(&amqp), "http://127.0.0.1:15672");
    }
}
