//! The shared side of a running exec: what the frame reader and the reaper
//! hand to the exec's thread (credit, stdin, signals, the exit status) and
//! the wake pipe that interrupts the thread's `poll`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::reaper::ExitStatus;
use crate::sys;

/// Updates waiting for the exec's thread. The thread takes them all at once
/// with [`ExecHandle::take`].
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// Output bytes granted by `Credit` frames since the last take.
    pub(crate) credit: u64,
    /// Stdin chunks in arrival order.
    pub(crate) stdin: VecDeque<Vec<u8>>,
    /// The host closed stdin (an empty `Stdin` frame).
    pub(crate) stdin_closed: bool,
    /// Signals requested by the host.
    pub(crate) signals: Vec<i32>,
    /// The main process's exit status and when it was reaped.
    pub(crate) exit: Option<(ExitStatus, Instant)>,
    /// The session ended: kill everything and send nothing more.
    pub(crate) aborted: bool,
}

#[derive(Debug)]
pub(crate) struct ExecHandle {
    control: Mutex<Control>,
    wake_read: File,
    wake_write: File,
}

impl ExecHandle {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        let (read, write) = sys::pipe()?;
        sys::set_nonblocking(read.as_fd())?;
        sys::set_nonblocking(write.as_fd())?;
        Ok(Arc::new(Self {
            control: Mutex::default(),
            wake_read: read.into(),
            wake_write: write.into(),
        }))
    }

    pub(crate) fn add_credit(&self, bytes: u64) {
        self.update(|control| control.credit = control.credit.saturating_add(bytes));
    }

    /// Queues stdin bytes; an empty chunk closes stdin.
    pub(crate) fn push_stdin(&self, data: Vec<u8>) {
        self.update(|control| {
            if data.is_empty() {
                control.stdin_closed = true;
            } else {
                control.stdin.push_back(data);
            }
        });
    }

    pub(crate) fn signal(&self, signal: i32) {
        self.update(|control| control.signals.push(signal));
    }

    pub(crate) fn abort(&self) {
        self.update(|control| control.aborted = true);
    }

    /// Records the main process's exit; called by the reaper.
    pub(crate) fn set_exit(&self, status: ExitStatus) {
        self.update(|control| control.exit = Some((status, Instant::now())));
    }

    /// Takes every pending update and empties the wake pipe.
    pub(crate) fn take(&self) -> Control {
        let mut buf = [0u8; 64];
        while matches!((&self.wake_read).read(&mut buf), Ok(n) if n > 0) {}
        std::mem::take(&mut *self.lock())
    }

    /// Returns the descriptor to poll for updates.
    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake_read.as_fd()
    }

    fn update(&self, change: impl FnOnce(&mut Control)) {
        change(&mut self.lock());
        // A full pipe already contains a pending wake-up, so a failed write
        // loses nothing.
        let _ = (&self.wake_write).write(&[1]);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
