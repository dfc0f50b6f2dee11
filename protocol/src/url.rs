//! The URLs of a setting (`amqp.url`, `redis.url`): one URL or a comma-separated list, and the
//! same with passwords masked for logs and error messages.

/// The URLs of an `amqp.url` or `redis.url` setting: one URL, or several separated by commas (the
/// nodes of a RabbitMQ cluster, tried in order, or the seed nodes of a Redis Cluster).
pub fn url_list(urls: &str) -> Vec<&str> {
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// `scheme://user:***@host/...`: a URL fit for logs (each of a comma-separated list).
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url_list(url).into_iter().map(redact_one).collect::<Vec<_>>().join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_string() };
            format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_url, url_list};

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert_eq!(redact_url("redis://:pw@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("amqp://u:p1@a/%2f, amqp://u:p2@b/%2f"), "amqp://u:***@a/%2f,amqp://u:***@b/%2f");
    }

    #[test]
    fn a_list_is_split_on_commas_and_blanks_are_dropped() {
        assert_eq!(url_list(" redis://a:1 ,redis://b:2,, "), vec!["redis://a:1", "redis://b:2"]);
        assert_eq!(url_list("amqp://h"), vec!["amqp://h"]);
    }
}
