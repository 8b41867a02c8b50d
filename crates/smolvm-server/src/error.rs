//! API errors: the stable error codes, their HTTP statuses, and the one
//! mapping from engine errors to them.
//!
//! Every error response has the body `{"detail": "...", "code": "..."}`
//! (plus `field` when one request field is at fault) and carries the code
//! in the `X-SmolVM-Error-Code` header. 4xx details state what was wrong
//! and how to fix it. 5xx details never include internals; the full error
//! chain is logged once, when the response is built.

use std::error::Error as StdError;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use smolvm_engine::accel::AccelError;
use smolvm_engine::host::error_chain;
use smolvm_engine::image::ImageError;
use smolvm_engine::sandbox::EngineError;
use smolvm_protocol::FailureKind;
use utoipa::ToSchema;

/// Header that repeats the stable error code of an error response.
pub const ERROR_CODE_HEADER: HeaderName = HeaderName::from_static("x-smolvm-error-code");

/// Stable error codes. Clients match on these, so a code is never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No sandbox has the id in the path.
    SandboxNotFound,
    /// The file named by `path` does not exist in the sandbox.
    FileNotFound,
    /// No route matches the request path.
    NotFound,
    /// The request method is not allowed on this path.
    MethodNotAllowed,
    /// A field of the request is invalid; `field` names it.
    InvalidRequest,
    /// The sandbox's state does not allow the operation.
    InvalidState,
    /// The command ran past its timeout and was killed.
    CommandTimeout,
    /// The guest denied access to a file.
    PermissionDenied,
    /// A token is configured and the request lacks it or has another one.
    Unauthorized,
    /// The `Host` header names neither a loopback name nor the configured host.
    HostNotAllowed,
    /// The `Origin` header names an origin that may not call this API.
    OriginNotAllowed,
    /// The body is not `application/json` where JSON is expected.
    UnsupportedMediaType,
    /// A JSON body is larger than the limit.
    BodyTooLarge,
    /// An uploaded file is larger than the configured limit.
    FileTooLarge,
    /// A program or permission that sandboxes need is missing on the host.
    HostUnavailable,
    /// The sandbox failed to boot.
    BootFailed,
    /// The server lost contact with the sandbox's agent or supervisor.
    AgentError,
    /// Any other server-side failure.
    InternalError,
}

impl ErrorCode {
    /// Returns the HTTP status for this code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::SandboxNotFound | Self::FileNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidState => StatusCode::CONFLICT,
            Self::CommandTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PermissionDenied | Self::HostNotAllowed | Self::OriginNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge | Self::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HostUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BootFailed | Self::AgentError | Self::InternalError => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Returns the code's text form, as in bodies and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SandboxNotFound => "sandbox_not_found",
            Self::FileNotFound => "file_not_found",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidState => "invalid_state",
            Self::CommandTimeout => "command_timeout",
            Self::PermissionDenied => "permission_denied",
            Self::Unauthorized => "unauthorized",
            Self::HostNotAllowed => "host_not_allowed",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTooLarge => "body_too_large",
            Self::FileTooLarge => "file_too_large",
            Self::HostUnavailable => "host_unavailable",
            Self::BootFailed => "boot_failed",
            Self::AgentError => "agent_error",
            Self::InternalError => "internal_error",
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Description of what went wrong and how to fix it.
    pub detail: String,
    pub code: ErrorCode,
    /// The request field at fault, as the caller spelled it (`memory`,
    /// `network.mode`, `env.FOO`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error response: a code, a detail for the client, and for server
/// errors the cause, which is logged but never sent.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    pub field: Option<String>,
    cause: Option<Box<dyn StdError + Send + Sync>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            field: None,
            cause: None,
        }
    }

    /// Creates a 422 `invalid_request` error about `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            field: Some(field),
            ..Self::new(ErrorCode::InvalidRequest, detail)
        }
    }

    /// Creates a server error whose `cause` is logged and never sent.
    pub fn internal(
        code: ErrorCode,
        detail: impl Into<String>,
        cause: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self {
            cause: Some(Box::new(cause)),
            ..Self::new(code, detail)
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            detail: self.detail.clone(),
            code: self.code,
            field: self.field.clone(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::NotFound { id } => Self::new(
                ErrorCode::SandboxNotFound,
                format!("sandbox {id} not found; GET /sandboxes lists the sandboxes on this host"),
            ),
            EngineError::Invalid(spec) => {
                let detail = spec.to_string();
                Self::invalid(spec.field, detail)
            }
            error @ EngineError::WrongState { .. } => {
                Self::new(ErrorCode::InvalidState, error.to_string())
            }
            EngineError::Image(image) => from_image_error(image),
            EngineError::Accel(accel) => from_accel_error(accel),
            error @ EngineError::HostUnavailable { .. } => {
                Self::new(ErrorCode::HostUnavailable, error.to_string())
            }
            EngineError::Guest { kind, message } => from_guest_failure(kind, message),
            error @ EngineError::Boot { .. } => {
                let detail = match &error {
                    EngineError::Boot { id, .. } if !id.is_empty() => {
                        format!("sandbox {id} failed to boot; the server log has the cause")
                    }
                    _ => "the sandbox failed to boot; the server log has the cause".to_owned(),
                };
                Self::internal(ErrorCode::BootFailed, detail, error)
            }
            error @ EngineError::Agent { .. } => {
                let detail = match &error {
                    EngineError::Agent { id, .. } if !id.is_empty() => {
                        format!("lost contact with sandbox {id}; the server log has the cause")
                    }
                    _ => "lost contact with the sandbox; the server log has the cause".to_owned(),
                };
                Self::internal(ErrorCode::AgentError, detail, error)
            }
            error @ (EngineError::Store(_) | EngineError::Io { .. }) => Self::internal(
                ErrorCode::InternalError,
                "internal server error; the server log has the cause",
                error,
            ),
        }
    }
}

/// Maps image errors: a bad reference is the caller's to fix (422), a
/// missing host tool or permission is the operator's (503), anything else
/// is a server error.
fn from_image_error(error: ImageError) -> ApiError {
    use ImageError as E;
    match error {
        E::InvalidReference { .. }
        | E::Unsupported { .. }
        | E::InvalidImageName { .. }
        | E::ImageNotFound { .. }
        | E::DiskNotFound { .. }
        | E::UnrecognizedDisk { .. } => ApiError::invalid("image", error.to_string()),
        E::AgentNotFound { .. }
        | E::AgentNotStatic { .. }
        | E::AgentNotElf { .. }
        | E::NotRoot { .. }
        | E::ToolMissing { .. }
        | E::KernelPackageNotFound { .. }
        | E::MirrorNotFound { .. } => ApiError::new(ErrorCode::HostUnavailable, error.to_string()),
        E::Io { .. }
        | E::Lock { .. }
        | E::InvalidManifest { .. }
        | E::ManifestFormat { .. }
        | E::MissingImageFile { .. }
        | E::CommandFailed { .. }
        | E::LoggedCommandFailed { .. }
        | E::KernelNotInPackage { .. }
        | E::ModuleNotFound { .. }
        | E::ModuleDependencyCycle { .. } => ApiError::internal(
            ErrorCode::InternalError,
            "the sandbox image could not be prepared; the server log has the cause",
            error,
        ),
    }
}

/// Maps accel errors: a bad `accel` field is the caller's (422); a bad
/// `SMOLVM_ACCEL` in the server's environment is the operator's (503).
fn from_accel_error(error: AccelError) -> ApiError {
    match error {
        AccelError::InvalidAccel { .. }
        | AccelError::InvalidChoice { .. }
        | AccelError::KvmUnusable { .. } => ApiError::invalid("accel", error.to_string()),
        AccelError::InvalidEnvChoice { .. } => {
            ApiError::new(ErrorCode::HostUnavailable, error.to_string())
        }
    }
}

/// Maps a failure the guest agent reported for a file or exec request.
fn from_guest_failure(kind: FailureKind, message: String) -> ApiError {
    match kind {
        FailureKind::NotFound => ApiError::new(ErrorCode::FileNotFound, message),
        FailureKind::InvalidPath => ApiError::invalid("path", message),
        FailureKind::InvalidRequest => ApiError::new(ErrorCode::InvalidRequest, message),
        FailureKind::PermissionDenied => ApiError::new(ErrorCode::PermissionDenied, message),
        FailureKind::UnknownRequest | FailureKind::Internal => ApiError::internal(
            ErrorCode::InternalError,
            "the sandbox's agent failed the request; the server log has the cause",
            GuestFailure { kind, message },
        ),
    }
}

/// A guest failure kept as the logged cause of a 500.
#[derive(Debug, thiserror::Error)]
#[error("the guest agent failed the request ({kind:?}): {message}")]
struct GuestFailure {
    kind: FailureKind,
    message: String,
}

impl ApiError {
    /// Logs the error with its cause chain if it is a server error. Client
    /// errors are the caller's to handle and are not logged.
    pub fn log(&self) {
        if self.status().is_server_error() {
            log_server_error(self);
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        error_response(self.status(), self.code, &self.body())
    }
}

/// Builds an error response: `body` as JSON with the code header set.
pub fn error_response(status: StatusCode, code: ErrorCode, body: &impl Serialize) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(ERROR_CODE_HEADER, HeaderValue::from_static(code.as_str()));
    if code == ErrorCode::Unauthorized {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn log_server_error(error: &ApiError) {
    let chain = match error.cause.as_deref() {
        Some(cause) => format!("{}: {}", error.detail, error_chain(cause)),
        None => error.detail.clone(),
    };
    tracing::error!(error.code = error.code.as_str(), error = %chain, "request failed");
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use smolvm_engine::client::ClientError;
    use smolvm_engine::spec::SpecError;
    use smolvm_engine::state::SandboxState;
    use smolvm_engine::store::StoreError;

    use super::*;

    fn io_error() -> io::Error {
        io::Error::other("secret internal detail /var/lib/x")
    }

    /// Every engine error variant, with the status and code it must map to.
    fn engine_cases() -> Vec<(EngineError, StatusCode, &'static str)> {
        vec![
            (
                EngineError::NotFound {
                    id: "sbx-2222222222".into(),
                },
                StatusCode::NOT_FOUND,
                "sandbox_not_found",
            ),
            (
                EngineError::Invalid(SpecError::new("memory", "too small")),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                EngineError::WrongState {
                    id: "sbx-2222222222".into(),
                    state: SandboxState::Stopped,
                    action: "run commands in",
                    hint: "",
                },
                StatusCode::CONFLICT,
                "invalid_state",
            ),
            (
                EngineError::Image(ImageError::InvalidReference {
                    reference: "x".into(),
                }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                EngineError::Image(ImageError::Unsupported {
                    reference: "s3://b/k".into(),
                    feature: "s3 references",
                }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                EngineError::Image(ImageError::NotRoot {
                    step: "debootstrap",
                }),
                StatusCode::SERVICE_UNAVAILABLE,
                "host_unavailable",
            ),
            (
                EngineError::Image(ImageError::Io {
                    action: "read",
                    path: "/x".into(),
                    source: io_error(),
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
            ),
            (
                EngineError::Accel(AccelError::KvmUnusable {
                    cause: "no /dev/kvm".into(),
                }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                EngineError::Accel(AccelError::InvalidEnvChoice { value: "x".into() }),
                StatusCode::SERVICE_UNAVAILABLE,
                "host_unavailable",
            ),
            (
                EngineError::HostUnavailable {
                    what: "no qemu".into(),
                    fix: "install it".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
                "host_unavailable",
            ),
            (
                EngineError::Boot {
                    id: "sbx-2222222222".into(),
                    reason: "secret".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "boot_failed",
            ),
            (
                EngineError::Guest {
                    kind: FailureKind::NotFound,
                    message: "no /x".into(),
                },
                StatusCode::NOT_FOUND,
                "file_not_found",
            ),
            (
                EngineError::Guest {
                    kind: FailureKind::InvalidPath,
                    message: "dir".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                EngineError::Guest {
                    kind: FailureKind::InvalidRequest,
                    message: "bad".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                EngineError::Guest {
                    kind: FailureKind::PermissionDenied,
                    message: "no".into(),
                },
                StatusCode::FORBIDDEN,
                "permission_denied",
            ),
            (
                EngineError::Guest {
                    kind: FailureKind::UnknownRequest,
                    message: "secret".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
            ),
            (
                EngineError::Guest {
                    kind: FailureKind::Internal,
                    message: "secret".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
            ),
            (
                EngineError::Agent {
                    id: "sbx-2222222222".into(),
                    source: ClientError::Timeout(Duration::from_secs(1)),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "agent_error",
            ),
            (
                EngineError::Store(StoreError::Corrupt {
                    id: "x".into(),
                    problem: "secret".into(),
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
            ),
            (
                EngineError::Io {
                    context: "secret".into(),
                    source: io_error(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
            ),
        ]
    }

    #[test]
    fn engine_errors_map_to_status_and_code() {
        for (error, status, code) in engine_cases() {
            let shown = format!("{error:?}");
            let api = ApiError::from(error);
            assert_eq!(api.status(), status, "{shown}");
            assert_eq!(api.code.as_str(), code, "{shown}");
        }
    }

    #[test]
    fn server_error_details_hide_causes() {
        for (error, status, _) in engine_cases() {
            if !status.is_server_error() {
                continue;
            }
            let api = ApiError::from(error);
            assert!(!api.detail.contains("secret"), "{}", api.detail);
            assert!(!api.detail.contains("/var/lib"), "{}", api.detail);
        }
    }

    #[test]
    fn invalid_spec_names_field() {
        let api = ApiError::from(EngineError::Invalid(SpecError::new(
            "disk_size",
            "too small",
        )));
        assert_eq!(api.field.as_deref(), Some("disk_size"));
        assert!(api.detail.contains("disk_size"), "{}", api.detail);
    }

    #[test]
    fn codes_have_distinct_text() {
        let codes = [
            ErrorCode::SandboxNotFound,
            ErrorCode::FileNotFound,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::InvalidRequest,
            ErrorCode::InvalidState,
            ErrorCode::CommandTimeout,
            ErrorCode::PermissionDenied,
            ErrorCode::Unauthorized,
            ErrorCode::HostNotAllowed,
            ErrorCode::OriginNotAllowed,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::BodyTooLarge,
            ErrorCode::FileTooLarge,
            ErrorCode::HostUnavailable,
            ErrorCode::BootFailed,
            ErrorCode::AgentError,
            ErrorCode::InternalError,
        ];
        let mut texts: Vec<_> = codes.iter().map(|c| c.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), codes.len());
        for code in codes {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str(), "serde and as_str disagree");
        }
    }

    #[test]
    fn response_carries_code_header() {
        let response = ApiError::new(ErrorCode::InvalidState, "stopped").into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[ERROR_CODE_HEADER], "invalid_state");
    }
}
