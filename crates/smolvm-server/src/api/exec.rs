//! `/sandboxes/{id}/exec`: run a command and collect its output, or
//! stream it as server-sent events.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use smolvm_engine::sandbox::{EngineError, ExecEvent, ExecOutput, ExecStream};
use smolvm_engine::spec::{self, ExecSpec};
use smolvm_engine::state::SandboxState;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode, error_response};
use crate::json::ApiJson;
use crate::teardown::Teardown;

/// Header on a `command_timeout` response saying whether the sandbox was
/// deleted. It is always `false`: a timeout kills the command, and the
/// sandbox stays usable.
pub const SANDBOX_DELETED_HEADER: HeaderName = HeaderName::from_static("x-smolvm-sandbox-deleted");

/// How often an idle exec stream sends a comment line. Writing to a
/// client that has gone away fails, which ends the stream and kills the
/// command, so this bounds how long an abandoned command runs on.
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How to run a command string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ShellMode {
    /// Through the guest user's login shell (`$SHELL -l -c COMMAND`), so
    /// `/etc/profile` applies.
    Login,
    /// Split into words by POSIX shell rules, without expansion, and run
    /// the program directly with no shell.
    Raw,
}

impl From<ShellMode> for spec::ShellMode {
    fn from(mode: ShellMode) -> Self {
        match mode {
            ShellMode::Login => Self::Login,
            ShellMode::Raw => Self::Raw,
        }
    }
}

/// A command to run in a sandbox.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Command to run inside the sandbox.
    #[schema(example = "echo hello")]
    pub command: String,
    /// Maximum seconds to wait for the command (1–3600, default 30). On
    /// timeout the command and everything it started are killed.
    #[schema(minimum = 1, maximum = 3600, example = 30)]
    pub timeout: Option<u64>,
    /// `login` (the default) or `raw`.
    pub shell: Option<ShellMode>,
    /// Absolute working directory in the guest; defaults to the user's home.
    #[schema(example = "/tmp")]
    pub cwd: Option<String>,
    /// Environment variables added to the command's environment. Values
    /// are passed as they are, never interpolated into a command line.
    pub env: Option<BTreeMap<String, String>>,
}

impl From<ExecRequest> for ExecSpec {
    fn from(body: ExecRequest) -> Self {
        Self {
            command: body.command,
            shell: body.shell.map(Into::into).unwrap_or_default(),
            cwd: body.cwd,
            env: body.env.unwrap_or_default().into_iter().collect(),
            timeout_secs: body.timeout,
        }
    }
}

/// The result of a command that ran to its exit, whatever its exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    /// Exit status, or 128 + N when the command was killed by signal N.
    pub exit_code: i32,
    /// Standard output, decoded as UTF-8; invalid bytes become U+FFFD.
    pub stdout: String,
    /// Standard error, decoded as UTF-8; invalid bytes become U+FFFD.
    pub stderr: String,
    /// Milliseconds the command ran.
    pub duration_ms: u64,
    /// Whether stdout passed the 32 MiB cap and the rest was dropped.
    pub stdout_truncated: bool,
    /// Whether stderr passed the 32 MiB cap and the rest was dropped.
    pub stderr_truncated: bool,
}

impl From<ExecOutput> for ExecResponse {
    fn from(output: ExecOutput) -> Self {
        Self {
            exit_code: output.exit_code,
            stdout: output.stdout,
            stderr: output.stderr,
            duration_ms: output.duration_ms,
            stdout_truncated: output.stdout_truncated,
            stderr_truncated: output.stderr_truncated,
        }
    }
}

/// The body of a `command_timeout` error: the error plus the output the
/// command wrote before it was killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandTimeoutBody {
    pub detail: String,
    /// Always `command_timeout`.
    #[schema(example = "command_timeout")]
    pub code: String,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Run a command inside a sandbox.
///
/// A command that exits non-zero is still a success (HTTP 200): check
/// `exit_code`, `stdout` and `stderr`. Output is kept up to 32 MiB per
/// stream; use `/exec/stream` for more.
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/exec",
    operation_id = "execCommand",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id", example = "sbx-4k2m9xq7ab")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The command ran to its exit, with any exit code", body = ExecResponse),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 404, description = "No sandbox has this id, or it was deleted while the command ran (`sandbox_not_found`)", body = ErrorBody),
        (status = 408, description = "The command timed out and was killed; the body has its partial output (`command_timeout`)", body = CommandTimeoutBody,
            headers(("X-SmolVM-Sandbox-Deleted" = String, description = "Always `false`: the sandbox stays usable"))),
        (status = 409, description = "The sandbox is not running (`invalid_state`)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid body; `field` names the field (`invalid_request`)", body = ErrorBody),
        (status = 500, description = "Lost contact with the sandbox, or server failure (`agent_error`, `internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn exec_command(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let spec = ExecSpec::from(body);
    let started = Instant::now();
    let output = match state.engine.exec(&id, &spec).await {
        Ok(output) => output,
        Err(error) => return Err(explain(&state, &id, error).await),
    };
    state.metrics.observe_exec(started.elapsed());

    let killed = output.signal.is_some() && !output.timed_out;
    let interrupted = if killed {
        interruption(&state, &id).await
    } else {
        None
    };
    if let Some(error) = interrupted {
        return Err(error);
    }
    if output.timed_out {
        return Ok(timeout_response(output, spec.timeout_secs()));
    }
    Ok(Json(ExecResponse::from(output)).into_response())
}

fn timeout_response(output: ExecOutput, timeout_secs: u64) -> Response {
    let code = ErrorCode::CommandTimeout;
    let body = CommandTimeoutBody {
        detail: format!(
            "the command did not finish within {timeout_secs} s and was killed with everything it \
             started; the sandbox is still usable. Pass a larger `timeout` (at most 3600 s)"
        ),
        code: code.as_str().to_owned(),
        exit_code: output.exit_code,
        stdout: output.stdout,
        stderr: output.stderr,
        duration_ms: output.duration_ms,
        stdout_truncated: output.stdout_truncated,
        stderr_truncated: output.stderr_truncated,
    };
    let mut response = error_response(code.status(), code, &body);
    response
        .headers_mut()
        .insert(SANDBOX_DELETED_HEADER, HeaderValue::from_static("false"));
    response
}

/// Turns an engine error into the API error, explaining a lost connection
/// when the sandbox was deleted or stopped while the command ran.
async fn explain(state: &AppState, id: &str, error: EngineError) -> ApiError {
    let interrupted = match error {
        EngineError::Agent { .. } => interruption(state, id).await,
        _ => None,
    };
    interrupted.unwrap_or_else(|| error.into())
}

/// Returns the error for a command cut short because its sandbox was
/// deleted or stopped while it ran, if that is what happened. Powering a
/// sandbox off terminates its commands, so such a command otherwise looks
/// like one that a signal killed.
async fn interruption(state: &AppState, id: &str) -> Option<ApiError> {
    let deleted = || {
        ApiError::new(
            ErrorCode::SandboxNotFound,
            format!("sandbox {id} was deleted while the command ran"),
        )
    };
    match state.teardowns.get(id) {
        Some(Teardown::Delete) => return Some(deleted()),
        Some(Teardown::Stop) => {
            let detail = format!("sandbox {id} was stopped while the command ran");
            return Some(ApiError::new(ErrorCode::InvalidState, detail));
        }
        None => {}
    }
    match state.engine.get(id).await {
        Err(EngineError::NotFound { .. }) => Some(deleted()),
        Ok(info) if info.status != SandboxState::Running => {
            let detail = format!("sandbox {id} became {} while the command ran", info.status);
            Some(ApiError::new(ErrorCode::InvalidState, detail))
        }
        _ => None,
    }
}

/// Output written by the command, one `stdout` or `stderr` event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecStreamOutput {
    /// The text, decoded as UTF-8 across chunk boundaries; invalid bytes
    /// become U+FFFD.
    pub data: String,
}

/// The last event of a stream, `exit`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecStreamExit {
    /// Exit status, or 128 + N when the command was killed by signal N.
    pub exit_code: i32,
    pub duration_ms: u64,
    /// Whether the command was killed for running past `timeout`.
    pub timed_out: bool,
    /// The signal that killed the command, if one did.
    pub signal: Option<i32>,
}

/// Run a command and stream its output.
///
/// Responds with server-sent events: `stdout` and `stderr` events carry an
/// ExecStreamOutput as the command writes, with no output cap. Then one
/// `exit` event carries an ExecStreamExit, or one `error` event carries an
/// ErrorBody if the stream fails. Closing the connection kills the command
/// and everything it started.
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/exec/stream",
    operation_id = "execCommandStream",
    tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id", example = "sbx-4k2m9xq7ab")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "Server-sent events: `stdout`, `stderr` (ExecStreamOutput), then `exit` (ExecStreamExit) or `error` (Error)",
            content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
        (status = 404, description = "No sandbox has this id (`sandbox_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`invalid_state`)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid body; `field` names the field (`invalid_request`)", body = ErrorBody),
        (status = 500, description = "Lost contact with the sandbox, or server failure (`agent_error`, `internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn exec_command_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let spec = ExecSpec::from(body);
    let exec = state.engine.exec_stream(&id, &spec).await?;
    let stream = event_stream(StreamState::new(exec, state, id));
    let keep_alive = KeepAlive::new().interval(STREAM_KEEP_ALIVE);
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

/// A running exec turned into server-sent events. Dropping it (the client
/// went away) drops the engine stream, which kills the command.
struct StreamState {
    exec: ExecStream,
    state: AppState,
    sandbox: String,
    stdout: Utf8Decoder,
    stderr: Utf8Decoder,
    ready: VecDeque<SseEvent>,
    finished: bool,
}

impl StreamState {
    fn new(exec: ExecStream, state: AppState, sandbox: String) -> Self {
        Self {
            exec,
            state,
            sandbox,
            stdout: Utf8Decoder::default(),
            stderr: Utf8Decoder::default(),
            ready: VecDeque::new(),
            finished: false,
        }
    }

    /// Reads engine events until at least one SSE event is ready, or the
    /// command has finished.
    async fn fill(&mut self) {
        while self.ready.is_empty() && !self.finished {
            match self.exec.next().await {
                Ok(Some(ExecEvent::Stdout(bytes))) => {
                    let text = self.stdout.decode(&bytes);
                    self.push_output("stdout", text);
                }
                Ok(Some(ExecEvent::Stderr(bytes))) => {
                    let text = self.stderr.decode(&bytes);
                    self.push_output("stderr", text);
                }
                Ok(Some(ExecEvent::Exited {
                    exit_code,
                    signal,
                    timed_out,
                    duration_ms,
                })) => {
                    self.flush_decoders();
                    let interrupted = if signal.is_some() && !timed_out {
                        interruption(&self.state, &self.sandbox).await
                    } else {
                        None
                    };
                    match interrupted {
                        Some(error) => self.push_json("error", &error.body()),
                        None => {
                            let exit = ExecStreamExit {
                                exit_code,
                                duration_ms,
                                timed_out,
                                signal,
                            };
                            self.push_json("exit", &exit);
                        }
                    }
                    self.finished = true;
                }
                Ok(None) => self.finished = true,
                Err(error) => {
                    let error = explain(&self.state, &self.sandbox, error).await;
                    error.log();
                    self.push_json("error", &error.body());
                    self.finished = true;
                }
            }
        }
    }

    fn push_output(&mut self, name: &str, text: String) {
        if !text.is_empty() {
            self.push_json(name, &ExecStreamOutput { data: text });
        }
    }

    fn flush_decoders(&mut self) {
        let stdout = self.stdout.finish();
        self.push_output("stdout", stdout);
        let stderr = self.stderr.finish();
        self.push_output("stderr", stderr);
    }

    fn push_json(&mut self, name: &str, data: &impl Serialize) {
        let event = SseEvent::default().event(name);
        let event = event
            .json_data(data)
            .expect("event payloads serialize to JSON");
        self.ready.push_back(event);
    }
}

fn event_stream(state: StreamState) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(state, |mut state| async move {
        state.fill().await;
        let event = state.ready.pop_front()?;
        Some((Ok(event), state))
    })
}

/// Decodes a byte stream as UTF-8 across chunk boundaries: a character
/// split between two chunks is held back until its last byte arrives.
#[derive(Debug, Default)]
struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    fn decode(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let complete = complete_prefix_len(&self.pending);
        let text = String::from_utf8_lossy(&self.pending[..complete]).into_owned();
        self.pending.drain(..complete);
        text
    }

    /// Returns what is held back, with an unfinished character as U+FFFD.
    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Returns the length of `bytes` without a trailing, unfinished UTF-8
/// sequence. Invalid bytes count as complete; the lossy decode replaces them.
fn complete_prefix_len(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte; the lead byte is further back
        }
        let needed = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if needed > back { len - back } else { len };
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse_json;

    #[test]
    fn exec_body_maps_to_spec() {
        let body: ExecRequest = parse_json(
            br#"{"command":"ls -l","timeout":5,"shell":"raw","cwd":"/tmp","env":{"B":"2","A":"1"}}"#,
        )
        .unwrap();
        let spec = ExecSpec::from(body);
        assert_eq!(spec.command, "ls -l");
        assert_eq!(spec.timeout_secs, Some(5));
        assert_eq!(spec.shell, spec::ShellMode::Raw);
        assert_eq!(spec.cwd.as_deref(), Some("/tmp"));
        assert_eq!(
            spec.env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2".to_owned())
            ]
        );
    }

    #[test]
    fn exec_body_defaults_to_login() {
        let spec = ExecSpec::from(parse_json::<ExecRequest>(br#"{"command":"true"}"#).unwrap());
        assert_eq!(spec.shell, spec::ShellMode::Login);
        assert_eq!(spec.timeout_secs, None);
    }

    #[test]
    fn missing_command_rejected() {
        let error = parse_json::<ExecRequest>(br#"{"timeout":5}"#).unwrap_err();
        assert_eq!(error.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(error.detail.contains("command"), "{}", error.detail);
    }

    #[test]
    fn bad_shell_names_field() {
        let error = parse_json::<ExecRequest>(br#"{"command":"x","shell":"bash"}"#).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("shell"));
    }

    #[test]
    fn timeout_response_has_partial_output() {
        let output = ExecOutput {
            exit_code: 137,
            stdout: "partial".into(),
            stderr: String::new(),
            duration_ms: 1000,
            stdout_truncated: false,
            stderr_truncated: false,
            timed_out: true,
            signal: Some(9),
        };
        let response = timeout_response(output, 1);
        assert_eq!(response.status(), axum::http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[SANDBOX_DELETED_HEADER], "false");
        assert_eq!(
            response.headers()[crate::error::ERROR_CODE_HEADER],
            "command_timeout"
        );
    }

    #[test]
    fn decoder_joins_split_characters() {
        let text = "héllo → 🦀";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut decoder = Utf8Decoder::default();
            let mut out = decoder.decode(&bytes[..split]);
            out.push_str(&decoder.decode(&bytes[split..]));
            out.push_str(&decoder.finish());
            assert_eq!(out, text, "split at {split}");
        }
    }

    #[test]
    fn decoder_replaces_invalid_bytes() {
        let mut decoder = Utf8Decoder::default();
        let mut out = decoder.decode(b"a\xffb");
        out.push_str(&decoder.decode(b"\xe2\x82"));
        out.push_str(&decoder.finish());
        assert_eq!(out, "a\u{fffd}b\u{fffd}");
    }
}
