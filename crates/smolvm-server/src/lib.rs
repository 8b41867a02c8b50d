//! smolvm HTTP API server: sandboxes over REST, an OpenAPI 3.1 document at
//! `/openapi.json`, lifecycle events, and metrics. `smolvm server` runs it
//! with [`serve`]; tests drive [`router`] in-process.

pub mod api;
mod app;
pub mod config;
pub mod error;
mod events;
mod json;
mod metrics;
mod openapi;
mod request;
mod security;
mod server;
mod teardown;

pub use app::{AppState, router};
pub use config::{ConfigError, DEFAULT_MAX_FILE_BYTES, DEFAULT_PORT, ServerConfig, TOKEN_ENV};
pub use openapi::{openapi, openapi_json};
pub use server::{Server, ServerError, serve};
