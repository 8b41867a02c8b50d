//! Shared helpers for end-to-end tests: run the real `smolvm` binary on a
//! private data directory that reuses the host's built default image.

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(unreachable_pub, reason = "a test helper module")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use smolvm_engine::Paths;

/// Returns why end-to-end tests cannot run here, if they cannot.
pub(crate) fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces for sandbox networking)".into());
    }
    if which("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 is not installed (run scripts/install-deps.sh)".into());
    }
    let manifest = shared_images_dir().join("default/manifest.json");
    if !manifest.exists() {
        return Some(format!(
            "the default image is not built ({} missing; run scripts/test.sh, which builds it)",
            manifest.display()
        ));
    }
    None
}

/// Prints a visible skip line and returns true when tests cannot run.
/// The line goes straight to stderr, past the test harness's capture, so
/// a skip shows in every run.
pub(crate) fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(reason) => {
            let line = format!("skipped: {test}: {reason}\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            true
        }
        None => false,
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The images directory of the invoking user's smolvm, shared by tests.
pub(crate) fn shared_images_dir() -> PathBuf {
    Paths::from_env().images_dir().to_path_buf()
}

static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

/// A private data directory for this test process, removed when the
/// process exits.
pub(crate) fn data_dir() -> &'static Path {
    DATA_DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("smolvm-e2e")
            .tempdir()
            .unwrap()
            .keep();
        // SAFETY: registering a plain `extern "C" fn` has no preconditions.
        unsafe { libc::atexit(remove_data_dir) };
        dir
    })
}

/// Removes the data directory at exit: statics are never dropped, so a
/// `TempDir` kept in one would leak.
extern "C" fn remove_data_dir() {
    if let Some(dir) = DATA_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A `smolvm` command on the test data directory.
pub(crate) fn smolvm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smolvm"));
    command
        .env("SMOLVM_DATA_DIR", data_dir())
        .env("SMOLVM_IMAGES_DIR", shared_images_dir())
        .stdin(Stdio::null());
    command
}

/// Runs `smolvm ARGS` and returns its output.
pub(crate) fn run(args: &[&str]) -> Output {
    smolvm().args(args).output().expect("smolvm runs")
}

/// Runs `smolvm ARGS` on the data directory `data_dir` instead.
pub(crate) fn run_in(data_dir: &Path, args: &[&str]) -> Output {
    smolvm()
        .env("SMOLVM_DATA_DIR", data_dir)
        .args(args)
        .output()
        .expect("smolvm runs")
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A sandbox created for one test and deleted when dropped.
pub(crate) struct Sandbox {
    pub(crate) id: String,
}

impl Sandbox {
    pub(crate) fn create(extra: &[&str]) -> Self {
        let mut args = vec!["sandbox", "create"];
        args.extend_from_slice(extra);
        let output = run(&args);
        assert!(
            output.status.success(),
            "create failed: {}",
            stderr(&output)
        );
        let id = stdout(&output).trim().to_owned();
        assert!(id.starts_with("sbx-"), "unexpected create output {id:?}");
        Self { id }
    }

    /// Runs `smolvm sandbox exec ID OPTIONS -- COMMAND`.
    pub(crate) fn exec(&self, options: &[&str], command: &[&str]) -> Output {
        let mut args = vec!["sandbox", "exec", self.id.as_str()];
        args.extend_from_slice(options);
        args.push("--");
        args.extend_from_slice(command);
        run(&args)
    }

    /// Runs a login-shell command and returns its stdout, asserting success.
    pub(crate) fn sh(&self, command: &str) -> String {
        let output = self.exec(&[], &[command]);
        assert!(
            output.status.success(),
            "{command:?} failed with {:?}: {}",
            output.status.code(),
            stderr(&output)
        );
        stdout(&output)
    }

    pub(crate) fn info(&self) -> serde_json::Value {
        let output = run(&["sandbox", "info", &self.id, "--json"]);
        assert!(output.status.success(), "info failed: {}", stderr(&output));
        serde_json::from_slice(&output.stdout).expect("info prints JSON")
    }

    pub(crate) fn dir(&self) -> PathBuf {
        data_dir().join("sandboxes").join(&self.id)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = run(&["sandbox", "delete", &self.id]);
    }
}

/// Pids of processes whose command line contains `needle`.
pub(crate) fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}
