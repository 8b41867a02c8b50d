//! Endpoints about the server and host rather than one sandbox: health,
//! capabilities, diagnostics, metrics, and the API's own documentation.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use smolvm_engine::doctor::{self, CheckStatus};
use smolvm_engine::limits;
use utoipa::ToSchema;

use super::exec::ShellMode;
use super::model::{AccelChoiceName, AccelName, Backend, NetworkMode, Os};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::security::JSON_BODY_LIMIT_BYTES;

/// Version of this server, as reported by every system endpoint.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The interactive documentation page. It loads `/openapi.json` from this
/// server and needs nothing from the internet.
const DOCS_HTML: &str = include_str!("docs.html");

/// The server is up.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
    pub version: String,
}

/// Check that the server is up.
///
/// Served without a token, so a supervisor can probe it.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "getHealth",
    tag = "system",
    security(()),
    responses(
        (status = 200, description = "The server is up", body = Health),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
    ),
)]
pub(crate) async fn get_health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: VERSION.into(),
    })
}

/// An inclusive range with its default.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Limit {
    pub min: u64,
    pub max: u64,
    pub default: u64,
}

/// The bounds requests must respect.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// `memory` in MiB.
    pub memory: Limit,
    /// `disk_size` in MiB.
    pub disk_size: Limit,
    /// `cpus`; the maximum is this host's CPU count.
    pub cpus: Limit,
    /// Exec `timeout` in seconds.
    pub timeout: Limit,
    /// Output kept per stream by a buffered exec, in bytes.
    pub exec_output_bytes: u64,
    /// Largest JSON request body, in bytes.
    pub json_body_bytes: u64,
    /// Largest file upload, in bytes.
    pub file_bytes: u64,
}

/// Features and limits of this server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    pub version: String,
    /// Version of the `/sdk` API.
    #[schema(example = "v1")]
    pub api_version: String,
    pub os: Vec<Os>,
    /// Backends that can run sandboxes on this server.
    pub backends: Vec<Backend>,
    /// Accepted values of a create request's `accel`.
    pub accel: Vec<AccelChoiceName>,
    pub network_modes: Vec<NetworkMode>,
    pub shell_modes: Vec<ShellMode>,
    /// Optional endpoints this server has: `exec_stream`, `files`,
    /// `stop_start`, `events`, `metrics`.
    pub features: Vec<String>,
    pub limits: Limits,
}

/// Describe what this server supports.
#[utoipa::path(
    get,
    path = "/sdk/v1/capabilities",
    operation_id = "getCapabilities",
    tag = "system",
    responses(
        (status = 200, description = "Supported options and limits", body = Capabilities),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
    ),
)]
pub(crate) async fn get_capabilities(State(state): State<AppState>) -> Json<Capabilities> {
    let features = ["exec_stream", "files", "stop_start", "events", "metrics"];
    Json(Capabilities {
        version: VERSION.into(),
        api_version: "v1".into(),
        os: vec![Os::Linux],
        // Firecracker is accepted as a choice but cannot run sandboxes yet.
        backends: vec![Backend::Qemu],
        accel: vec![
            AccelChoiceName::Auto,
            AccelChoiceName::Kvm,
            AccelChoiceName::Tcg,
        ],
        network_modes: vec![NetworkMode::Open, NetworkMode::Off],
        shell_modes: vec![ShellMode::Login, ShellMode::Raw],
        features: features.map(str::to_owned).to_vec(),
        limits: limits_for(&state),
    })
}

fn limits_for(state: &AppState) -> Limits {
    let host_cpus = u64::from(limits::host_cpus());
    Limits {
        memory: limit(
            limits::MEMORY_MIB_MIN,
            limits::MEMORY_MIB_MAX,
            limits::MEMORY_MIB_DEFAULT,
        ),
        disk_size: limit(
            limits::DISK_MIB_MIN,
            limits::DISK_MIB_MAX,
            limits::DISK_MIB_DEFAULT,
        ),
        cpus: Limit {
            min: limits::CPUS_MIN.into(),
            max: host_cpus.max(limits::CPUS_MIN.into()),
            default: limits::CPUS_DEFAULT.into(),
        },
        timeout: Limit {
            min: limits::TIMEOUT_SECS_MIN,
            max: limits::TIMEOUT_SECS_MAX,
            default: limits::TIMEOUT_SECS_DEFAULT,
        },
        exec_output_bytes: limits::EXEC_OUTPUT_CAP_BYTES as u64,
        json_body_bytes: JSON_BODY_LIMIT_BYTES as u64,
        file_bytes: state.config.max_file_bytes,
    }
}

fn limit(min: u32, max: u32, default: u32) -> Limit {
    Limit {
        min: min.into(),
        max: max.into(),
        default: default.into(),
    }
}

/// The operating system and machine the server runs on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Platform {
    #[schema(example = "linux")]
    pub os: String,
    #[schema(example = "x86_64")]
    pub arch: String,
    /// Host kernel release, when readable.
    pub kernel: Option<String>,
    pub cpus: u32,
}

/// The accelerator new sandboxes get, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccelVerdict {
    pub accel: AccelName,
    pub reason: String,
    /// Duration of the timed KVM probe in milliseconds, when it ran.
    pub probe_ms: Option<f64>,
    /// Whether `/dev/kvm` opened and the probe guest ran. True does not
    /// mean KVM is fast.
    pub kvm_available: bool,
}

/// Outcome of one host check.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckOutcome {
    Ok,
    /// Sandboxes run, with a limit the detail names.
    Warn,
    /// Sandboxes cannot run until this is fixed.
    Fail,
}

/// One host check, as `smolvm doctor` runs it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Check {
    pub name: String,
    pub status: CheckOutcome,
    pub detail: String,
    /// Action that fixes a warning or failure.
    pub fix: Option<String>,
}

/// The host's readiness to run sandboxes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Diagnostics {
    pub version: String,
    pub platform: Platform,
    pub accel: AccelVerdict,
    /// False when any check failed.
    pub can_run_sandboxes: bool,
    pub checks: Vec<Check>,
    /// One line per failed or warning check, with its fix.
    pub problems: Vec<String>,
}

/// Check the host's readiness to run sandboxes.
///
/// Runs the same checks as `smolvm doctor`, which takes up to a few
/// seconds.
#[utoipa::path(
    get,
    path = "/sdk/v1/diagnostics",
    operation_id = "getDiagnostics",
    tag = "system",
    responses(
        (status = 200, description = "Host checks and the accelerator verdict", body = Diagnostics),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 500, description = "Server failure (`internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn get_diagnostics(
    State(state): State<AppState>,
) -> Result<Json<Diagnostics>, ApiError> {
    let paths = state.engine.paths().clone();
    let report = tokio::task::spawn_blocking(move || doctor::run_checks(&paths))
        .await
        .map_err(|e| ApiError::internal(ErrorCode::InternalError, "the host checks failed", e))?;

    let checks: Vec<Check> = report.checks.into_iter().map(Check::from).collect();
    let problems = checks
        .iter()
        .filter(|c| !matches!(c.status, CheckOutcome::Ok))
        .map(|c| match &c.fix {
            Some(fix) => format!("{}: {}; {fix}", c.name, c.detail),
            None => format!("{}: {}", c.name, c.detail),
        })
        .collect();
    Ok(Json(Diagnostics {
        version: VERSION.into(),
        platform: platform(),
        accel: AccelVerdict {
            accel: report.accel.accel.into(),
            reason: report.accel.reason,
            probe_ms: report.accel.probe_ms,
            kvm_available: report.accel.kvm_available,
        },
        can_run_sandboxes: !checks
            .iter()
            .any(|c| matches!(c.status, CheckOutcome::Fail)),
        checks,
        problems,
    }))
}

impl From<doctor::Check> for Check {
    fn from(check: doctor::Check) -> Self {
        let status = match check.status {
            CheckStatus::Ok => CheckOutcome::Ok,
            CheckStatus::Warn => CheckOutcome::Warn,
            CheckStatus::Fail => CheckOutcome::Fail,
        };
        Self {
            name: check.name,
            status,
            detail: check.detail,
            fix: check.fix,
        }
    }
}

fn platform() -> Platform {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok();
    Platform {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        kernel: kernel.map(|k| k.trim().to_owned()),
        cpus: limits::host_cpus(),
    }
}

/// Export metrics for Prometheus.
///
/// Sandboxes by state, and latency histograms of creates and buffered
/// execs made through this server, in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "system",
    responses(
        (status = 200, description = "Metrics in the Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 500, description = "Server failure (`internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let sandboxes = state.engine.list().await?;
    let states: Vec<_> = sandboxes.iter().map(|s| s.status).collect();
    let text = state.metrics.render(&states);
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Serves the OpenAPI document, the same one `smolvm openapi` prints.
pub(crate) async fn get_openapi() -> Response {
    let content_type = HeaderValue::from_static("application/json");
    (
        [(header::CONTENT_TYPE, content_type)],
        crate::openapi::openapi_json(),
    )
        .into_response()
}

/// Serves the interactive documentation page.
pub(crate) async fn get_docs() -> Html<&'static str> {
    Html(DOCS_HTML)
}
