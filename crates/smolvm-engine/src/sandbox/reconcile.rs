//! Reconciling stored states with the processes that actually run.
//!
//! A sandbox whose supervisor died (killed, host crash) would otherwise
//! be listed as running forever. Listing checks each supervisor that
//! should be alive and moves sandboxes whose supervisor is gone to
//! `error`, killing a VMM left behind.

use std::time::{Duration, Instant, SystemTime};

use super::Engine;
use crate::id::SandboxId;
use crate::limits::BOOT_TIMEOUT_SECS;
use crate::state::SandboxState;
use crate::store::SandboxRecord;

impl Engine {
    /// Returns the record as it really is, updating the store when the
    /// sandbox's supervisor is gone.
    pub(super) fn reconcile(&self, record: SandboxRecord) -> SandboxRecord {
        if !record.state.has_supervisor() || self.supervisor_alive(&record) {
            return record;
        }
        // A create in another process may not have spawned its supervisor
        // yet; give it the boot timeout before calling it dead.
        if record.state == SandboxState::Creating && record.supervisor_pid.is_none() {
            let age = SystemTime::now()
                .duration_since(record.updated_at)
                .unwrap_or_default();
            if age < Duration::from_secs(BOOT_TIMEOUT_SECS + 30) {
                return record;
            }
        }

        let reason = "the sandbox's supervisor exited unexpectedly";
        tracing::warn!(sandbox.id = %record.id, "supervisor gone; marking the sandbox as error");
        let dir = self.sandbox_dir(&record.id);
        if let Some(vmm) = record.vmm_pid
            && process_mentions(vmm, dir.root().to_string_lossy().as_ref())
        {
            kill_and_wait(vmm, Duration::from_secs(2));
        }
        for socket in dir.sockets() {
            let _ = std::fs::remove_file(socket);
        }

        let from = [
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Stopping,
        ];
        let _ = self
            .store()
            .transition(&record.id, &from, SandboxState::Error, Some(reason));
        self.store()
            .get(&record.id)
            .ok()
            .flatten()
            .unwrap_or(record)
    }

    /// Reports whether the recorded supervisor runs and is really this sandbox's
    /// (a recycled pid belongs to some other program).
    pub(super) fn supervisor_alive(&self, record: &SandboxRecord) -> bool {
        record
            .supervisor_pid
            .is_some_and(|pid| is_supervisor_of(pid, &record.id))
    }
}

/// Reports whether `pid` is a live supervisor for sandbox `id`.
pub(super) fn is_supervisor_of(pid: u32, id: &SandboxId) -> bool {
    process_mentions(pid, id.as_str()) && process_mentions(pid, "__supervise")
}

/// Reports whether `pid` is a live, non-zombie process whose command line
/// contains `needle`.
pub(super) fn process_mentions(pid: u32, needle: &str) -> bool {
    if is_zombie_or_gone(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    text.contains(needle)
}

fn is_zombie_or_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state letter follows the command name, which is in parentheses
    // and may itself contain spaces or parentheses.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z") | Some("X") | None)
}

/// Sends SIGKILL to `pid` and waits up to `timeout` for it to be gone
/// (or a zombie, which keeps only its process table entry).
pub(crate) fn kill_and_wait(pid: u32, timeout: Duration) {
    let Ok(raw) = i32::try_from(pid) else { return };
    // SAFETY: kill has no memory-safety preconditions; a stale pid at
    // worst gets ESRCH.
    unsafe { libc::kill(raw, libc::SIGKILL) };

    let deadline = Instant::now() + timeout;
    while !is_zombie_or_gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `timeout` for `pid` to exit; returns whether it did.
pub(super) async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if is_zombie_or_gone(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_mentions_its_binary() {
        let pid = std::process::id();
        assert!(!is_zombie_or_gone(pid));
        assert!(!process_mentions(pid, "no-such-text-in-cmdline-7f3a"));
    }

    #[test]
    fn missing_process_is_gone() {
        // Pids above the kernel's pid_max (at most 2^22) never exist.
        assert!(is_zombie_or_gone(5_000_000));
        assert!(!process_mentions(5_000_000, ""));
    }

    #[test]
    fn kill_and_wait_ends_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        kill_and_wait(child.id(), Duration::from_secs(5));
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}
