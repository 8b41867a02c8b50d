//! Host checks behind `smolvm doctor`: the tools, permissions, files and
//! accel that running sandboxes needs, each with a fix when it fails.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accel::{self, ACCEL_ENV, AccelChoice, AccelVerdict};
use crate::host::{error_chain, is_root};
use crate::paths::Paths;

const QEMU_SYSTEM: &str = "qemu-system-x86_64";
const QEMU_IMG: &str = "qemu-img";
const SLIRP4NETNS: &str = "slirp4netns";
const UNSHARE: &str = "unshare";

/// Oldest QEMU major version the QEMU backend is meant for; older ones get a warning.
const MIN_QEMU_MAJOR: u32 = 8;

/// Cap on each external command a check runs, so a hung tool cannot hang
/// `smolvm doctor`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

const INSTALL_DEPS_FIX: &str = "run `scripts/install-deps.sh` as root";

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    /// Sandboxes run, but with a limit the detail names.
    Warn,
    /// Sandboxes cannot run until this is fixed.
    Fail,
}

/// One host check and what it found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    /// Action that resolves the warning or failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: CheckStatus::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        let (detail, fix) = (detail.into(), Some(fix.into()));
        Self {
            name: name.into(),
            status: CheckStatus::Warn,
            detail,
            fix,
        }
    }

    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        let (detail, fix) = (detail.into(), Some(fix.into()));
        Self {
            name: name.into(),
            status: CheckStatus::Fail,
            detail,
            fix,
        }
    }
}

/// All checks plus the accel sandboxes would use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
    pub accel: AccelVerdict,
}

impl DoctorReport {
    /// True when no check failed; warnings still allow sandboxes.
    pub fn can_run_sandboxes(&self) -> bool {
        self.checks
            .iter()
            .all(|check| check.status != CheckStatus::Fail)
    }
}

/// Errors from running an external tool during a check.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("`{program}` not found on PATH")]
    NotFound { program: String },

    #[error("starting `{program}` failed")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("waiting for `{program}` failed")]
    Wait {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("`{program}` did not finish within {} s and was killed", timeout.as_secs())]
    TimedOut { program: String, timeout: Duration },
}

/// Runs every host check. Creates the data directory if it is missing, and
/// may run the KVM probe (see [`accel::detect`]).
pub fn run_checks(paths: &Paths) -> DoctorReport {
    let mut checks = vec![
        check_qemu(QEMU_SYSTEM),
        check_qemu_img(QEMU_IMG),
        check_microvm(QEMU_SYSTEM),
        check_slirp4netns(SLIRP4NETNS),
        check_network_namespaces(UNSHARE, is_root()),
        check_data_dir(paths.data_dir()),
        check_default_image(paths.images_dir()),
    ];

    let (accel_check, accel) = check_accel(paths);
    checks.push(accel_check);
    DoctorReport { checks, accel }
}

fn check_qemu(program: &str) -> Check {
    match run_command(program, &["--version"], COMMAND_TIMEOUT) {
        Ok(output) => assess_qemu_version(&output.stdout),
        Err(e) => Check::fail("qemu", error_chain(&e), INSTALL_DEPS_FIX),
    }
}

/// Judges the output of `qemu-system-x86_64 --version`.
fn assess_qemu_version(version_output: &str) -> Check {
    let Some((version, major)) = parse_qemu_version(version_output) else {
        let first_line = version_output.lines().next().unwrap_or("");
        return Check::warn(
            "qemu",
            format!("could not read the QEMU version from `{first_line}`"),
            format!("check that it is QEMU {MIN_QEMU_MAJOR} or newer"),
        );
    };

    if major < MIN_QEMU_MAJOR {
        return Check::warn(
            "qemu",
            format!("QEMU {version} is older than {MIN_QEMU_MAJOR}.0 and untested"),
            format!("install QEMU {MIN_QEMU_MAJOR} or newer: {INSTALL_DEPS_FIX}"),
        );
    }
    Check::ok("qemu", format!("QEMU {version}"))
}

/// Returns the version text and major number from "QEMU emulator version
/// 10.0.2 (Debian …)".
fn parse_qemu_version(version_output: &str) -> Option<(String, u32)> {
    let first_line = version_output.lines().next()?;
    let rest = &first_line[first_line.find("version ")? + "version ".len()..];
    let version = rest.split_whitespace().next()?;
    let major = version.split('.').next()?.parse().ok()?;
    Some((version.to_owned(), major))
}

fn check_qemu_img(program: &str) -> Check {
    match run_command(program, &["--version"], COMMAND_TIMEOUT) {
        Ok(output) => {
            let first_line = output.stdout.lines().next().unwrap_or("").trim();
            Check::ok("qemu-img", first_line)
        }
        Err(e) => Check::fail("qemu-img", error_chain(&e), INSTALL_DEPS_FIX),
    }
}

fn check_microvm(qemu_program: &str) -> Check {
    match run_command(qemu_program, &["-machine", "help"], COMMAND_TIMEOUT) {
        Ok(output) => assess_machine_list(&output.stdout),
        Err(e) => Check::fail("microvm machine", error_chain(&e), INSTALL_DEPS_FIX),
    }
}

/// Judges the output of `qemu-system-x86_64 -machine help`, whose lines
/// start with the machine name.
fn assess_machine_list(machine_list: &str) -> Check {
    let has_microvm = machine_list
        .lines()
        .any(|line| line.split_whitespace().next() == Some("microvm"));

    if has_microvm {
        Check::ok("microvm machine", "QEMU lists the `microvm` machine type")
    } else {
        Check::fail(
            "microvm machine",
            format!("`{QEMU_SYSTEM} -machine help` does not list `microvm`"),
            format!("install a QEMU build with the microvm machine: {INSTALL_DEPS_FIX}"),
        )
    }
}

fn check_slirp4netns(program: &str) -> Check {
    match run_command(program, &["--version"], COMMAND_TIMEOUT) {
        Ok(output) => {
            let first_line = output.stdout.lines().next().unwrap_or("").trim();
            Check::ok("slirp4netns", first_line)
        }
        Err(e) => Check::warn(
            "slirp4netns",
            format!(
                "{}: without it only `network off` sandboxes work",
                error_chain(&e)
            ),
            INSTALL_DEPS_FIX,
        ),
    }
}

/// Creates a throwaway network namespace with `unshare`, through a user
/// namespace unless running as root.
fn check_network_namespaces(unshare_program: &str, as_root: bool) -> Check {
    let args: &[&str] = if as_root {
        &["--net", "true"]
    } else {
        &["--user", "--map-root-user", "--net", "true"]
    };
    let fix = "run smolvm as root, or allow unprivileged user namespaces \
               (sysctl kernel.unprivileged_userns_clone=1 on Debian)";

    let output = match run_command(unshare_program, args, COMMAND_TIMEOUT) {
        Ok(output) => output,
        Err(e) => {
            let detail = format!(
                "{}: network namespaces could not be tested",
                error_chain(&e)
            );
            return Check::warn("network namespaces", detail, "install util-linux");
        }
    };

    match (output.success, as_root) {
        (true, true) => Check::ok("network namespaces", "created one as root"),
        (true, false) => Check::ok("network namespaces", "created through a user namespace"),
        (false, _) => Check::warn(
            "network namespaces",
            format!(
                "creating a network namespace failed: {}; networked sandboxes need one",
                output.stderr.trim()
            ),
            fix,
        ),
    }
}

/// Creates the data directory if needed and writes a file in it.
fn check_data_dir(data_dir: &Path) -> Check {
    let fix = "make it writable, or set SMOLVM_DATA_DIR to a writable directory";

    if let Err(e) = fs::create_dir_all(data_dir) {
        let detail = format!("creating {} failed: {e}", data_dir.display());
        return Check::fail("data directory", detail, fix);
    }

    let probe = data_dir.join(format!(".doctor-write-test-{}", std::process::id()));
    if let Err(e) = fs::write(&probe, b"") {
        let detail = format!("{} is not writable: {e}", data_dir.display());
        return Check::fail("data directory", detail, fix);
    }
    let _ = fs::remove_file(&probe);

    Check::ok(
        "data directory",
        format!("{} is writable", data_dir.display()),
    )
}

fn check_default_image(images_dir: &Path) -> Check {
    let manifest = images_dir.join("default").join("manifest.json");
    if manifest.is_file() {
        return Check::ok("default image", format!("built: {}", manifest.display()));
    }
    Check::warn(
        "default image",
        "not built yet; `smolvm image build` builds it, or the first create does",
        "run `smolvm image build`",
    )
}

/// Applies `SMOLVM_ACCEL` as sandbox creation would. When that choice is
/// invalid or unusable the check fails, and the report carries what `auto`
/// would choose.
fn check_accel(paths: &Paths) -> (Check, AccelVerdict) {
    match AccelChoice::from_env().and_then(|choice| accel::select(choice, paths)) {
        Ok(verdict) => {
            let detail = format!("{}: {}", verdict.accel, verdict.reason);
            (Check::ok("accel", detail), verdict)
        }
        Err(e) => {
            let fix = format!("set {ACCEL_ENV} to `auto` or `tcg`, or unset it");
            (
                Check::fail("accel", e.to_string(), fix),
                accel::detect(paths),
            )
        }
    }
}

/// Output of a finished external command.
#[derive(Debug)]
struct CommandOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `program` with `args` and collects its output, killing it after
/// `timeout`.
fn run_command(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<CommandOutput, DoctorError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DoctorError::NotFound {
                program: program.into(),
            },
            _ => DoctorError::Spawn {
                program: program.into(),
                source,
            },
        })?;

    // Readers drain both pipes while waiting, so a chatty tool cannot block
    // on a full pipe.
    let stdout = child.stdout.take().map(read_to_end_in_thread);
    let stderr = child.stderr.take().map(read_to_end_in_thread);

    let status = wait_with_timeout(&mut child, program, timeout)?;
    Ok(CommandOutput {
        success: status.success(),
        stdout: join_reader(stdout),
        stderr: join_reader(stderr),
    })
}

fn wait_with_timeout(
    child: &mut Child,
    program: &str,
    timeout: Duration,
) -> Result<std::process::ExitStatus, DoctorError> {
    let deadline = Instant::now() + timeout;
    loop {
        let waited = child.try_wait();
        match waited {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                // Both can fail only because the child exited meanwhile, which is fine.
                let _ = child.kill();
                let _ = child.wait();
                return Err(DoctorError::TimedOut {
                    program: program.into(),
                    timeout,
                });
            }
            Err(source) => {
                return Err(DoctorError::Wait {
                    program: program.into(),
                    source,
                });
            }
        }
    }
}

fn read_to_end_in_thread(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error leaves what was read so far, which is all a check can use.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join_reader(reader: Option<JoinHandle<String>>) -> String {
    reader
        .and_then(|handle| handle.join().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISSING: &str = "smolvm-test-no-such-binary";

    fn assert_fails_with_fix(check: &Check) {
        assert_eq!(check.status, CheckStatus::Fail, "{check:?}");
        assert!(check.fix.is_some(), "{check:?}");
    }

    #[test]
    fn missing_qemu_fails_with_fix() {
        for check in [
            check_qemu(MISSING),
            check_qemu_img(MISSING),
            check_microvm(MISSING),
        ] {
            assert_fails_with_fix(&check);
            assert!(check.detail.contains(MISSING), "{check:?}");
            assert!(
                check
                    .fix
                    .as_deref()
                    .unwrap()
                    .contains("scripts/install-deps.sh")
            );
        }
    }

    #[test]
    fn missing_slirp4netns_warns() {
        let check = check_slirp4netns(MISSING);
        assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
        assert!(check.detail.contains("network off"), "{check:?}");
    }

    #[test]
    fn missing_unshare_warns() {
        let check = check_network_namespaces(MISSING, false);
        assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
        assert!(check.fix.is_some());
    }

    #[test]
    fn failing_unshare_warns() {
        // `false` accepts any arguments and exits 1, like a denied unshare.
        let check = check_network_namespaces("false", false);
        assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
        assert!(
            check.detail.contains("network namespace failed"),
            "{check:?}"
        );
    }

    #[test]
    fn qemu_version_parsing() {
        let output = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
                      Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n";
        assert_eq!(parse_qemu_version(output), Some(("10.0.2".into(), 10)));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15\n"),
            Some(("7.2.15".into(), 7))
        );
        assert_eq!(parse_qemu_version("something else\n"), None);
        assert_eq!(parse_qemu_version(""), None);
    }

    #[test]
    fn qemu_version_assessment() {
        let current = assess_qemu_version("QEMU emulator version 10.0.2 (Debian)\n");
        assert_eq!(current.status, CheckStatus::Ok);
        assert_eq!(current.detail, "QEMU 10.0.2");

        let old = assess_qemu_version("QEMU emulator version 7.2.0\n");
        assert_eq!(old.status, CheckStatus::Warn);
        assert!(old.detail.contains("7.2.0"), "{old:?}");

        let unreadable = assess_qemu_version("qemu, probably\n");
        assert_eq!(unreadable.status, CheckStatus::Warn);
    }

    #[test]
    fn machine_list_assessment() {
        let with_microvm = "Supported machines are:\nmicrovm              microvm (i386)\n\
                            pc-i440fx-9.2        Standard PC (i440FX + PIIX, 1996)\n";
        assert_eq!(assess_machine_list(with_microvm).status, CheckStatus::Ok);

        let without = "Supported machines are:\npc                   Standard PC\n\
                       q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-9.2)\n";
        assert_fails_with_fix(&assess_machine_list(without));
    }

    #[test]
    fn data_dir_created_and_writable() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("state").join("smolvm");

        let check = check_data_dir(&data_dir);
        assert_eq!(check.status, CheckStatus::Ok, "{check:?}");
        assert!(data_dir.is_dir());
        assert_eq!(
            fs::read_dir(&data_dir).unwrap().count(),
            0,
            "write test file left behind"
        );
    }

    #[test]
    fn data_dir_under_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();

        assert_fails_with_fix(&check_data_dir(&file.join("smolvm")));
    }

    #[test]
    fn default_image_missing_then_built() {
        let dir = tempfile::tempdir().unwrap();
        let missing = check_default_image(dir.path());
        assert_eq!(missing.status, CheckStatus::Warn);
        assert!(missing.detail.contains("smolvm image build"), "{missing:?}");

        fs::create_dir_all(dir.path().join("default")).unwrap();
        fs::write(dir.path().join("default/manifest.json"), b"{}").unwrap();
        assert_eq!(check_default_image(dir.path()).status, CheckStatus::Ok);
    }

    #[test]
    fn command_timeout_kills() {
        let started = Instant::now();
        let result = run_command("sleep", &["5"], Duration::from_millis(100));

        assert!(
            matches!(result, Err(DoctorError::TimedOut { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn command_output_collected() {
        let output = run_command(
            "sh",
            &["-c", "echo out; echo err >&2; exit 3"],
            COMMAND_TIMEOUT,
        )
        .unwrap();
        assert!(!output.success);
        assert_eq!(output.stdout, "out\n");
        assert_eq!(output.stderr, "err\n");
    }

    #[test]
    fn report_with_failure_cannot_run() {
        let accel = AccelVerdict {
            accel: crate::accel::Accel::Tcg,
            reason: "requested".into(),
            probe_ms: None,
            kvm_available: false,
        };
        let mut report = DoctorReport {
            checks: vec![Check::ok("a", "fine"), Check::warn("b", "limited", "fix b")],
            accel,
        };
        assert!(report.can_run_sandboxes());

        report.checks.push(Check::fail("c", "broken", "fix c"));
        assert!(!report.can_run_sandboxes());
    }

    #[test]
    fn check_serializes_lowercase_status() {
        let json = serde_json::to_value(Check::warn("slirp4netns", "missing", "install")).unwrap();
        assert_eq!(json["status"], "warn");
        assert_eq!(json["fix"], "install");
    }
}
