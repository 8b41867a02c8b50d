//! `Shutdown`: stop every process, make the disk consistent and power off.
//! In socket mode the agent only stops its execs and exits.

use std::time::{Duration, Instant};

use smolvm_protocol::{Frame, Message, RequestId};

use crate::log::log;
use crate::procfs;
use crate::session::{Mode, Session};
use crate::sys;

/// Time processes get to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(1);

/// Time allowed for killed processes to disappear.
const KILL_WAIT: Duration = Duration::from_millis(500);

/// Handles `Shutdown`: replies, then powers off (or exits in socket mode).
pub(crate) fn shutdown(session: &Session, id: RequestId) {
    sys::sync();
    let _ = session.send(&Frame::new(Message::ShuttingDown { id }));
    match session.settings().mode {
        Mode::Init => power_off(),
        Mode::Socket => {
            session.end();
            session.wait_idle(KILL_WAIT);
            std::process::exit(0);
        }
    }
}

/// Stops all processes, remounts the root read-only and powers off. Only
/// for init mode: it signals every process on the system.
pub(crate) fn power_off() -> ! {
    log!("powering off");
    let _ = sys::kill(-1, libc::SIGTERM);
    let survivors = wait_for_processes(TERM_GRACE);
    if !survivors.is_empty() {
        log!("killing processes that outlived SIGTERM: {survivors:?}");
        let _ = sys::kill(-1, libc::SIGKILL);
        wait_for_processes(KILL_WAIT);
    }

    sys::sync();
    let read_only = libc::MS_REMOUNT | libc::MS_RDONLY;
    if let Err(e) = sys::mount(None, "/".as_ref(), None, read_only, None) {
        log!("remounting / read-only failed: {e}");
    }
    sys::sync();

    // SAFETY: reboot takes a plain command constant and has no memory
    // effects; on success it does not return.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    log!("power off failed: {}", std::io::Error::last_os_error());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Waits until no user process other than the agent is left, or `limit`
/// passes. Returns the pids still running. Zombies count as gone: the
/// reaper collects them.
fn wait_for_processes(limit: Duration) -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let remaining: Vec<libc::pid_t> = procfs::processes()
            .iter()
            .filter(|p| p.pid != me && p.state != 'Z' && !p.is_kernel_thread())
            .map(|p| p.pid)
            .collect();
        if remaining.is_empty() || start.elapsed() >= limit {
            return remaining;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
