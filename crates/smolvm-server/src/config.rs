//! Server settings and their validation: where to listen, the API token,
//! the CORS origin and the file upload limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Default port, as in `smolvm server --port`.
pub const DEFAULT_PORT: u16 = 8000;

/// Default maximum size of a file uploaded with `PUT /sandboxes/{id}/files`,
/// in bytes (1 GiB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;

/// Environment variable that supplies the token when `--token` is absent.
pub const TOKEN_ENV: &str = "SMOLVM_API_TOKEN";

/// Settings for one server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to bind: an IP address or `localhost`.
    pub host: String,
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// When set, every request except `/healthz`, `/openapi.json` and
    /// `/docs` must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// An origin (`https://app.example`) that browsers may call the API
    /// from. Without it the server sends no CORS headers.
    pub cors_origin: Option<String>,
    /// Maximum size of an uploaded file, in bytes.
    pub max_file_bytes: u64,
    /// Directories whose disk images `file://` references may name. Empty
    /// (the default) rejects `file://` images: the server reads them as
    /// root, so any local client could otherwise boot, and read, any disk
    /// file on the host.
    pub image_roots: Vec<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: Ipv4Addr::LOCALHOST.to_string(),
            port: DEFAULT_PORT,
            token: None,
            cors_origin: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            image_roots: Vec::new(),
        }
    }
}

// Written by hand so the token never reaches a log.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("cors_origin", &self.cors_origin)
            .field("max_file_bytes", &self.max_file_bytes)
            .finish()
    }
}

/// Invalid server settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid host {host:?}: pass an IP address such as 127.0.0.1, or localhost")]
    InvalidHost { host: String },

    #[error(
        "refusing to listen on {host} without a token: any machine that can reach it could \
         create sandboxes and run commands. Pass --token (or set {TOKEN_ENV}), or listen on \
         127.0.0.1"
    )]
    TokenRequired { host: String },

    #[error("the API token is empty; pass a non-empty --token or unset {TOKEN_ENV}")]
    EmptyToken,

    #[error(
        "invalid CORS origin {origin:?}: expected scheme://host[:port] with http or https, \
         such as http://localhost:5173, with no path"
    )]
    InvalidCorsOrigin { origin: String },

    #[error("invalid file size limit 0 bytes; pass a positive number of bytes")]
    ZeroFileLimit,
}

impl ServerConfig {
    /// Checks the settings and returns the address to bind.
    pub fn validate(&self) -> Result<SocketAddr, ConfigError> {
        let ip = self.ip()?;
        match &self.token {
            Some(token) if token.is_empty() => return Err(ConfigError::EmptyToken),
            None if !ip.is_loopback() => {
                return Err(ConfigError::TokenRequired {
                    host: self.host.clone(),
                });
            }
            _ => {}
        }
        let invalid_origin = self.cors_origin.as_ref().filter(|o| !is_valid_origin(o));
        if let Some(origin) = invalid_origin {
            return Err(ConfigError::InvalidCorsOrigin {
                origin: origin.clone(),
            });
        }
        if self.max_file_bytes == 0 {
            return Err(ConfigError::ZeroFileLimit);
        }
        Ok(SocketAddr::new(ip, self.port))
    }

    /// Returns the IP address the host names.
    pub fn ip(&self) -> Result<IpAddr, ConfigError> {
        if self.host.eq_ignore_ascii_case("localhost") {
            return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let trimmed = self.host.trim_start_matches('[').trim_end_matches(']');
        trimmed.parse().map_err(|_| ConfigError::InvalidHost {
            host: self.host.clone(),
        })
    }
}

/// Returns whether `origin` is a serialized web origin: `http` or `https`, a host,
/// an optional port, and nothing after.
fn is_valid_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && axum::http::uri::Authority::try_from(rest).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(host: &str, token: Option<&str>) -> ServerConfig {
        ServerConfig {
            host: host.into(),
            token: token.map(str::to_owned),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn loopback_without_token_allowed() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            assert!(config(host, None).validate().is_ok(), "{host}");
        }
    }

    #[test]
    fn public_bind_without_token_rejected() {
        for host in ["0.0.0.0", "::", "192.0.2.7"] {
            let error = config(host, None).validate().unwrap_err();
            assert_eq!(error, ConfigError::TokenRequired { host: host.into() });
            assert!(error.to_string().contains("--token"), "{error}");
        }
    }

    #[test]
    fn public_bind_with_token_allowed() {
        let address = config("0.0.0.0", Some("s3cret")).validate().unwrap();
        assert_eq!(address.port(), DEFAULT_PORT);
    }

    #[test]
    fn empty_token_rejected() {
        assert_eq!(
            config("127.0.0.1", Some("")).validate(),
            Err(ConfigError::EmptyToken)
        );
    }

    #[test]
    fn host_names_rejected() {
        let error = config("example.com", None).validate().unwrap_err();
        assert!(matches!(error, ConfigError::InvalidHost { .. }), "{error}");
    }

    #[test]
    fn cors_origin_checked() {
        for good in ["http://localhost:5173", "https://app.example"] {
            let mut c = config("127.0.0.1", None);
            c.cors_origin = Some(good.into());
            assert!(c.validate().is_ok(), "{good}");
        }
        for bad in [
            "localhost:5173",
            "http://",
            "https://app.example/path",
            "*",
            "ftp://x",
        ] {
            let mut c = config("127.0.0.1", None);
            c.cors_origin = Some(bad.into());
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_token() {
        let shown = format!("{:?}", config("127.0.0.1", Some("s3cret")));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
