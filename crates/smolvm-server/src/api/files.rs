//! `/sandboxes/{id}/files`: upload and download files as raw bytes,
//! streamed both ways.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use smolvm_engine::sandbox::FileReader;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::StreamReader;
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::json::ApiQuery;

/// Mode of an uploaded file when the request names none.
const DEFAULT_FILE_MODE: u32 = 0o644;

/// Header carrying a downloaded file's size when it was opened, in bytes.
const FILE_SIZE_HEADER: &str = "x-smolvm-file-size";

/// Query of a file download.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadFileQuery {
    /// Absolute path of the file in the sandbox.
    #[param(example = "/etc/os-release")]
    pub path: String,
}

/// Query of a file upload.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteFileQuery {
    /// Absolute path of the file in the sandbox; an existing file is replaced.
    #[param(example = "/tmp/data.bin")]
    pub path: String,
    /// Permission bits in octal (default `644`).
    #[param(example = "755")]
    pub mode: Option<String>,
    /// Whether to create missing parent directories (default `false`).
    pub create_parents: Option<bool>,
}

/// The result of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileWritten {
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
}

/// Upload a file into a sandbox.
///
/// The request body is the file's raw bytes, streamed to the guest. The
/// file appears whole or not at all. Bodies over the server's file size
/// limit are rejected with 413, before the upload starts when the request
/// has a `Content-Length`.
#[utoipa::path(
    put,
    path = "/sandboxes/{id}/files",
    operation_id = "writeFile",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id", example = "sbx-4k2m9xq7ab"), WriteFileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses(
        (status = 200, description = "The file was written", body = FileWritten),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin`, or the guest denied access (`host_not_allowed`, `origin_not_allowed`, `permission_denied`)", body = ErrorBody),
        (status = 404, description = "No sandbox has this id, or the parent directory is missing (`sandbox_not_found`, `file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`invalid_state`)", body = ErrorBody),
        (status = 413, description = "The file is larger than the server's limit (`file_too_large`)", body = ErrorBody),
        (status = 422, description = "Invalid `path` or `mode` (`invalid_request`)", body = ErrorBody),
        (status = 500, description = "Lost contact with the sandbox, or server failure (`agent_error`, `internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn write_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<WriteFileQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FileWritten>, ApiError> {
    let limit = state.config.max_file_bytes;
    let mode = parse_mode(query.mode.as_deref())?;
    if content_length(&headers).is_some_and(|length| length > limit) {
        return Err(file_too_large(limit));
    }

    let stream = body.into_data_stream().map_err(io::Error::other);
    let over_limit = Arc::new(AtomicBool::new(false));
    let mut reader = CappedReader::new(StreamReader::new(stream), limit, over_limit.clone());
    let create_parents = query.create_parents.unwrap_or(false);
    let written = state
        .engine
        .write_file(&id, &query.path, mode, create_parents, &mut reader)
        .await;

    // Going over the limit fails the engine's read; report the limit, not that.
    if over_limit.load(Ordering::Acquire) {
        return Err(file_too_large(limit));
    }
    Ok(Json(FileWritten {
        path: query.path,
        bytes: written?,
    }))
}

/// Download a file from a sandbox.
///
/// Responds with the file's raw bytes, streamed from the guest.
#[utoipa::path(
    get,
    path = "/sandboxes/{id}/files",
    operation_id = "readFile",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id", example = "sbx-4k2m9xq7ab"), ReadFileQuery),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("X-SmolVM-File-Size" = u64, description = "Size in bytes when the file was opened"))),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin`, or the guest denied access (`host_not_allowed`, `origin_not_allowed`, `permission_denied`)", body = ErrorBody),
        (status = 404, description = "No sandbox has this id, or no file has this path (`sandbox_not_found`, `file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`invalid_state`)", body = ErrorBody),
        (status = 422, description = "Invalid `path`, or it names a directory (`invalid_request`)", body = ErrorBody),
        (status = 500, description = "Lost contact with the sandbox, or server failure (`agent_error`, `internal_error`)", body = ErrorBody),
    ),
)]
pub(crate) async fn read_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ReadFileQuery>,
) -> Result<Response, ApiError> {
    let reader = state.engine.read_file(&id, &query.path).await?;
    let size = reader.size;

    let body = Body::from_stream(chunks(reader));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(FILE_SIZE_HEADER, HeaderValue::from(size));
    // A browser must never render guest-controlled bytes as a page of this
    // origin, where its scripts could call the API as the same origin.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    Ok(response)
}

/// Streams a file's chunks. An error mid-file ends the body early, which
/// the client sees as a truncated transfer; the status is already sent.
fn chunks(reader: FileReader) -> impl futures_util::Stream<Item = Result<Vec<u8>, io::Error>> {
    futures_util::stream::try_unfold(reader, |mut reader| async move {
        match reader.next_chunk().await {
            Ok(Some(chunk)) => Ok(Some((chunk, reader))),
            Ok(None) => Ok(None),
            Err(error) => {
                ApiError::from(error).log();
                Err(io::Error::other("reading the file from the sandbox failed"))
            }
        }
    })
}

/// Parses octal permission bits such as `644` or `0755`.
fn parse_mode(mode: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = mode else {
        return Ok(DEFAULT_FILE_MODE);
    };
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(bits) if bits <= 0o7777 => Ok(bits),
        _ => Err(ApiError::invalid(
            "mode",
            format!(
                "invalid mode {text:?}: expected octal permission bits from 0 to 7777, such as 644"
            ),
        )),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn file_too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::FileTooLarge,
        format!(
            "the file is larger than the server's limit of {limit} bytes; restart the server with a \
             larger --max-file-size to accept it"
        ),
    )
}

/// Reads at most `limit` bytes from `inner`; one byte more fails the read
/// and sets `over_limit`, so the engine aborts the upload.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    over_limit: Arc<AtomicBool>,
}

impl<R> CappedReader<R> {
    fn new(inner: R, limit: u64, over_limit: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            remaining: limit,
            over_limit,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CappedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            if read > this.remaining {
                // A failed read must leave the buffer as it found it.
                buf.set_filled(before);
                this.over_limit.store(true, Ordering::Release);
                return Poll::Ready(Err(io::Error::other("the file is larger than the limit")));
            }
            this.remaining -= read;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn modes_parsed_as_octal() {
        assert_eq!(parse_mode(None).unwrap(), 0o644);
        assert_eq!(parse_mode(Some("755")).unwrap(), 0o755);
        assert_eq!(parse_mode(Some("0600")).unwrap(), 0o600);
        assert_eq!(parse_mode(Some("0o4755")).unwrap(), 0o4755);
        for bad in ["", "999", "rwx", "17777", "-1"] {
            let error = parse_mode(Some(bad)).unwrap_err();
            assert_eq!(error.field.as_deref(), Some("mode"), "{bad}");
        }
    }

    #[tokio::test]
    async fn capped_reader_passes_up_to_limit() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut reader = CappedReader::new(&b"12345"[..], 5, flag.clone());
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"12345");
        assert!(!flag.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn capped_reader_fails_past_limit() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut reader = CappedReader::new(&b"123456"[..], 5, flag.clone());
        let mut out = Vec::new();
        assert!(reader.read_to_end(&mut out).await.is_err());
        assert!(flag.load(Ordering::Acquire));
    }
}
