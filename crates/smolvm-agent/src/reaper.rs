//! The one place that waits for child processes.
//!
//! As PID 1 (or a child subreaper in socket mode) the agent inherits every
//! orphan, so one thread reaps all children with `waitpid(-1)` and routes
//! the exit status of watched processes (exec main processes) to a
//! callback. Nothing else may call `waitpid` or `Child::wait`: it would
//! race this thread for the status.
//!
//! SIGCHLD is blocked in every thread ([`block_child_signal`] runs before
//! any thread starts) and the reaper thread takes it with `sigtimedwait`.

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::log::log;
use crate::sys::cvt;

/// Exit status of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// It called `exit` with this status.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// Called once with the exit status of a watched process.
pub(crate) type ExitCallback = Box<dyn FnOnce(ExitStatus) + Send>;

/// Upper bound on one wait for SIGCHLD. Reaping also runs at this period,
/// so a lost wake-up delays a status by at most this long.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

static WATCHERS: OnceLock<Mutex<HashMap<libc::pid_t, ExitCallback>>> = OnceLock::new();

fn watchers() -> MutexGuard<'static, HashMap<libc::pid_t, ExitCallback>> {
    let table = WATCHERS.get_or_init(Mutex::default);
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Blocks SIGCHLD in the calling thread. Call it on the main thread before
/// starting any other thread, so every thread inherits the mask.
pub(crate) fn block_child_signal() -> io::Result<()> {
    let set = child_signal_set();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is
    // allowed.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

fn child_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it next.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable sigset_t and SIGCHLD is a valid signal.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    set
}

/// Starts the reaper thread.
pub(crate) fn start() -> io::Result<()> {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(run)
        .map(drop)
}

/// Runs `spawn` (which forks and returns the child's pid) and watches the
/// new process. The watcher table stays locked from before the fork until
/// the pid is registered, so a child that exits at once cannot be reaped
/// and routed before its callback is in place.
pub(crate) fn spawn_watched(
    spawn: impl FnOnce() -> io::Result<libc::pid_t>,
    on_exit: ExitCallback,
) -> io::Result<libc::pid_t> {
    let mut table = watchers();
    let pid = spawn()?;
    table.insert(pid, on_exit);
    Ok(pid)
}

fn run() {
    let set = child_signal_set();
    let timeout = libc::timespec {
        tv_sec: SWEEP_PERIOD.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    loop {
        while let Some((pid, status)) = reap_one() {
            route(pid, status);
        }
        // SAFETY: `set` and `timeout` are initialised and outlive the call;
        // a null siginfo pointer is allowed. Errors (timeout, EINTR) only
        // mean we sweep again.
        unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
    }
}

/// Reaps one exited child without blocking.
fn reap_one() -> Option<(libc::pid_t, ExitStatus)> {
    loop {
        let mut raw = 0;
        // SAFETY: `raw` is a writable int for the status.
        match cvt(unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) }) {
            Ok(0) => return None,
            Ok(pid) => {
                if let Some(status) = decode(raw) {
                    return Some((pid, status));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return None,
            Err(e) => {
                log!("waitpid failed: {e}");
                return None;
            }
        }
    }
}

fn decode(raw: libc::c_int) -> Option<ExitStatus> {
    if libc::WIFEXITED(raw) {
        Some(ExitStatus::Code(libc::WEXITSTATUS(raw)))
    } else if libc::WIFSIGNALED(raw) {
        Some(ExitStatus::Signal(libc::WTERMSIG(raw)))
    } else {
        None
    }
}

fn route(pid: libc::pid_t, status: ExitStatus) {
    let callback = watchers().remove(&pid);
    if let Some(callback) = callback {
        callback(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_exit_and_signal() {
        assert_eq!(decode(3 << 8), Some(ExitStatus::Code(3)));
        assert_eq!(
            decode(libc::SIGKILL),
            Some(ExitStatus::Signal(libc::SIGKILL))
        );
    }
}
