//! The URLs genq reads: a setting's list (`amqp.url`, `redis.url`), the same with passwords
//! masked for logs, the parts of an AMQP URL the RabbitMQ management API needs, and the
//! `host:port` and path of an `http://` URL. One parser reads them all: the `url` crate's, the
//! one lapin and redis parse their own URLs with.

use ::url::Url;
use lapin::uri::AMQPUri;

/// A URL genq cannot use; the URL is shown without its password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL {url}: {reason}")]
pub struct UrlError {
    /// The URL, redacted.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl UrlError {
    fn new(url: &str, reason: impl ToString) -> UrlError {
        UrlError { url: redact_url(url), reason: reason.to_string() }
    }
}

/// The URLs of an `amqp.url` or `redis.url` setting: one URL, or several separated by commas (the
/// nodes of a RabbitMQ cluster, tried in order, or the seed nodes of a Redis Cluster).
pub fn url_list(urls: &str) -> Vec<&str> {
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// `scheme://user:***@host/...`: a URL fit for logs (each of a comma-separated list). A lone
/// user name is masked too (Redis reads `redis://secret@host` as a password).
pub fn redact_url(url: &str) -> String {
    url_list(url).into_iter().map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        // Whatever does not parse is shown only when it cannot hold credentials.
        return if raw.contains('@') { "(a URL that does not parse, hidden as it may hold a password)".into() } else { raw.into() };
    };
    let masked = if url.password().is_some() { url.set_password(Some("***")) } else if !url.username().is_empty() { url.set_username("***") } else { Ok(()) };
    match masked {
        Ok(()) => url.to_string(),
        Err(()) => "(a URL whose credentials cannot be masked)".into(),
    }
}

/// What the RabbitMQ management API needs from an AMQP URL, read as lapin reads it when it
/// connects (user and password `guest` and vhost `/` when the URL names none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpEndpoint {
    /// Host name.
    pub host: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host, decoded (`/` for `%2f`).
    pub vhost: String,
}

impl AmqpEndpoint {
    /// Reads `amqp[s]://user:pass@host:port/vhost`.
    pub fn parse(url: &str) -> Result<AmqpEndpoint, UrlError> {
        let uri: AMQPUri = url.parse().map_err(|reason: String| UrlError::new(url, reason))?;
        Ok(AmqpEndpoint {
            host: uri.authority.host,
            user: uri.authority.userinfo.username,
            password: uri.authority.userinfo.password,
            vhost: uri.vhost,
        })
    }
}

/// `base` with `segments` appended to its path, each percent-encoded as one segment (a vhost `/`
/// becomes `%2F`).
pub fn join_segments(base: &str, segments: &[&str]) -> Result<String, UrlError> {
    let mut url = Url::parse(base).map_err(|e| UrlError::new(base, e))?;
    url.path_segments_mut().map_err(|()| UrlError::new(base, "it cannot take a path"))?.pop_if_empty().extend(segments);
    Ok(url.to_string())
}

/// Where a plain-HTTP GET goes: `host:port` to connect to and the path (with its query) to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// `host:port` (port 80 when the URL names none).
    pub addr: String,
    /// Path and query, `/` at least.
    pub path: String,
}

impl HttpTarget {
    /// Reads an `http://` URL or a bare `host[:port][/path]`. TLS and credentials in the URL
    /// are refused.
    pub fn parse(raw: &str) -> Result<HttpTarget, UrlError> {
        let full = if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") };
        let url = Url::parse(&full).map_err(|e| UrlError::new(raw, e))?;
        if url.scheme() != "http" {
            return Err(UrlError::new(raw, "only http://host[:port]/path is supported"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::new(raw, "credentials in the URL are not supported"));
        }
        let host = url.host_str().ok_or_else(|| UrlError::new(raw, "no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        Ok(HttpTarget { addr: format!("{host}:{port}"), path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert_eq!(redact_url("redis://:pw@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
        assert_eq!(redact_url("redis://token@127.0.0.1:6379/0"), "redis://***@127.0.0.1:6379/0");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("amqp://u:p1@a/%2f, amqp://u:p2@b/%2f"), "amqp://u:***@a/%2f,amqp://u:***@b/%2f");
        let unparsed = redact_url("amqp://u:p@[bad/");
        assert!(!unparsed.contains("p@"), "{unparsed}");
    }

    #[test]
    fn a_list_is_split_on_commas_and_blanks_are_dropped() {
        assert_eq!(url_list(" redis://a:1 ,redis://b:2,, "), vec!["redis://a:1", "redis://b:2"]);
        assert_eq!(url_list("amqp://h"), vec!["amqp://h"]);
    }

    #[test]
    fn an_amqp_url_gives_the_management_api_what_lapin_connects_with() {
        let e = AmqpEndpoint::parse("amqp://genq:s3cr%40t@rabbitmq:5672/%2f").expect("a valid AMQP URL");
        assert_eq!(e, AmqpEndpoint { host: "rabbitmq".into(), user: "genq".into(), password: "s3cr@t".into(), vhost: "/".into() });
        let e = AmqpEndpoint::parse("amqp://localhost/prod").expect("a valid AMQP URL");
        assert_eq!((e.user.as_str(), e.password.as_str(), e.vhost.as_str()), ("guest", "guest", "prod"));
        let err = AmqpEndpoint::parse("http://u:pw@h/").expect_err("not an AMQP URL");
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn path_segments_are_encoded_one_by_one() {
        assert_eq!(join_segments("http://h:15672", &["api", "queues", "/", "genq.jobs"]).expect("joins"), "http://h:15672/api/queues/%2F/genq.jobs");
        assert_eq!(join_segments("http://h:15672/rmq/", &["api", "queues", "a b"]).expect("joins"), "http://h:15672/rmq/api/queues/a%20b");
    }

    #[test]
    fn http_targets_may_be_urls_or_host_port() {
        let t = |s: &str| HttpTarget::parse(s).map(|t| (t.addr, t.path));
        assert_eq!(t("127.0.0.1:9464"), Ok(("127.0.0.1:9464".into(), "/".into())));
        assert_eq!(t("http://w1:9464/metrics"), Ok(("w1:9464".into(), "/metrics".into())));
        assert_eq!(t("http://rabbit"), Ok(("rabbit:80".into(), "/".into())));
        assert_eq!(t("http://[::1]:9/q?a=1"), Ok(("[::1]:9".into(), "/q?a=1".into())));
        assert!(t("https://rabbit:15671").is_err(), "no TLS");
        assert!(t("http://u:p@rabbit").is_err(), "no credentials in the URL");
    }
}
