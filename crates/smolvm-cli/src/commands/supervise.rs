//! `smolvm __supervise DIR`: the per-sandbox supervisor process.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The sandbox's directory.
    dir: PathBuf,
    /// Descriptor to report readiness on (`ok` or `error: ...`).
    #[arg(long)]
    ready_fd: Option<i32>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let ready = args.ready_fd.filter(|fd| *fd > 2).map(|fd| {
        // Keep the descriptor out of the VMM and slirp4netns: a copy held
        // open there would keep the engine waiting for the end of the pipe.
        // SAFETY: fcntl on a descriptor number has no memory-safety
        // preconditions; a bad number only yields EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the engine passes a pipe it opened as this descriptor
        // and nothing else in this process owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let code = smolvm_engine::supervisor::run(&args.dir, ready);
    ExitCode::from(code as u8)
}
