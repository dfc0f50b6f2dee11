//! Optional bearer-token authentication: with tokens configured (`gateway.api_keys`), every API
//! route wants `Authorization: Bearer <token>`; `/healthz` and `/metrics` stay open for probes
//! and scrapers. Tokens are compared in constant time and never logged or echoed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The accepted tokens; empty means authentication is off.
#[derive(Clone, Default)]
pub struct BearerTokens(Arc<Vec<Vec<u8>>>);

impl BearerTokens {
    /// Accepts any of `tokens`.
    pub fn new(tokens: Vec<String>) -> Self {
        Self(Arc::new(tokens.into_iter().map(String::into_bytes).collect()))
    }

    /// True when tokens are configured.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether an `Authorization` header value lets the request through.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        if !self.enabled() {
            return true;
        }
        let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))) else {
            return false;
        };
        let given = given.trim().as_bytes();
        // Check every token, so the time taken does not say which one came close.
        self.0.iter().fold(false, |found, token| constant_time_eq(token, given) | found)
    }
}

/// Whether `a == b`, taking the same time wherever they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: 401 unless the request carries an accepted token.
pub async fn require_token(State(tokens): State<BearerTokens>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if tokens.accepts(header) {
        next.run(request).await
    } else {
        let mut response = ApiError::unauthorized().into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tokens_everyone_is_let_in() {
        assert!(BearerTokens::default().accepts(None));
    }

    #[test]
    fn with_tokens_only_a_listed_bearer_token_is_let_in() {
        let tokens = BearerTokens::new(vec!["alpha".into(), "beta-2".into()]);
        assert!(tokens.accepts(Some("Bearer beta-2")));
        assert!(tokens.accepts(Some("Bearer alpha")));
        assert!(!tokens.accepts(None));
        assert!(!tokens.accepts(Some("Bearer alph")));
        assert!(!tokens.accepts(Some("Basic alpha")));
        assert!(!tokens.accepts(Some("alpha")));
    }
}
