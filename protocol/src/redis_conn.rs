//! One Redis connection for a single server or a Redis Cluster, chosen by the URL setting: one
//! URL is a server; several, comma-separated, are seed nodes of a cluster. Both serve genq's
//! commands, since each job's keys share one `{id}` slot. A command that meets a failure returns
//! its error; the next one reconnects (the connection manager on one server, the cluster
//! client's per-node connections on a cluster), and whether to retry is the caller's choice.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::url::url_list;

/// A connection to one Redis server or to a Redis Cluster. Cheap to clone (shares the socket).
#[derive(Clone)]
pub enum RedisConn {
    /// One server, through a reconnecting connection manager.
    Single(ConnectionManager),
    /// A cluster: commands are routed by key slot.
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects to `urls`; `response_timeout` bounds each answer (`None` for blocking commands).
    pub async fn connect(urls: &str, response_timeout: Option<Duration>) -> RedisResult<Self> {
        let nodes = url_list(urls);
        if nodes.len() > 1 {
            let mut builder = ClusterClientBuilder::new(nodes).connection_timeout(Duration::from_secs(5));
            if let Some(t) = response_timeout {
                builder = builder.response_timeout(t);
            }
            return Ok(RedisConn::Cluster(builder.build()?.get_async_connection().await?));
        }
        let client = redis::Client::open(nodes.first().copied().unwrap_or(urls))?;
        let config = ConnectionManagerConfig::new().set_response_timeout(response_timeout);
        Ok(RedisConn::Single(client.get_connection_manager_with_config(config).await?))
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Runs independent commands and returns their answers in order: one pipeline on a single
    /// server; on a cluster, concurrent requests (a cluster pipeline must stay in one slot).
    pub async fn query_all(&self, cmds: &[Cmd]) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(conn) => {
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c.clone());
                }
                pipe.query_async(&mut conn.clone()).await
            }
            RedisConn::Cluster(conn) => {
                let calls = cmds.iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { c.query_async::<Value>(&mut conn).await }
                });
                futures::future::try_join_all(calls).await
            }
        }
    }
}

/// The items of an array answer, e.g. a multi-job script call's per-job answers; none for
/// anything else.
pub fn array_items(answer: Value) -> Vec<Value> {
    match answer {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
