//! smolvm guest agent.
//!
//! As PID 1 of a sandbox it boots the guest (see [`init`]) and then serves
//! the host on a virtio-serial port. With `--listen PATH` it serves the
//! same protocol on a Unix socket instead, without the boot steps, which is
//! how the tests drive it on a host without a sandbox.

mod channel;
mod dispatch;
mod exec;
mod files;
mod init;
mod log;
mod passwd;
mod procfs;
mod reaper;
mod server;
mod session;
mod shutdown;
mod sys;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use exec::Cgroups;
use session::{Mode, Settings};

const USAGE: &str = "\
usage: smolvm-agent                                 run as PID 1 inside a sandbox
       smolvm-agent --listen SOCKET [--cgroup-root DIR]
                                                    serve on a Unix socket (for tests);
                                                    DIR is a cgroup v2 directory for
                                                    per-exec cgroups
       smolvm-agent --version";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Init,
    Listen {
        socket: PathBuf,
        cgroup_root: Option<PathBuf>,
    },
    Version,
}

fn main() -> ExitCode {
    let command = if std::process::id() == 1 {
        // The kernel may pass unrecognised boot words as arguments to init;
        // as PID 1 they are ignored.
        Command::Init
    } else {
        match parse_args(std::env::args_os().skip(1)) {
            Ok(command) => command,
            Err(message) => {
                eprintln!("smolvm-agent: {message}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    };

    if let Err(e) = reaper::block_child_signal() {
        eprintln!("smolvm-agent: blocking SIGCHLD failed: {e}");
        return ExitCode::FAILURE;
    }
    match command {
        Command::Init => init::run(),
        Command::Listen {
            socket,
            cgroup_root,
        } => listen(&socket, cgroup_root.as_deref()),
        Command::Version => {
            println!("smolvm-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Command, String> {
    let mut socket = None;
    let mut cgroup_root = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .ok_or(format!("{name} needs a value"))
        };
        match arg.to_str() {
            Some("--listen") => socket = Some(value("--listen")?),
            Some("--cgroup-root") => cgroup_root = Some(value("--cgroup-root")?),
            Some("--version") => return Ok(Command::Version),
            _ => return Err(format!("unexpected argument {}", arg.to_string_lossy())),
        }
    }
    match socket {
        Some(socket) => Ok(Command::Listen {
            socket,
            cgroup_root,
        }),
        None if cgroup_root.is_some() => Err("--cgroup-root needs --listen".into()),
        None => Err("not PID 1: pass --listen SOCKET to serve on a Unix socket".into()),
    }
}

/// Socket mode: serves the protocol on `socket` until `Shutdown`.
fn listen(socket: &Path, cgroup_root: Option<&Path>) -> ExitCode {
    sys::ensure_std_fds(c"/dev/null");
    let cgroups = match cgroup_root.map(Cgroups::new).transpose() {
        Ok(cgroups) => cgroups,
        Err(e) => {
            eprintln!(
                "smolvm-agent: cgroup root {} is unusable: {e}",
                cgroup_root.unwrap_or(Path::new("")).display()
            );
            return ExitCode::FAILURE;
        }
    };

    let started = server::become_subreaper().and_then(|()| reaper::start());
    if let Err(e) = started {
        eprintln!("smolvm-agent: starting the reaper failed: {e}");
        return ExitCode::FAILURE;
    }
    let settings = Arc::new(Settings {
        mode: Mode::Socket,
        cgroups,
    });
    match server::serve_socket(socket, &settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smolvm-agent: serving {} failed: {e}", socket.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn parse_listen_with_cgroup_root() {
        let command = parse(&[
            "--listen",
            "/tmp/a.sock",
            "--cgroup-root",
            "/sys/fs/cgroup/x",
        ]);
        let expected = Command::Listen {
            socket: "/tmp/a.sock".into(),
            cgroup_root: Some("/sys/fs/cgroup/x".into()),
        };
        assert_eq!(command, Ok(expected));
    }

    #[test]
    fn parse_rejects_missing_listen() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
