//! Thin safe wrappers over the libc calls the agent makes in more than one
//! place. Calls used by a single module live beside their caller.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// Turns a libc `-1`-on-error return value into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Turns a libc `ssize_t` return value into a byte count.
pub(crate) fn cvt_size(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// Converts a path to a C string; paths with a NUL byte are invalid input.
pub(crate) fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Opens `path` on each of descriptors 0, 1 and 2 that is closed, so that
/// descriptors the agent opens later never land there (children get their
/// stdio by `dup2` onto 0–2).
pub(crate) fn ensure_std_fds(path: &CStr) {
    for fd in 0..3 {
        // SAFETY: F_GETFD takes no pointer argument; it only probes `fd`.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // SAFETY: `path` is a valid C string. open returns the lowest free
        // descriptor, which is `fd` because the lower ones are open, or
        // fails and leaves `fd` closed.
        unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    }
}

/// Creates a pipe with both ends close-on-exec. Returns (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two c_ints, which is what pipe2
    // fills in.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and nothing
    // else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets `O_NONBLOCK` on a descriptor.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer argument; `fd` is open while borrowed.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL takes an int argument; `fd` is open while borrowed.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Waits for events on `fds`. Returns 0 on timeout or when a signal
/// interrupted the wait; `None` waits without a limit.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let timeout_ms = match timeout {
        // Round up so a 0.5 ms remainder does not turn into a busy loop.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
        None => -1,
    };
    // SAFETY: `fds` is a valid slice of pollfd structs and its length is
    // passed alongside it.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    match cvt(ret) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Builds a pollfd entry asking for `events` on `fd`.
pub(crate) fn pollfd(fd: BorrowedFd<'_>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

/// Sends `signal` to a process (`pid > 0`) or a process group (`pid < 0`).
pub(crate) fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers and has no memory effects.
    cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Returns the running kernel's release, as `uname -r` prints it.
pub(crate) fn kernel_release() -> String {
    // SAFETY: utsname is a struct of byte arrays, for which all zeroes is a
    // valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a writable utsname that uname fills in.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_string();
    }
    // SAFETY: uname succeeded, so `release` contains a NUL-terminated
    // string inside the array.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// Flushes every filesystem's dirty data to disk.
pub(crate) fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Mounts a filesystem. `source`, `fstype` and `data` are passed as given;
/// `None` passes a null pointer.
pub(crate) fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "mount argument contains NUL");
    let source = source.map(CString::new).transpose().map_err(invalid)?;
    let fstype = fstype.map(CString::new).transpose().map_err(invalid)?;
    let data = data.map(CString::new).transpose().map_err(invalid)?;
    let target = path_cstring(target)?;

    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is either null (allowed by mount(2) for these
    // arguments) or points to a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast::<libc::c_void>(),
        )
    };
    cvt(ret).map(drop)
}
