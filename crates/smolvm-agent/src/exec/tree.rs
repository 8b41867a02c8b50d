//! All processes of one exec: the main process's process group and session
//! (both equal to its pid, from `setsid`) and, when cgroups are available,
//! its cgroup.
//!
//! Without a cgroup, a descendant that starts its own session escapes the
//! kill. The kernel does not reuse a pid while a process group or session
//! still carries it, so the ids stay valid after the main process is reaped.

use crate::procfs;
use crate::sys;

use super::cgroup::ExecCgroup;

/// How many times the session scan repeats, to catch processes forked
/// while an earlier round was killing.
const SESSION_KILL_ROUNDS: usize = 3;

#[derive(Debug)]
pub(crate) struct ProcessTree {
    /// The main process's pid, process group id and session id.
    pub(crate) leader: libc::pid_t,
    pub(crate) cgroup: Option<ExecCgroup>,
}

impl ProcessTree {
    /// Sends `signal` to the process group; SIGKILL goes to every process
    /// of the exec.
    pub(crate) fn signal(&self, signal: i32) {
        if signal == libc::SIGKILL {
            self.kill_all();
        } else {
            let _ = sys::kill(-self.leader, signal);
        }
    }

    /// Sends SIGKILL to the cgroup, the process group and the session.
    pub(crate) fn kill_all(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        let _ = sys::kill(-self.leader, libc::SIGKILL);
        kill_session(self.leader, libc::SIGKILL);
    }
}

/// Sends `signal` to every process whose session id is `session`.
fn kill_session(session: libc::pid_t, signal: i32) {
    let me = std::process::id() as libc::pid_t;
    for _ in 0..SESSION_KILL_ROUNDS {
        let members: Vec<libc::pid_t> = procfs::processes()
            .into_iter()
            .filter(|p| p.session == session && p.pid != me && p.state != 'Z')
            .map(|p| p.pid)
            .collect();
        if members.is_empty() {
            return;
        }
        for pid in members {
            let _ = sys::kill(pid, signal);
        }
    }
}
