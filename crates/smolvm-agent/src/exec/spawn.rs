//! `fork` and `execve` by hand.
//!
//! `std::process::Command` cannot be used: when `execve` fails it calls
//! `waitpid` on the child itself, which races the reaper thread and panics
//! when the reaper wins. Here the child reports a failed `execve` the way a
//! shell does, on its stderr with exit status 127 (not found) or 126 (found
//! but not executable), so every outcome arrives through the normal exec
//! path.
//!
//! Between `fork` and `execve` the child of a multithreaded process may only
//! make async-signal-safe calls: no allocation, no locks. Everything it
//! touches is prepared in the parent.

use std::ffi::{CStr, c_char};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};

use super::command::Program;
use crate::sys;

/// Descriptors the child gets as its stdin, stdout and stderr.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildStdio {
    pub(crate) stdin: RawFd,
    pub(crate) stdout: RawFd,
    pub(crate) stderr: RawFd,
}

/// Exit status of a child whose program was not found, as in a shell.
const EXIT_NOT_FOUND: i32 = 127;
/// Exit status of a child whose program could not be executed.
const EXIT_CANNOT_EXECUTE: i32 = 126;

/// Forks a child that starts a new session, joins `cgroup_procs` (a
/// `cgroup.procs` file) if given, and executes `program`. Returns the
/// child's pid, which is also its process group and session id.
///
/// Returns only after the child has its own session and cgroup, so that a
/// kill of the process group right after this call cannot miss it.
///
/// The caller must keep every descriptor open until this returns, and must
/// reap the child through the reaper.
pub(crate) fn fork_exec(
    program: &Program,
    stdio: ChildStdio,
    cgroup_procs: Option<&CStr>,
) -> io::Result<libc::pid_t> {
    let argv = null_terminated(&program.argv);
    let envp = null_terminated(&program.env);
    let (ready_read, ready_write) = sys::pipe()?;
    let setup = ChildSetup {
        stdio,
        cgroup_procs,
        ready: ready_write.as_raw_fd(),
    };

    // SAFETY: the child branch only calls `child`, which makes
    // async-signal-safe calls on data prepared above and never returns.
    let pid = match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        // SAFETY: we are the freshly forked child, as `child` requires.
        0 => unsafe { child(program, &setup, &argv, &envp) },
        pid => pid,
    };

    // The child writes one byte once it is set up; end-of-file means it
    // died first. Either way it is safe to go on.
    drop(ready_write);
    let mut ready = File::from(ready_read);
    let mut byte = [0u8; 1];
    while let Err(e) = ready.read(&mut byte) {
        if e.kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    Ok(pid)
}

/// Setup steps of the child before `execve`, prepared by the parent.
struct ChildSetup<'a> {
    stdio: ChildStdio,
    cgroup_procs: Option<&'a CStr>,
    /// Write end of the pipe that signals the parent once setup is done.
    ready: RawFd,
}

fn null_terminated(strings: &[std::ffi::CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Body of the forked child.
///
/// # Safety
///
/// Must run in the child right after `fork`, and `argv`/`envp` must be
/// null-terminated arrays of pointers into `program`'s strings.
unsafe fn child(
    program: &Program,
    setup: &ChildSetup<'_>,
    argv: &[*const c_char],
    envp: &[*const c_char],
) -> ! {
    let stdio = setup.stdio;
    // SAFETY: each call is async-signal-safe and gets pointers to data that
    // the parent prepared and that stays valid in this copy of its memory.
    unsafe {
        // The agent blocks SIGCHLD and ignores SIGPIPE. Blocked masks and
        // ignored dispositions survive execve, so reset both.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        libc::setsid();
        if let Some(procs) = setup.cgroup_procs {
            join_cgroup(procs);
        }
        libc::write(setup.ready, b"1".as_ptr().cast(), 1);
        libc::close(setup.ready);

        if !(redirect(stdio.stdin, 0) && redirect(stdio.stdout, 1) && redirect(stdio.stderr, 2)) {
            libc::_exit(EXIT_CANNOT_EXECUTE);
        }
        if libc::chdir(program.cwd.as_ptr()) != 0 {
            write_error(program, b"cannot change to the working directory\n", None);
            libc::_exit(EXIT_CANNOT_EXECUTE);
        }

        let mut denied = false;
        let mut failure = libc::ENOENT;
        for candidate in &program.candidates {
            libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
            match *libc::__errno_location() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => denied = true,
                errno => {
                    failure = errno;
                    break;
                }
            }
        }
        if denied && failure == libc::ENOENT {
            failure = libc::EACCES;
        }
        report_exec_failure(program, failure)
    }
}

/// Moves the calling process into the cgroup ("0" names the writer).
/// Failure leaves the process where it is; killing then falls back to the
/// process group and session.
///
/// # Safety
///
/// Only async-signal-safe calls; `procs` is a valid C string.
unsafe fn join_cgroup(procs: &CStr) {
    // SAFETY: see the function's contract.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

/// Makes `from` the descriptor `to`, without close-on-exec.
///
/// # Safety
///
/// Only async-signal-safe calls on plain integers.
unsafe fn redirect(from: RawFd, to: RawFd) -> bool {
    // SAFETY: dup2 and fcntl(F_SETFD) take plain integers.
    unsafe {
        if from == to {
            libc::fcntl(to, libc::F_SETFD, 0) == 0
        } else {
            libc::dup2(from, to) == to
        }
    }
}

/// Writes a shell-style message for a failed `execve` and exits.
///
/// # Safety
///
/// Only async-signal-safe calls.
unsafe fn report_exec_failure(program: &Program, errno: i32) -> ! {
    let (message, status): (&[u8], i32) = match errno {
        libc::ENOENT if program.searched_path => (b"command not found\n", EXIT_NOT_FOUND),
        libc::ENOENT => (b"No such file or directory\n", EXIT_NOT_FOUND),
        libc::EACCES => (b"Permission denied\n", EXIT_CANNOT_EXECUTE),
        libc::ENOEXEC => (
            b"cannot execute binary file: Exec format error\n",
            EXIT_CANNOT_EXECUTE,
        ),
        libc::E2BIG => (b"Argument list too long\n", EXIT_CANNOT_EXECUTE),
        _ => {
            // SAFETY: write_error and _exit are async-signal-safe.
            unsafe {
                write_error(program, b"cannot execute: errno ", Some(errno));
                libc::_exit(EXIT_CANNOT_EXECUTE)
            }
        }
    };
    // SAFETY: write_error and _exit are async-signal-safe.
    unsafe {
        write_error(program, message, None);
        libc::_exit(status)
    }
}

/// Writes `smolvm: NAME: MESSAGE` to stderr, then `errno` and a newline
/// if given, formatted without allocating.
///
/// # Safety
///
/// Only async-signal-safe calls.
unsafe fn write_error(program: &Program, message: &[u8], errno: Option<i32>) {
    let mut digits = [0u8; 12];
    let mut start = digits.len();
    if let Some(mut n) = errno.map(i32::unsigned_abs) {
        digits[digits.len() - 1] = b'\n';
        start -= 1;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
    }

    for part in [
        b"smolvm: ".as_slice(),
        &program.name,
        b": ",
        message,
        &digits[start..],
    ] {
        // SAFETY: `part` is a valid slice; a short write only shortens the
        // message.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
}
