//! Network isolation for a sandbox's VMM.
//!
//! QEMU's user-mode network maps the guest's gateway 10.0.2.2 to the
//! host's 127.0.0.1, which would let a guest reach every loopback service
//! on the host, the smolvm API included. So the VMM runs in its own network
//! namespace, where that loopback is empty and down, and `slirp4netns
//! --disable-host-loopback` connects the namespace outward.
//!
//! ```text
//! guest --virtio-net--> QEMU slirp --sockets--> [netns: tap0] --slirp4netns--> host network
//!                                                                      (host loopback refused)
//! ```

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// DNS address of slirp4netns inside the namespace; QEMU's own DNS proxy
/// forwards the guest's queries there.
const NAMESPACE_RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

const SLIRP_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors while isolating a VMM's network.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "failed to start slirp4netns; install it with scripts/install-deps.sh or create the sandbox with network off"
    )]
    SpawnSlirp(#[source] io::Error),
    #[error("slirp4netns did not become ready within {0:?}; see the sandbox's supervisor.log")]
    SlirpTimeout(Duration),
    #[error("slirp4netns exited before it was ready ({0}); see the sandbox's supervisor.log")]
    SlirpExited(String),
    #[error("failed to write {path}")]
    WriteResolvConf {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to create a pipe for slirp4netns")]
    Pipe(#[source] io::Error),
}

/// Writes the namespace's resolv.conf into the sandbox directory, for
/// [`isolate_network`] to bind over `/etc/resolv.conf`.
pub fn write_resolv_conf(sandbox_dir: &Path) -> Result<std::path::PathBuf, NetnsError> {
    let path = sandbox_dir.join("resolv.conf");
    std::fs::write(&path, NAMESPACE_RESOLV_CONF).map_err(|source| NetnsError::WriteResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

/// Makes `command` start in a new network and mount namespace, with
/// `resolv_conf` bound over `/etc/resolv.conf` there when given.
pub fn isolate_network(command: &mut Command, resolv_conf: Option<&Path>) {
    let resolv = resolv_conf.map(|path| {
        CString::new(path.as_os_str().as_encoded_bytes()).expect("sandbox paths contain no NUL")
    });
    let target = c"/etc/resolv.conf";

    // SAFETY: the closure runs in the forked child before exec. It calls
    // only the async-signal-safe syscalls unshare and mount, on C strings
    // built before the fork, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Keep the bind mount below out of the host's mount namespace.
            let root = c"/";
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(source) = &resolv {
                let bound = libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                // A host without /etc/resolv.conf has nothing to replace;
                // the guest then has no DNS but still routes by address.
                if bound != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A running slirp4netns attached to a VMM's namespace. It exits when this
/// handle is dropped (its exit pipe closes) or when the supervisor dies.
#[derive(Debug)]
pub struct Slirp {
    pub child: Child,
    _exit_pipe: OwnedFd,
}

impl Slirp {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Connects the namespace of process `pid` outward through slirp4netns
/// and waits until it is configured. Its output goes to `log`.
pub async fn start_slirp(pid: u32, log: std::fs::File) -> Result<Slirp, NetnsError> {
    let (ready_read, ready_write) = pipe()?;
    let (exit_read, exit_write) = pipe()?;

    let mut command = Command::new("slirp4netns");
    command
        .arg("--configure")
        .arg("--mtu=65520")
        .arg("--disable-host-loopback")
        .arg(format!("--ready-fd={}", ready_write.as_raw_fd()))
        .arg(format!("--exit-fd={}", exit_read.as_raw_fd()))
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(NetnsError::SpawnSlirp)?)
        .stderr(log)
        .kill_on_drop(true);
    let keep = [ready_write.as_raw_fd(), exit_read.as_raw_fd()];
    // SAFETY: runs in the forked child before exec; fcntl is
    // async-signal-safe and the fds were opened before the fork.
    unsafe {
        command.pre_exec(move || {
            for fd in keep {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(NetnsError::SpawnSlirp)?;
    drop(ready_write);
    drop(exit_read);

    // slirp4netns writes "1" to the ready fd once tap0 is configured.
    let mut ready = tokio::fs::File::from_std(std::fs::File::from(ready_read));
    let mut byte = [0u8; 1];
    let outcome = tokio::time::timeout(SLIRP_READY_TIMEOUT, ready.read(&mut byte)).await;
    match outcome {
        Ok(Ok(1)) => Ok(Slirp {
            child,
            _exit_pipe: exit_write,
        }),
        Ok(_) => {
            let status = child.try_wait().ok().flatten();
            Err(NetnsError::SlirpExited(
                status.map_or("no status".to_string(), |s| s.to_string()),
            ))
        }
        Err(_) => Err(NetnsError::SlirpTimeout(SLIRP_READY_TIMEOUT)),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), NetnsError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(NetnsError::Pipe(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and not
    // owned elsewhere.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
