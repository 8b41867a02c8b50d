//! The files in one sandbox's directory, `sandboxes/<id>/`.

use std::path::{Path, PathBuf};

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes
/// with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Paths inside one sandbox's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    root: PathBuf,
}

impl SandboxDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The qcow2 overlay holding the sandbox's writes over its image.
    pub fn disk(&self) -> PathBuf {
        self.root.join("disk.qcow2")
    }

    /// QEMU's end of the agent channel.
    pub fn agent_socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.root.join("qmp.sock")
    }

    /// Where the supervisor serves clients.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("ctl.sock")
    }

    /// The guest's serial console output.
    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// The supervisor's own log, with QEMU's and slirp4netns's output.
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }

    /// What the supervisor launches, written by the engine before it spawns one.
    pub fn launch_config(&self) -> PathBuf {
        self.root.join("launch.json")
    }

    pub fn sockets(&self) -> [PathBuf; 3] {
        [
            self.agent_socket(),
            self.qmp_socket(),
            self.control_socket(),
        ]
    }

    /// Returns the longest socket path if it is too long for `bind`.
    pub fn socket_path_too_long(&self) -> Option<PathBuf> {
        self.sockets()
            .into_iter()
            .find(|p| p.as_os_str().len() > MAX_SOCKET_PATH)
    }

    /// Returns the last `max_bytes` of a log file, for error messages.
    pub fn log_tail(path: &Path, max_bytes: usize) -> String {
        let Ok(bytes) = std::fs::read(path) else {
            return String::new();
        };
        let start = bytes.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&bytes[start..]).trim().to_string()
    }
}
