//! Running the host tools the builder calls (apt, dpkg-deb, depmod,
//! debootstrap, mke2fs), with errors that name the tool and its package.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::ImageError;

/// Lines of a failed command's log quoted in the error.
const TAIL_LINES: usize = 15;

/// A host program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub(crate) program: &'static str,
    pub(crate) package: &'static str,
}

pub(crate) const APT_CACHE: Tool = Tool {
    program: "apt-cache",
    package: "apt",
};
pub(crate) const APT_GET: Tool = Tool {
    program: "apt-get",
    package: "apt",
};
pub(crate) const DPKG_DEB: Tool = Tool {
    program: "dpkg-deb",
    package: "dpkg",
};
pub(crate) const DEPMOD: Tool = Tool {
    program: "depmod",
    package: "kmod",
};
pub(crate) const DEBOOTSTRAP: Tool = Tool {
    program: "debootstrap",
    package: "debootstrap",
};
pub(crate) const MKFS_EXT4: Tool = Tool {
    program: "mkfs.ext4",
    package: "e2fsprogs",
};
pub(crate) const XZ: Tool = Tool {
    program: "xz",
    package: "xz-utils",
};
pub(crate) const ZSTD: Tool = Tool {
    program: "zstd",
    package: "zstd",
};

impl Tool {
    pub(crate) fn command(self) -> Command {
        Command::new(self.program)
    }

    /// Returns a command whose process gets SIGTERM when the thread that
    /// spawned it exits, as when smolvm is killed, so that it runs its own
    /// cleanup (debootstrap unmounts `proc` and `sys` from its target).
    pub(crate) fn command_ending_with_parent(self) -> Command {
        let mut cmd = self.command();
        // SAFETY: the closure runs between fork and exec and only calls
        // prctl, which is async-signal-safe and touches no shared state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `cmd` and returns its standard output.
    pub(crate) fn output(self, cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        Err(ImageError::CommandFailed {
            program: self.program.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }

    /// Runs `cmd` with its output written to `log`, which starts with the
    /// command line.
    pub(crate) fn run_logged(self, cmd: &mut Command, log: &Path) -> Result<(), ImageError> {
        let mut file = File::create(log).map_err(ImageError::io("create", log))?;
        writeln!(file, "$ {cmd:?}").map_err(ImageError::io("write", log))?;
        let stderr = file.try_clone().map_err(ImageError::io("open", log))?;

        let status = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .status()
            .map_err(|e| self.spawn_error(e))?;
        if status.success() {
            return Ok(());
        }
        Err(ImageError::LoggedCommandFailed {
            program: self.program.to_owned(),
            status,
            log: log.to_owned(),
            tail: tail(log),
        })
    }

    fn spawn_error(self, source: std::io::Error) -> ImageError {
        if source.kind() == std::io::ErrorKind::NotFound {
            return ImageError::ToolMissing {
                tool: self.program,
                package: self.package,
                source,
            };
        }
        ImageError::Io {
            action: "run",
            path: self.program.into(),
            source,
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_package() {
        let tool = Tool {
            program: "smolvm-no-such-tool",
            package: "smolvm-pkg",
        };
        let err = tool.output(&mut tool.command()).unwrap_err();
        assert!(matches!(err, ImageError::ToolMissing { .. }), "{err}");
        assert!(err.to_string().contains("smolvm-pkg"), "{err}");
    }

    #[test]
    fn failed_command_quotes_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("step.log");
        let tool = Tool {
            program: "sh",
            package: "dash",
        };
        let mut cmd = tool.command();
        cmd.args(["-c", "echo first; echo oops >&2; exit 3"]);

        let err = tool.run_logged(&mut cmd, &log).unwrap_err();
        let ImageError::LoggedCommandFailed { status, tail, .. } = &err else {
            panic!("unexpected error {err}");
        };
        assert_eq!(status.code(), Some(3));
        assert!(tail.starts_with("$ "), "{tail}");
        assert!(tail.ends_with("first\noops"), "{tail}");
    }

    #[test]
    fn output_returns_stdout() {
        let tool = Tool {
            program: "sh",
            package: "dash",
        };
        let mut cmd = tool.command();
        cmd.args(["-c", "printf hello"]);
        assert_eq!(tool.output(&mut cmd).unwrap(), b"hello");
    }
}
