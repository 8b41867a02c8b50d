//! File transfers: `WriteFile` (host to guest) and `ReadFile` (guest to
//! host).
//!
//! Writes are fed by the frame reader, chunk by chunk, into a temporary
//! file beside the target, so a failed or abandoned write never leaves a
//! partial file under the target's name. Reads run on their own thread and
//! honour the host's credit window.

mod read;
mod write;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use smolvm_protocol::{FailureKind, Frame, Message, RequestId};

pub(crate) use read::{ReadHandle, start_read};

use crate::session::{Chain, Session};
use write::Upload;

/// Largest `FileChunk` the agent sends.
const FILE_CHUNK: usize = 128 * 1024;

/// Error from a file request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("path {path} is not absolute")]
    NotAbsolute { path: String },
    #[error("path {path} does not name a file")]
    NoFileName { path: String },
    #[error("{path} is a directory")]
    IsDirectory { path: String },
    #[error("{path} is not a regular file")]
    NotRegularFile { path: String },
    #[error("parent directory {path} does not exist (set create_parents to create it)")]
    ParentMissing { path: String },
    #[error("parent {path} is not a directory")]
    ParentNotDirectory { path: String },
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl FileError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            Self::NotAbsolute { .. }
            | Self::NoFileName { .. }
            | Self::IsDirectory { .. }
            | Self::NotRegularFile { .. }
            | Self::ParentNotDirectory { .. } => FailureKind::InvalidPath,
            Self::ParentMissing { .. } => FailureKind::NotFound,
            Self::Io { source, .. } => io_kind(source),
        }
    }
}

fn io_kind(error: &io::Error) -> FailureKind {
    match error.raw_os_error() {
        Some(libc::ENOENT) => FailureKind::NotFound,
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => FailureKind::PermissionDenied,
        Some(libc::ENOTDIR | libc::EISDIR | libc::ELOOP | libc::ENAMETOOLONG) => {
            FailureKind::InvalidPath
        }
        _ => FailureKind::Internal,
    }
}

/// Checks that `path` is absolute and returns it as a path.
fn absolute(path: &str) -> Result<PathBuf, FileError> {
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(FileError::NotAbsolute {
            path: path.to_string(),
        })
    }
}

/// The uploads in progress on one session, owned by its frame reader.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    open: HashMap<RequestId, Option<Upload>>,
}

impl Uploads {
    pub(crate) fn contains(&self, id: RequestId) -> bool {
        self.open.contains_key(&id)
    }

    /// Handles `WriteFile`: opens the temporary file. A failed start is
    /// listed as `None` like a failed write, so the chunks and `FileEnd`
    /// the host sent meanwhile are dropped quietly.
    pub(crate) fn begin(
        &mut self,
        session: &Session,
        id: RequestId,
        path: &str,
        mode: u32,
        create_parents: bool,
    ) {
        match Upload::begin(path, mode, create_parents) {
            Ok(upload) => {
                self.open.insert(id, Some(upload));
            }
            Err(e) => {
                self.open.insert(id, None);
                session.fail(id, e.kind(), Chain(&e));
            }
        }
    }

    /// Abandons an upload: closes and removes its temporary file. The host
    /// gets no reply, since it cancelled the request itself.
    pub(crate) fn cancel(&mut self, id: RequestId) {
        self.open.remove(&id);
    }

    /// Handles a `FileChunk`. After a failed write the upload stays listed
    /// as `None`, so its remaining chunks are dropped quietly until
    /// `FileEnd`.
    pub(crate) fn write(&mut self, session: &Session, id: RequestId, data: &[u8]) {
        let Some(slot) = self.open.get_mut(&id) else {
            return unknown_upload(session, id);
        };
        let Some(upload) = slot else { return };
        if let Err(e) = upload.write(data) {
            *slot = None;
            session.fail(id, e.kind(), Chain(&e));
        }
    }

    /// Handles `FileEnd`: syncs and renames on its own thread, since
    /// `fsync` may take a while and the reader must keep serving frames.
    pub(crate) fn finish(&mut self, session: &Arc<Session>, id: RequestId) {
        let upload = match self.open.remove(&id) {
            None => return unknown_upload(session, id),
            Some(None) => return,
            Some(Some(upload)) => upload,
        };
        let thread_session = session.clone();
        let finishing = std::thread::Builder::new()
            .name(format!("write-{}", id.0))
            .spawn(move || complete(&thread_session, id, upload));
        if let Err(e) = finishing {
            // The upload moved into the closure and was dropped with it,
            // which removed the temporary file.
            let message = format!("failed to start finishing the write: {e}");
            session.fail(id, FailureKind::Internal, message);
        }
    }
}

fn complete(session: &Session, id: RequestId, upload: Upload) {
    match upload.finish() {
        Ok(bytes) => {
            let _ = session.send(&Frame::new(Message::FileWritten { id, bytes }));
        }
        Err(e) => session.fail(id, e.kind(), Chain(&e)),
    }
}

fn unknown_upload(session: &Session, id: RequestId) {
    let message = format!("no file write is in progress with request id {}", id.0);
    session.fail(id, FailureKind::UnknownRequest, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_failure_kinds() {
        let kind = |errno| io_kind(&io::Error::from_raw_os_error(errno));
        assert_eq!(kind(libc::ENOENT), FailureKind::NotFound);
        assert_eq!(kind(libc::EACCES), FailureKind::PermissionDenied);
        assert_eq!(kind(libc::ENOTDIR), FailureKind::InvalidPath);
        assert_eq!(kind(libc::ENOSPC), FailureKind::Internal);
    }

    #[test]
    fn relative_paths_rejected() {
        let err = absolute("etc/passwd").unwrap_err();
        assert_eq!(err.kind(), FailureKind::InvalidPath);
        assert_eq!(err.to_string(), "path etc/passwd is not absolute");
    }
}
