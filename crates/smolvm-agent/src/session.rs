//! One host connection: its writer and the requests in flight on it.
//!
//! Request ids are the host's and are unique within a session. When the
//! session ends (the host disconnected), every running exec is killed and
//! every file read stops, because no host is left to receive their frames.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smolvm_protocol::{FailureKind, Frame, Message, RequestId};

use crate::channel::{SendError, Writer};
use crate::exec::{Cgroups, ExecHandle};
use crate::files::ReadHandle;
use crate::log::log;

/// Whether the agent runs as init (PID 1 in a sandbox) or on a Unix socket
/// for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Init,
    Socket,
}

/// Settings shared by every session.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    /// Per-exec cgroups; `None` kills by process group and session only.
    pub(crate) cgroups: Option<Cgroups>,
}

/// A request that keeps running after its first frame was handled.
#[derive(Debug, Clone)]
pub(crate) enum Active {
    Exec(Arc<ExecHandle>),
    Read(Arc<ReadHandle>),
}

impl Active {
    fn abort(&self) {
        match self {
            Self::Exec(handle) => handle.abort(),
            Self::Read(handle) => handle.abort(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    writer: Writer,
    settings: Arc<Settings>,
    active: Mutex<HashMap<RequestId, Active>>,
}

impl Session {
    pub(crate) fn new(writer: Writer, settings: Arc<Settings>) -> Self {
        Self {
            writer,
            settings,
            active: Mutex::default(),
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn send(&self, frame: &Frame) -> Result<(), SendError> {
        let result = self.writer.send(frame);
        if let Err(e @ (SendError::Encode(_) | SendError::Io(_))) = &result {
            log!("sending a frame failed: {}", Chain(e));
        }
        result
    }

    /// Sends `Failed` for `id`. The request's failure is the host's to
    /// report, so it is not logged here.
    pub(crate) fn fail(&self, id: RequestId, kind: FailureKind, message: impl fmt::Display) {
        let _ = self.send(&Frame::new(Message::Failed {
            id,
            kind,
            message: message.to_string(),
        }));
    }

    fn active(&self) -> MutexGuard<'_, HashMap<RequestId, Active>> {
        self.active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns whether a request with this id is in flight.
    pub(crate) fn is_active(&self, id: RequestId) -> bool {
        self.active().contains_key(&id)
    }

    pub(crate) fn register(&self, id: RequestId, request: Active) {
        self.active().insert(id, request);
    }

    pub(crate) fn unregister(&self, id: RequestId) {
        self.active().remove(&id);
    }

    pub(crate) fn exec(&self, id: RequestId) -> Option<Arc<ExecHandle>> {
        match self.active().get(&id) {
            Some(Active::Exec(handle)) => Some(handle.clone()),
            _ => None,
        }
    }

    pub(crate) fn read(&self, id: RequestId) -> Option<Arc<ReadHandle>> {
        match self.active().get(&id) {
            Some(Active::Read(handle)) => Some(handle.clone()),
            _ => None,
        }
    }

    /// Stops sending and aborts every request in flight. Returns how many
    /// were aborted.
    pub(crate) fn end(&self) -> usize {
        self.writer.close();
        let active: Vec<Active> = self.active().values().cloned().collect();
        for request in &active {
            request.abort();
        }
        active.len()
    }

    /// Waits up to `limit` for aborted requests to finish (execs unregister
    /// once their processes are killed).
    pub(crate) fn wait_idle(&self, limit: Duration) {
        let start = Instant::now();
        while !self.active().is_empty() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Formats an error followed by its sources, separated by `: `.
#[derive(Debug)]
pub(crate) struct Chain<'a>(pub(crate) &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
