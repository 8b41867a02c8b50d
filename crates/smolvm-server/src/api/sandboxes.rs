//! `/sandboxes`: create, list, get, stop, start and delete sandboxes.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use smolvm_engine::sandbox::CreateProgress;
use smolvm_engine::spec::{self, CreateRequest};
use utoipa::ToSchema;

use super::model::{AccelChoiceName, BackendChoice, NetworkMode, Os, Sandbox};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::events::Event;
use crate::json::ApiJson;
use crate::teardown::Teardown;

/// A request to create a sandbox. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Guest operating system; omit it for the default Linux sandbox.
    pub os: Option<Os>,
    /// Image reference to boot: `default`, or `file:///ABSOLUTE/PATH` to a
    /// raw ext4 root filesystem or a qcow2 root disk. Omit it for the
    /// default image, which is built on first use.
    #[schema(example = "default")]
    pub image: Option<String>,
    /// Guest memory in MiB (128–16384, default 512).
    #[schema(minimum = 128, maximum = 16384, example = 512)]
    pub memory: Option<u32>,
    /// Guest disk size in MiB (512–262144, default 2048).
    #[schema(minimum = 512, maximum = 262144, example = 2048)]
    pub disk_size: Option<u32>,
    /// Runtime backend override; `auto` (the default) picks QEMU.
    pub backend: Option<BackendChoice>,
    /// Virtual CPUs, from 1 to the host's CPU count (default 1).
    #[schema(minimum = 1, example = 1)]
    pub cpus: Option<u32>,
    /// Network access; omit it for `{"mode": "open"}`.
    pub network: Option<NetworkRequest>,
    /// CPU accelerator; omit it for `auto`, or the server's `SMOLVM_ACCEL`.
    pub accel: Option<AccelChoiceName>,
}

/// Network settings of a new sandbox.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Network)]
pub struct NetworkRequest {
    pub mode: NetworkMode,
}

impl From<CreateSandboxRequest> for CreateRequest {
    fn from(body: CreateSandboxRequest) -> Self {
        Self {
            os: body.os.map(spec::Os::from),
            image: body.image,
            memory_mib: body.memory,
            disk_mib: body.disk_size,
            cpus: body.cpus,
            backend: body.backend.map(Into::into).unwrap_or_default(),
            accel: body.accel.map(Into::into),
            network: body.network.map(|n| n.mode.into()).unwrap_or_default(),
        }
    }
}

/// Checks that a `file://` image lies inside one of `roots`, after
/// resolving symlinks and `..`, and returns the reference to the resolved
/// path. Other references pass unchanged.
fn check_image_reference(image: &str, roots: &[std::path::PathBuf]) -> Result<String, ApiError> {
    let Some(path) = image.strip_prefix("file://") else {
        return Ok(image.to_owned());
    };
    if roots.is_empty() {
        return Err(ApiError::invalid(
            "image",
            "file:// images are disabled on this server; start it with --image-root DIR to allow images under DIR",
        ));
    }
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| ApiError::invalid("image", format!("cannot open image file {path}: {e}")))?;
    let allowed = roots
        .iter()
        .any(|root| std::fs::canonicalize(root).is_ok_and(|root| resolved.starts_with(root)));
    if !allowed {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(ApiError::invalid(
            "image",
            format!(
                "{path} is outside the allowed image directories ({}); move the image there",
                roots.join(", ")
            ),
        ));
    }
    Ok(format!("file://{}", resolved.display()))
}

/// Create, boot, and register a sandbox.
///
/// Returns once the sandbox accepts commands. The first create on a host
/// also builds the default image, which takes minutes; `GET /sdk/v1/events`
/// reports its progress. Boots beyond the host's core count wait in a queue.
#[utoipa::path(
    post,
    path = "/sandboxes",
    operation_id = "createSandbox",
    tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "The sandbox is running and accepts commands", body = Sandbox,
            headers(("Location" = String, description = "Path of the new sandbox"))),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid body; `field` names the field (`invalid_request`)", body = ErrorBody),
        (status = 500, description = "Boot or server failure (`boot_failed`, `internal_error`)", body = ErrorBody),
        (status = 503, description = "The host lacks a program or permission sandboxes need (`host_unavailable`)", body = ErrorBody),
    ),
)]
pub(crate) async fn create_sandbox(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateSandboxRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let events = state.events.clone();
    let progress = move |step: CreateProgress| {
        if let CreateProgress::Image(build) = step {
            events.publish(Event::image_build(build.step, build.steps, build.message));
        }
    };

    let mut request = CreateRequest::from(body);
    if let Some(image) = &request.image {
        request.image = Some(check_image_reference(image, &state.config.image_roots)?);
    }
    let created = state.engine.create(request, &progress).await;
    state.events.nudge();
    let sandbox = Sandbox::from(created?);
    state.metrics.observe_create(started.elapsed());
    tracing::info!(sandbox.id = %sandbox.id, elapsed_ms = started.elapsed().as_millis() as u64, "sandbox created");

    let location = HeaderValue::from_str(&format!("/sandboxes/{}", sandbox.id))
        .expect("sandbox ids are ASCII");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(sandbox),
    )
        .into_response())
}

/// List sandboxes on the host.
///
/// Includes sandboxes created by the CLI and other servers; states are
/// checked against the running processes first.
#[utoipa::path(
    get,
    path = "/sandboxes",
    operation_id = "listSandboxes",
    tag = "sandboxes",
    responses(
        (status = 200, description = "Every sandbox on the host", body = Vec<Sandbox>),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 500, description = "Server failure (`internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn list_sandboxes(
    State(state): State<AppState>,
) -> Result<Json<Vec<Sandbox>>, ApiError> {
    let list = state.engine.list().await?;
    Ok(Json(list.into_iter().map(Sandbox::from).collect()))
}

/// Get one sandbox's state.
#[utoipa::path(
    get,
    path = "/sandboxes/{id}",
    operation_id = "getSandbox",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id", example = "sbx-4k2m9xq7ab")),
    responses(
        (status = 200, description = "The sandbox", body = Sandbox),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 404, description = "No sandbox has this id (`sandbox_not_found`)", body = ErrorBody),
        (status = 500, description = "Server failure (`internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn get_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(state.engine.get(&id).await?.into()))
}

/// Stop and delete a sandbox.
///
/// Powers the sandbox off if it runs, then removes its disk and record.
/// A command running in it ends with an error.
#[utoipa::path(
    delete,
    path = "/sandboxes/{id}",
    operation_id = "deleteSandbox",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id", example = "sbx-4k2m9xq7ab")),
    responses(
        (status = 204, description = "The sandbox is gone"),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 404, description = "No sandbox has this id, for example because it was already deleted (`sandbox_not_found`)", body = ErrorBody),
        (status = 500, description = "Server failure (`internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleting = state.teardowns.begin(&id, Teardown::Delete);
    let deleted = state.engine.delete(&id).await;
    drop(deleting);
    state.events.nudge();
    deleted?;
    tracing::info!(sandbox.id = %id, "sandbox deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Power a running sandbox off, keeping its disk.
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/stop",
    operation_id = "stopSandbox",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id", example = "sbx-4k2m9xq7ab")),
    responses(
        (status = 200, description = "The sandbox, now stopped", body = Sandbox),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 404, description = "No sandbox has this id (`sandbox_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`invalid_state`)", body = ErrorBody),
        (status = 500, description = "Server failure (`internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn stop_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let stopping = state.teardowns.begin(&id, Teardown::Stop);
    let stopped = state.engine.stop(&id).await;
    drop(stopping);
    state.events.nudge();
    Ok(Json(stopped?.into()))
}

/// Boot a stopped sandbox again from its disk.
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/start",
    operation_id = "startSandbox",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id", example = "sbx-4k2m9xq7ab")),
    responses(
        (status = 200, description = "The sandbox, running again", body = Sandbox),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 404, description = "No sandbox has this id (`sandbox_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is neither stopped nor in error (`invalid_state`)", body = ErrorBody),
        (status = 500, description = "Boot or server failure (`boot_failed`, `internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn start_sandbox(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let started = state.engine.start(&id).await;
    state.events.nudge();
    Ok(Json(started?.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse_json;

    #[test]
    fn create_body_maps_to_engine_request() {
        let body: CreateSandboxRequest = parse_json(
            br#"{"os":"linux","image":"default","memory":256,"disk_size":1024,"backend":"qemu",
                "cpus":2,"network":{"mode":"off"},"accel":"tcg"}"#,
        )
        .unwrap();
        let request = CreateRequest::from(body);
        assert_eq!(request.os, Some(spec::Os::Linux));
        assert_eq!(request.image.as_deref(), Some("default"));
        assert_eq!(request.memory_mib, Some(256));
        assert_eq!(request.disk_mib, Some(1024));
        assert_eq!(request.cpus, Some(2));
        assert_eq!(request.backend, spec::BackendChoice::Qemu);
        assert_eq!(request.network, spec::NetworkMode::Off);
        assert_eq!(request.accel, Some(smolvm_engine::accel::AccelChoice::Tcg));
    }

    #[test]
    fn empty_create_body_uses_defaults() {
        let request = CreateRequest::from(parse_json::<CreateSandboxRequest>(b"{}").unwrap());
        assert_eq!(request, CreateRequest::default());
    }

    #[test]
    fn bad_network_mode_names_field() {
        let error =
            parse_json::<CreateSandboxRequest>(br#"{"network":{"mode":"closed"}}"#).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("network.mode"));
        assert!(error.detail.contains("open"), "{}", error.detail);
    }
}
