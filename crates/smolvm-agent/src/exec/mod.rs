//! Running commands (`Exec` requests).
//!
//! Each exec gets its own thread. The thread validates the request, starts
//! the command in a new session (and cgroup, when available), sends
//! `Started`, runs the [`pump::Pump`] loop until the main process has
//! exited and its output is drained, and sends `Exited`. Frames that arrive
//! for the exec meanwhile (`Stdin`, `Credit`, `Signal`) reach the thread
//! through its [`ExecHandle`].

mod cgroup;
mod command;
mod handle;
mod pump;
mod spawn;
mod tree;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use smolvm_protocol::{ExecRequest, FailureKind, Frame, Message, RequestId};

pub(crate) use cgroup::Cgroups;
pub(crate) use command::Program;
pub(crate) use handle::ExecHandle;
pub(crate) use spawn::{ChildStdio, fork_exec};

use crate::log::log;
use crate::reaper;
use crate::session::{Active, Chain, Session};
use crate::sys;
use command::CommandError;
use pump::{Pipes, Pump};
use tree::ProcessTree;

/// Pipe capacity asked for the child's stdout and stderr, so one read can
/// fill a whole output frame. The kernel may grant less.
const PIPE_CAPACITY: libc::c_int = 256 * 1024;

/// Error that kept an exec from starting.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("failed to set up the command's stdin and output pipes")]
    Pipes(#[source] io::Error),
    #[error("failed to start the command")]
    Spawn(#[source] io::Error),
}

impl ExecError {
    fn kind(&self) -> FailureKind {
        match self {
            Self::Command(e) => e.kind(),
            Self::Pipes(_) | Self::Spawn(_) => FailureKind::Internal,
        }
    }
}

/// Registers the exec and starts its thread.
pub(crate) fn start(session: &Arc<Session>, id: RequestId, request: ExecRequest) {
    let handle = match ExecHandle::new() {
        Ok(handle) => handle,
        Err(e) => {
            let error = ExecError::Pipes(e);
            session.fail(id, error.kind(), Chain(&error));
            return;
        }
    };
    session.register(id, Active::Exec(handle.clone()));

    let thread_session = session.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("exec-{}", id.0))
        .spawn(move || run(&thread_session, id, &request, &handle));
    if let Err(e) = spawned {
        session.unregister(id);
        session.fail(id, FailureKind::Internal, Chain(&ExecError::Spawn(e)));
    }
}

fn run(session: &Session, id: RequestId, request: &ExecRequest, handle: &Arc<ExecHandle>) {
    let result = execute(session, id, request, handle);
    // Unregister before the final frame, so a `Signal` that follows
    // `Exited` gets the unknown-request failure.
    session.unregister(id);
    match result {
        Ok(Some(exited)) => {
            let _ = session.send(&Frame::new(exited));
        }
        Ok(None) => {}
        Err(e) => session.fail(id, e.kind(), Chain(&e)),
    }
}

/// Starts the command and pumps it to the end. `Ok(None)` means the host
/// went away and the exec was killed.
fn execute(
    session: &Session,
    id: RequestId,
    request: &ExecRequest,
    handle: &Arc<ExecHandle>,
) -> Result<Option<Message>, ExecError> {
    let program = command::prepare(request)?;
    let (pipes, child_ends) = open_pipes(request.stdin).map_err(ExecError::Pipes)?;
    let cgroup = session.settings().cgroups.as_ref().and_then(|cgroups| {
        cgroups
            .create()
            .inspect_err(|e| log!("exec {}: no cgroup, killing by session only: {e}", id.0))
            .ok()
    });

    let stdio = ChildStdio {
        stdin: child_ends[0].as_raw_fd(),
        stdout: child_ends[1].as_raw_fd(),
        stderr: child_ends[2].as_raw_fd(),
    };
    let procs = cgroup.as_ref().map(|c| c.procs_path());
    let on_exit = {
        let handle = handle.clone();
        Box::new(move |status| handle.set_exit(status))
    };
    let pid = reaper::spawn_watched(|| spawn::fork_exec(&program, stdio, procs), on_exit)
        .map_err(ExecError::Spawn)?;
    drop(child_ends);

    let tree = ProcessTree {
        leader: pid,
        cgroup,
    };
    let timeout = request.timeout_ms.map(Duration::from_millis);
    let outcome = match session.send(&Frame::new(Message::Started {
        id,
        pid: pid as u32,
    })) {
        Ok(()) => Pump::new(session, id, handle, &tree, pipes, request.window, timeout)
            .run()
            .ok(),
        Err(_) => {
            tree.kill_all();
            None
        }
    };

    if let (Some(cgroups), Some(cgroup)) = (&session.settings().cgroups, tree.cgroup) {
        cgroups.retire(cgroup);
    }
    Ok(outcome)
}

/// Creates the child's stdin (a pipe, or `/dev/null`), stdout and stderr.
/// Returns the parent's nonblocking ends and the child's ends in fd order.
fn open_pipes(with_stdin: bool) -> io::Result<(Pipes, [OwnedFd; 3])> {
    let (stdin_child, stdin_parent) = if with_stdin {
        let (read, write) = sys::pipe()?;
        sys::set_nonblocking(write.as_fd())?;
        (read, Some(File::from(write)))
    } else {
        (File::open("/dev/null")?.into(), None)
    };
    let (stdout_parent, stdout_child) = output_pipe()?;
    let (stderr_parent, stderr_child) = output_pipe()?;

    let pipes = Pipes {
        stdout: stdout_parent,
        stderr: stderr_parent,
        stdin: stdin_parent,
    };
    Ok((pipes, [stdin_child, stdout_child, stderr_child]))
}

fn output_pipe() -> io::Result<(File, OwnedFd)> {
    let (read, write) = sys::pipe()?;
    sys::set_nonblocking(read.as_fd())?;
    // SAFETY: F_SETPIPE_SZ takes an int argument and `read` is an open pipe.
    // Failure only leaves the default capacity.
    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_CAPACITY) };
    Ok((read.into(), write))
}

/// Handles a `Signal` frame.
pub(crate) fn signal(session: &Session, id: RequestId, signal: i32) {
    if !(1..=libc::SIGRTMAX()).contains(&signal) {
        let message = format!("signal {signal} is not a valid signal number");
        session.fail(id, FailureKind::InvalidRequest, message);
        return;
    }
    match session.exec(id) {
        Some(handle) => handle.signal(signal),
        None => {
            let message = format!("no running exec has request id {}", id.0);
            session.fail(id, FailureKind::UnknownRequest, message);
        }
    }
}
