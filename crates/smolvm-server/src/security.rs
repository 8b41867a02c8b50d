//! Local-API safety: the checks that keep web pages the user opens, and
//! other users of the network, from driving sandboxes.
//!
//! A loopback API without a token is still reachable from any page in the
//! user's browser, so every request passes these checks in order:
//! 1. `Host` must be a loopback name or the configured host. This defeats
//!    DNS rebinding, where an attacker's name resolves to 127.0.0.1.
//! 2. `Origin`, when present, must be the configured CORS origin or the
//!    server itself. Browsers send it on every cross-site POST, so a page
//!    cannot even make a body-less POST such as `/stop`.
//! 3. With a token configured, `Authorization: Bearer <token>` must match,
//!    compared in constant time.
//!
//! JSON endpoints also require `content-type: application/json` (see
//! `json.rs`), and bodies are capped before they are read.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{ConfigError, ServerConfig};
use crate::error::{ApiError, ERROR_CODE_HEADER, ErrorCode};

/// Largest JSON request body, in bytes (1 MiB).
pub(crate) const JSON_BODY_LIMIT_BYTES: usize = 1024 * 1024;

/// Paths served without a token: they reveal nothing about sandboxes.
const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/openapi.json", "/docs"];

/// The bind address, token and CORS origin that requests are checked
/// against, derived from the server settings.
#[derive(Clone)]
pub(crate) struct SecurityPolicy {
    /// The bind address; requests naming it in `Host` are accepted.
    bind_ip: IpAddr,
    /// SHA-256 of the token. Comparing fixed-size digests in constant time
    /// hides the token's length as well as its bytes.
    token_digest: Option<[u8; 32]>,
    cors_origin: Option<String>,
}

// Written by hand so the token digest never reaches a log.
impl std::fmt::Debug for SecurityPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityPolicy")
            .field("bind_ip", &self.bind_ip)
            .field("token", &self.token_digest.map(|_| "<set>"))
            .field("cors_origin", &self.cors_origin)
            .finish()
    }
}

impl SecurityPolicy {
    pub(crate) fn new(config: &ServerConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            bind_ip: config.ip()?,
            token_digest: config.token.as_deref().map(digest),
            cors_origin: config.cors_origin.clone(),
        })
    }

    /// Returns whether the `Host` header value may be served. With a token on an
    /// unspecified address (0.0.0.0, ::) any name is accepted, because the
    /// machine's names are unknown and a rebinding page lacks the token.
    fn host_allowed(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
            return false;
        };
        if self.bind_ip.is_unspecified() && self.token_digest.is_some() {
            return true;
        }
        let name = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = name.to_ascii_lowercase();

        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.bind_ip,
            Err(_) => false,
        }
    }

    /// Returns whether a request carrying `Origin: origin` may be served.
    /// `host` is its `Host` header, which identifies the server's own origin.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self
            .cors_origin
            .as_deref()
            .is_some_and(|allowed| allowed.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }

    fn token_matches(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(token) => bool::from(digest(token).ct_eq(expected)),
            None => false,
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Rejects requests whose `Host` or `Origin` is foreign, or that lack the
/// token. Runs before any handler reads the body.
pub(crate) async fn check_request(
    State(policy): State<Arc<SecurityPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(error) = check(&policy, &request) {
        return error.into_response();
    }
    next.run(request).await
}

fn check(policy: &SecurityPolicy, request: &Request) -> Result<(), ApiError> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));

    // HTTP/1.1 clients always send Host; one without it is not a browser,
    // so DNS rebinding does not apply.
    let foreign_host = host.as_deref().filter(|host| !policy.host_allowed(host));
    if let Some(host) = foreign_host {
        return Err(ApiError::new(
            ErrorCode::HostNotAllowed,
            format!(
                "Host {host:?} is not allowed; call the server by a loopback address such \
                 as 127.0.0.1 or localhost, or by the address it listens on"
            ),
        ));
    }

    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !policy.origin_allowed(origin, host.as_deref()) {
            return Err(ApiError::new(
                ErrorCode::OriginNotAllowed,
                format!(
                    "requests from origin {origin:?} are not allowed; start the server with \
                     --cors-origin {origin} to allow that web page to call the API"
                ),
            ));
        }
    }

    let public = request.method() == Method::GET && PUBLIC_PATHS.contains(&request.uri().path());
    if !public && !policy.token_matches(headers) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong API token; send the header `Authorization: Bearer <token>` with \
             the token the server was started with",
        ));
    }
    Ok(())
}

/// Builds the CORS layer for the configured origin; without one the
/// server sends no CORS headers, so browsers keep other origins out.
pub(crate) fn cors_layer(config: &ServerConfig) -> Option<CorsLayer> {
    let origin = HeaderValue::from_str(config.cors_origin.as_deref()?).ok()?;
    let exposed = [
        ERROR_CODE_HEADER,
        crate::api::exec::SANDBOX_DELETED_HEADER,
        crate::request::REQUEST_ID_HEADER,
    ];
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::exact(origin))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers(exposed.map(HeaderName::from)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(host: &str, token: Option<&str>, cors: Option<&str>) -> SecurityPolicy {
        let config = ServerConfig {
            host: host.into(),
            token: token.map(str::to_owned),
            cors_origin: cors.map(str::to_owned),
            ..ServerConfig::default()
        };
        SecurityPolicy::new(&config).unwrap()
    }

    #[test]
    fn loopback_hosts_allowed() {
        let p = policy("127.0.0.1", None, None);
        for host in [
            "127.0.0.1:8000",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8000",
            "a.localhost:80",
            "127.1.2.3",
        ] {
            assert!(p.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn foreign_hosts_rejected() {
        let p = policy("127.0.0.1", None, None);
        for host in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "10.0.0.1:8000",
            "",
            "a b",
        ] {
            assert!(!p.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn configured_host_allowed() {
        let p = policy("192.0.2.7", Some("t"), None);
        assert!(p.host_allowed("192.0.2.7:8000"));
        assert!(!p.host_allowed("192.0.2.8:8000"));
        assert!(!p.host_allowed("server.example"));
    }

    #[test]
    fn any_host_on_unspecified_with_token() {
        let p = policy("0.0.0.0", Some("t"), None);
        assert!(p.host_allowed("server.example:8000"));
    }

    #[test]
    fn origins_checked() {
        let p = policy("127.0.0.1", None, Some("http://localhost:5173"));
        assert!(p.origin_allowed("http://localhost:5173", Some("127.0.0.1:8000")));
        assert!(p.origin_allowed("http://127.0.0.1:8000", Some("127.0.0.1:8000")));
        assert!(!p.origin_allowed("http://evil.example", Some("127.0.0.1:8000")));
        assert!(!p.origin_allowed("null", Some("127.0.0.1:8000")));
        assert!(!p.origin_allowed("http://127.0.0.1:8000", None));
    }

    #[test]
    fn token_compared() {
        let p = policy("127.0.0.1", Some("s3cret"), None);
        let mut headers = HeaderMap::new();
        assert!(!p.token_matches(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer wrong"),
        );
        assert!(!p.token_matches(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(p.token_matches(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic s3cret"),
        );
        assert!(!p.token_matches(&headers));
    }

    #[test]
    fn no_token_configured_accepts_all() {
        assert!(policy("127.0.0.1", None, None).token_matches(&HeaderMap::new()));
    }

    #[test]
    fn debug_hides_token() {
        let shown = format!("{:?}", policy("127.0.0.1", Some("s3cret"), None));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
