//! The shared state of request handlers and the router that serves them.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use smolvm_engine::sandbox::Engine;
use tokio::sync::watch;

use crate::api::{events, exec, files, sandboxes, system};
use crate::config::{ConfigError, ServerConfig};
use crate::error::{ApiError, ErrorCode};
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::security::{self, JSON_BODY_LIMIT_BYTES, SecurityPolicy};
use crate::teardown::Teardowns;

/// State shared by every handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) engine: Engine,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) events: EventHub,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) teardowns: Teardowns,
    security: Arc<SecurityPolicy>,
    /// Set to `true` when the server shuts down, so endless streams end.
    shutdown: Arc<watch::Sender<bool>>,
}

impl AppState {
    /// Creates the state for a server with `config` over `engine`.
    pub fn new(engine: Engine, config: ServerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let security = SecurityPolicy::new(&config)?;
        Ok(Self {
            events: EventHub::new(engine.clone()),
            engine,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
            teardowns: Teardowns::default(),
            security: Arc::new(security),
            shutdown: Arc::new(watch::channel(false).0),
        })
    }

    /// Ends event streams so that a graceful shutdown can finish.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Returns a receiver that changes to `true` on shutdown.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Builds the router with every endpoint and the safety layers. Tests
/// drive it in-process with `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/sandboxes",
            post(sandboxes::create_sandbox).get(sandboxes::list_sandboxes),
        )
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get_sandbox).delete(sandboxes::delete_sandbox),
        )
        .route("/sandboxes/{id}/stop", post(sandboxes::stop_sandbox))
        .route("/sandboxes/{id}/start", post(sandboxes::start_sandbox))
        .route("/sandboxes/{id}/exec", post(exec::exec_command))
        .route(
            "/sandboxes/{id}/exec/stream",
            post(exec::exec_command_stream),
        )
        .route(
            "/sandboxes/{id}/files",
            get(files::read_file).put(files::write_file),
        )
        .route("/sdk/v1/capabilities", get(system::get_capabilities))
        .route("/sdk/v1/diagnostics", get(system::get_diagnostics))
        .route("/sdk/v1/events", get(events::stream_events))
        .route("/healthz", get(system::get_health))
        .route("/metrics", get(system::get_metrics))
        .route("/openapi.json", get(system::get_openapi))
        .route("/docs", get(system::get_docs))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed);

    let mut app = api
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT_BYTES))
        .layer(from_fn_with_state(
            state.security.clone(),
            security::check_request,
        ));
    if let Some(cors) = security::cors_layer(&state.config) {
        app = app.layer(cors);
    }
    app.layer(from_fn(crate::request::trace_request))
        .with_state(state)
}

async fn route_not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; GET /openapi.json lists the endpoints",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not accept that method; GET /openapi.json lists the methods of each endpoint",
    )
}
