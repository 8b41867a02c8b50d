//! `ReadFile`: sends `FileInfo`, then `FileChunk` frames within the host's
//! credit window, then `FileEnd`, from a thread of its own.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use smolvm_protocol::{FailureKind, Frame, Message, RequestId};

use super::{FILE_CHUNK, FileError, absolute};
use crate::session::{Active, Chain, Session};

/// Credit and cancellation for one read, shared with the frame reader.
#[derive(Debug, Default)]
pub(crate) struct ReadHandle {
    state: Mutex<ReadState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ReadState {
    credit: u64,
    aborted: bool,
}

impl ReadHandle {
    pub(crate) fn add_credit(&self, bytes: u64) {
        let mut state = self.lock();
        state.credit = state.credit.saturating_add(bytes);
        self.changed.notify_all();
    }

    pub(crate) fn abort(&self) {
        self.lock().aborted = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, ReadState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for credit and returns it, or `None` once aborted.
    fn wait_for_credit(&self) -> Option<u64> {
        let mut state = self.lock();
        while state.credit == 0 && !state.aborted {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        (!state.aborted).then_some(state.credit)
    }

    fn spend(&self, bytes: u64) {
        let mut state = self.lock();
        state.credit = state.credit.saturating_sub(bytes);
    }
}

/// Handles `ReadFile`: registers the read and starts its thread.
pub(crate) fn start_read(session: &Arc<Session>, id: RequestId, path: String, window: u64) {
    let handle = Arc::new(ReadHandle::default());
    handle.add_credit(window);
    session.register(id, Active::Read(handle.clone()));

    let thread_session = session.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("read-{}", id.0))
        .spawn(move || {
            let result = send_file(&thread_session, id, &path, &handle);
            thread_session.unregister(id);
            if let Err(e) = result {
                thread_session.fail(id, e.kind(), Chain(&e));
            }
        });
    if let Err(e) = spawned {
        session.unregister(id);
        session.fail(
            id,
            FailureKind::Internal,
            format!("failed to start the read: {e}"),
        );
    }
}

/// Sends the file. A session that ends midway stops the read quietly.
///
/// The file is read one chunk ahead of the credit, so end-of-file is known
/// without credit and `FileEnd` (which carries no data) never waits for it.
fn send_file(
    session: &Session,
    id: RequestId,
    path: &str,
    handle: &ReadHandle,
) -> Result<(), FileError> {
    let (mut file, size, mode) = open_regular(path)?;
    if session
        .send(&Frame::new(Message::FileInfo { id, size, mode }))
        .is_err()
    {
        return Ok(());
    }

    let mut chunk = vec![0u8; FILE_CHUNK];
    loop {
        let len = read_some(&mut file, &mut chunk).map_err(FileError::io("read", path.as_ref()))?;
        if len == 0 {
            let _ = session.send(&Frame::new(Message::FileEnd { id }));
            return Ok(());
        }

        let mut sent = 0;
        while sent < len {
            let Some(credit) = handle.wait_for_credit() else {
                return Ok(());
            };
            let n = (len - sent).min(usize::try_from(credit).unwrap_or(usize::MAX));
            let frame = Frame::with_data(Message::FileChunk { id }, chunk[sent..sent + n].to_vec());
            if session.send(&frame).is_err() {
                return Ok(());
            }
            handle.spend(n as u64);
            sent += n;
        }
    }
}

/// Opens `path` for reading and checks it is a regular file. Returns the
/// file, its size and its permission bits.
fn open_regular(path: &str) -> Result<(File, u64, u32), FileError> {
    let target = absolute(path)?;
    // O_NONBLOCK keeps opening a FIFO from waiting for a writer; it is
    // rejected below as not a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&target)
        .map_err(FileError::io("open", &target))?;
    let meta = file.metadata().map_err(FileError::io("inspect", &target))?;

    if meta.is_dir() {
        return Err(FileError::IsDirectory {
            path: path.to_string(),
        });
    }
    if !meta.is_file() {
        return Err(FileError::NotRegularFile {
            path: path.to_string(),
        });
    }
    Ok((file, meta.len(), meta.permissions().mode() & 0o7777))
}

fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
