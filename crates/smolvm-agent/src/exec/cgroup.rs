//! One cgroup v2 group per exec, so every descendant of a command can be
//! found and killed, even one that started its own session.
//!
//! Groups live under one root (`/sys/fs/cgroup/smolvm` in the guest) as
//! `exec-<n>`. The child joins its group before `execve`, so all its
//! descendants are born inside it. A group whose processes outlive the
//! exec (`sleep 300 &`) cannot be removed yet. It is kept on a list and
//! removed by a later sweep once empty.

use std::ffi::{CStr, CString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{self, path_cstring};

/// The root under which exec groups are created.
#[derive(Debug)]
pub(crate) struct Cgroups {
    root: PathBuf,
    next: AtomicU64,
    /// Groups of finished execs that still had processes.
    retired: Mutex<Vec<PathBuf>>,
}

/// Most processes one exec and everything it starts may have at once, so a
/// fork bomb, even one left running in the background, stops growing.
const EXEC_PIDS_MAX: u32 = 1024;

/// Enables the `pids` and `cpu` controllers for the exec groups under
/// `root`. With `cpu`, each exec group gets a fair share of the CPU as a
/// whole, so a runaway command leaves room for the next exec. Failures are
/// ignored: a kernel without a controller still runs commands.
fn enable_controllers(root: &Path) {
    let mut dirs: Vec<&Path> = root
        .ancestors()
        .take_while(|d| d.join("cgroup.subtree_control").exists())
        .collect();
    // Parents first: a controller must be enabled above before below.
    dirs.reverse();
    for dir in dirs {
        for controller in ["+pids", "+cpu"] {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), controller);
        }
    }
}

/// The group of one exec.
#[derive(Debug)]
pub(crate) struct ExecCgroup {
    dir: PathBuf,
    procs: CString,
}

impl Cgroups {
    /// Creates `root` if needed and checks that it is a cgroup v2 directory.
    pub(crate) fn new(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        if !root.join("cgroup.procs").exists() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} is not a cgroup v2 directory", root.display()),
            ));
        }
        enable_controllers(root);
        Ok(Self {
            root: root.to_path_buf(),
            next: AtomicU64::new(1),
            retired: Mutex::default(),
        })
    }

    /// Creates the group for a new exec, after removing empty retired ones.
    pub(crate) fn create(&self) -> io::Result<ExecCgroup> {
        self.sweep();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(format!("exec-{n}"));
        std::fs::create_dir(&dir)?;
        // Best effort: without the pids controller the limit is absent.
        let _ = std::fs::write(dir.join("pids.max"), EXEC_PIDS_MAX.to_string());
        let procs = path_cstring(&dir.join("cgroup.procs"))?;
        Ok(ExecCgroup { dir, procs })
    }

    /// Removes the group of a finished exec, or keeps it for a later sweep
    /// while processes remain in it.
    pub(crate) fn retire(&self, cgroup: ExecCgroup) {
        if std::fs::remove_dir(&cgroup.dir).is_err() {
            self.retired().push(cgroup.dir);
        }
    }

    fn sweep(&self) {
        self.retired().retain(|dir| match std::fs::remove_dir(dir) {
            Ok(()) => false,
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        });
    }

    fn retired(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ExecCgroup {
    /// Path of `cgroup.procs`, which the child writes to join the group.
    pub(crate) fn procs_path(&self) -> &CStr {
        &self.procs
    }

    /// Sends SIGKILL to every process in the group. Uses `cgroup.kill`
    /// (Linux 5.14+), which also catches processes forked during the kill;
    /// on older kernels it kills the listed pids a few rounds over.
    pub(crate) fn kill(&self) {
        if std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for _ in 0..3 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
        }
    }

    fn pids(&self) -> Vec<libc::pid_t> {
        let text = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        text.lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }
}
