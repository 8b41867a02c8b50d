//! Init mode: the agent as PID 1 of a sandbox.
//!
//! Boot steps, in order:
//! 1. mount `/dev`, `/proc` and `/sys` in the initramfs,
//! 2. load the kernel modules listed in `/modules/load.order`,
//! 3. mount the root disk and switch into it,
//! 4. mount the rest of the usual filesystems,
//! 5. start the reaper and a background `resize2fs`,
//! 6. apply the hostname and network from the kernel command line.
//!
//! Then the agent serves the host on the virtio-serial port until
//! `Shutdown`.
//!
//! A failed required step powers the sandbox off after logging why:
//! PID 1 must never exit, since the kernel panics when it does.

mod modules;
mod mounts;
mod network;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::exec::{Cgroups, ChildStdio, Program, fork_exec};
use crate::log::log;
use crate::reaper::{self, ExitStatus};
use crate::server;
use crate::session::{Chain, Mode, Settings};
use crate::shutdown;
use crate::sys;

/// Locations of resize2fs in the root filesystem.
const RESIZE2FS_PATHS: [&str; 2] = ["/sbin/resize2fs", "/usr/sbin/resize2fs"];

/// Parent of the per-exec cgroups.
const CGROUP_ROOT: &str = "/sys/fs/cgroup/smolvm";

/// Error from a required boot step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    #[error("failed to mount {target}")]
    Mount {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("root disk {device} did not appear within {waited_ms} ms")]
    RootMissing {
        device: &'static str,
        waited_ms: u128,
    },
    #[error("failed to switch to the root filesystem ({step})")]
    SwitchRoot {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to start the reaper thread")]
    Reaper(#[source] io::Error),
}

/// Boots the sandbox and serves the host; never returns.
pub(crate) fn run() -> ! {
    let start = Instant::now();
    match boot() {
        Ok(settings) => {
            log!("ready after {} ms", start.elapsed().as_millis());
            server::serve_port(&Arc::new(settings))
        }
        Err(e) => {
            log!("boot failed: {}", Chain(&e));
            shutdown::power_off()
        }
    }
}

fn boot() -> Result<Settings, InitError> {
    mounts::mount_kernel_filesystems()?;
    sys::ensure_std_fds(c"/dev/console");
    sys::ensure_std_fds(c"/dev/null");

    modules::load_all();
    mounts::mount_root()?;
    mounts::switch_root()?;
    mounts::mount_runtime_filesystems();

    reaper::start().map_err(InitError::Reaper)?;
    start_resize();
    network::configure(&network::Cmdline::read());

    let cgroups = Cgroups::new(Path::new(CGROUP_ROOT))
        .inspect_err(|e| log!("no per-exec cgroups, killing by session only: {e}"))
        .ok();
    Ok(Settings {
        mode: Mode::Init,
        cgroups,
    })
}

/// Starts `resize2fs` on the root disk in the background, so the
/// filesystem grows to the disk size the host chose without delaying
/// readiness. The reaper collects it.
fn start_resize() {
    let Some(path) = RESIZE2FS_PATHS.into_iter().find(|p| Path::new(p).exists()) else {
        return;
    };
    let Ok(program) = Program::helper(path, &[mounts::ROOT_DEVICE]) else {
        return;
    };
    let null = match File::options().read(true).write(true).open("/dev/null") {
        Ok(null) => null,
        Err(e) => return log!("not resizing the root filesystem: opening /dev/null failed: {e}"),
    };

    let fd = null.as_raw_fd();
    let stdio = ChildStdio {
        stdin: fd,
        stdout: fd,
        stderr: fd,
    };
    let on_exit = Box::new(|status| {
        if status != ExitStatus::Code(0) {
            log!("resize2fs {} failed: {status:?}", mounts::ROOT_DEVICE);
        }
    });
    if let Err(e) = reaper::spawn_watched(|| fork_exec(&program, stdio, None), on_exit) {
        log!("starting resize2fs failed: {e}");
    }
}
