//! Accel selection: whether sandboxes run with `-accel kvm` or `-accel tcg`.
//!
//! An existing `/dev/kvm` does not mean KVM is fast. Behind a software
//! hypervisor such as the shadow-paging `kvm_pvm` module, string
//! instructions are slow: one `rep stosb` over a 4 KiB page took about 1 ms.
//! Linux clears each page it hands out with `rep stosb` or `rep stosq`, so
//! there every first touch of a guest page pays that, and a guest boots far
//! slower than under TCG. `auto` therefore runs a timed probe: a tiny
//! 64-bit guest clears [`KVM_PROBE_PAGES`] fresh pages with `rep stosb`, and
//! KVM is chosen only when that finishes within [`KVM_PROBE_LIMIT`]. The
//! result is cached in `<data dir>/accel.json` with the host's boot id, so
//! the probe runs once per host boot.
//!
//! A probe that writes one byte per page does not show the cost. On the same
//! `kvm_pvm` host (2 vCPUs of a 2.6 GHz Xeon) it wrote 200 pages in 0.9 ms,
//! while clearing them with `rep stosb` took about 210 ms.
//!
//! This module also reads the host's TSC frequency for the guest kernel
//! argument `tsc_early_khz`.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::error_chain;
use crate::paths::Paths;

mod probe;
mod tsc;

pub use probe::{KvmProbeError, probe_kvm};
pub use tsc::host_tsc_khz;

/// Environment variable that chooses the accel when the caller passes none.
pub const ACCEL_ENV: &str = "SMOLVM_ACCEL";

/// Guest pages the `auto` probe clears.
pub const KVM_PROBE_PAGES: u32 = 200;

/// Maximum probe run time for which `auto` chooses KVM. With hardware
/// virtualization each fresh page costs one nested page fault and one 4 KiB
/// fill, an estimated few milliseconds for 200 pages. `kvm_pvm` took ~210 ms.
pub const KVM_PROBE_LIMIT: Duration = Duration::from_millis(50);

/// Wall-clock cap on one probe, including creating the VM and its vCPU.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest page count [`probe_kvm`] accepts, which keeps probe guest memory
/// at 18 MiB or less.
pub const MAX_KVM_PROBE_PAGES: u32 = 4096;

const KVM_DEVICE: &str = "/dev/kvm";
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";
const CACHE_FILE: &str = "accel.json";

/// Version of the probe guest and its record in `accel.json`. Raising it
/// makes hosts probe again after an upgrade that changes what the probe measures.
const PROBE_VERSION: u32 = 1;

/// CPU accelerator QEMU runs a sandbox with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// Returns the name that QEMU's `-accel` option takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = AccelError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(AccelError::InvalidAccel {
                value: value.to_owned(),
            }),
        }
    }
}

/// The user's accel request: `auto` probes the host, the others force one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    /// Reads the choice from `SMOLVM_ACCEL`. Unset or empty means `auto`.
    pub fn from_env() -> Result<Self, AccelError> {
        let Some(value) = std::env::var_os(ACCEL_ENV) else {
            return Ok(AccelChoice::Auto);
        };
        let value = value.to_string_lossy();
        if value.trim().is_empty() {
            return Ok(AccelChoice::Auto);
        }
        value.parse().map_err(|_| AccelError::InvalidEnvChoice {
            value: value.into_owned(),
        })
    }

    /// Returns `explicit` when the caller passed one, else the choice from
    /// `SMOLVM_ACCEL`.
    pub fn resolve(explicit: Option<AccelChoice>) -> Result<Self, AccelError> {
        match explicit {
            Some(choice) => Ok(choice),
            None => Self::from_env(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        }
    }
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccelChoice {
    type Err = AccelError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(AccelError::InvalidChoice {
                value: value.to_owned(),
            }),
        }
    }
}

/// The accel chosen for this host and why, as shown by `smolvm doctor` and
/// in each sandbox's details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccelVerdict {
    pub accel: Accel,
    /// One sentence for users, e.g. "KVM probe cleared 200 guest pages in
    /// 1.3 ms (limit 50 ms): using KVM".
    pub reason: String,
    /// Duration of the KVM probe in milliseconds, when it ran to completion.
    pub probe_ms: Option<f64>,
    /// Whether `/dev/kvm` opened and, where the probe ran, the probe guest
    /// ran to completion. True does not mean KVM is fast.
    pub kvm_available: bool,
}

/// Errors from parsing or applying an accel choice.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("invalid accel `{value}`: expected `kvm` or `tcg`")]
    InvalidAccel { value: String },

    #[error("invalid accel `{value}`: expected `auto`, `kvm` or `tcg`")]
    InvalidChoice { value: String },

    #[error("invalid {ACCEL_ENV} value `{value}`: expected `auto`, `kvm` or `tcg`, or unset it")]
    InvalidEnvChoice { value: String },

    #[error("accel `kvm` was requested but KVM is unusable here: {cause}; request `auto` or `tcg`")]
    KvmUnusable { cause: String },
}

/// Chooses the accel for `auto`: KVM when `/dev/kvm` opens and the probe is
/// fast, TCG otherwise. The probe result is cached per host boot.
pub fn detect(paths: &Paths) -> AccelVerdict {
    auto_verdict(&kvm_status(paths))
}

/// Applies the user's choice. Forcing KVM fails when `/dev/kvm` is missing,
/// not accessible, or cannot run the probe guest, but succeeds (with a
/// warning in the reason) when KVM is merely slow.
pub fn select(choice: AccelChoice, paths: &Paths) -> Result<AccelVerdict, AccelError> {
    match choice {
        AccelChoice::Auto => Ok(detect(paths)),
        AccelChoice::Tcg => Ok(AccelVerdict {
            accel: Accel::Tcg,
            reason: "requested".into(),
            probe_ms: None,
            kvm_available: open_kvm_device(Path::new(KVM_DEVICE)).is_ok(),
        }),
        AccelChoice::Kvm => forced_kvm_verdict(&kvm_status(paths)),
    }
}

/// Outcome of the `/dev/kvm` checks and the probe on this host.
#[derive(Debug, Clone, PartialEq)]
enum KvmStatus {
    /// `/dev/kvm` is missing or cannot be opened, for the cause in the text.
    Unavailable(String),
    /// Probe failure, as the text of the error chain.
    ProbeFailed(String),
    /// Run time of the probe guest.
    Probed(Duration),
}

fn kvm_status(paths: &Paths) -> KvmStatus {
    if let Err(cause) = open_kvm_device(Path::new(KVM_DEVICE)) {
        return KvmStatus::Unavailable(cause);
    }

    let boot_id = read_boot_id();
    let cache = paths.data_dir().join(CACHE_FILE);
    cached_probe(&cache, boot_id.as_deref(), probe_kvm_twice_if_slow)
}

/// Runs the probe and, when it is over [`KVM_PROBE_LIMIT`], once more, and
/// returns the faster run. The second run keeps a busy host from
/// committing this boot to TCG because of one unlucky run.
fn probe_kvm_twice_if_slow() -> Result<Duration, KvmProbeError> {
    let first = probe_kvm(KVM_PROBE_PAGES)?;
    if first <= KVM_PROBE_LIMIT {
        return Ok(first);
    }

    let second = probe_kvm(KVM_PROBE_PAGES)?;
    Ok(first.min(second))
}

/// Checks that `device` opens read-write, which is what creating a VM needs.
/// Returns a short cause for users on failure.
fn open_kvm_device(device: &Path) -> Result<(), String> {
    let opened = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(device);

    match opened {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("{} missing", device.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "{} permission denied (add your user to the group that owns it, usually `kvm`)",
            device.display()
        )),
        Err(e) => Err(format!("opening {} failed: {e}", device.display())),
    }
}

fn read_boot_id() -> Option<String> {
    let boot_id = fs::read_to_string(BOOT_ID_FILE).ok()?;
    let boot_id = boot_id.trim();
    (!boot_id.is_empty()).then(|| boot_id.to_owned())
}

/// Probe outcome as stored in `accel.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProbeRecord {
    probe_version: u32,
    boot_id: String,
    pages: u32,
    probe_ms: Option<f64>,
    error: Option<String>,
}

impl ProbeRecord {
    fn status(&self) -> Option<KvmStatus> {
        match (&self.error, self.probe_ms) {
            (Some(error), _) => Some(KvmStatus::ProbeFailed(error.clone())),
            (None, Some(ms)) if ms.is_finite() && ms >= 0.0 => {
                Some(KvmStatus::Probed(Duration::from_secs_f64(ms / 1000.0)))
            }
            _ => None,
        }
    }
}

/// Returns the probe status stored in `cache` for this boot, or runs `probe`
/// and stores its outcome. Without a boot id nothing is cached, because a
/// stale entry could not be distinguished from a fresh one. Failures that a
/// later run may not repeat, such as a timeout, are not cached either.
fn cached_probe(
    cache: &Path,
    boot_id: Option<&str>,
    probe: impl FnOnce() -> Result<Duration, KvmProbeError>,
) -> KvmStatus {
    if let Some(status) = boot_id.and_then(|boot_id| read_cached_status(cache, boot_id)) {
        return status;
    }

    let result = probe();
    let cacheable = result.as_ref().err().is_none_or(|e| !e.is_transient());
    let status = match result {
        Ok(elapsed) => KvmStatus::Probed(elapsed),
        Err(e) => KvmStatus::ProbeFailed(error_chain(&e)),
    };

    if let (Some(boot_id), true) = (boot_id, cacheable) {
        let record = ProbeRecord {
            probe_version: PROBE_VERSION,
            boot_id: boot_id.to_owned(),
            pages: KVM_PROBE_PAGES,
            probe_ms: match &status {
                KvmStatus::Probed(elapsed) => Some(elapsed.as_secs_f64() * 1000.0),
                _ => None,
            },
            error: match &status {
                KvmStatus::ProbeFailed(error) => Some(error.clone()),
                _ => None,
            },
        };
        if let Err(e) = write_cache(cache, &record) {
            tracing::warn!(
                path = %cache.display(),
                error = %e,
                "writing the accel cache failed; the KVM probe will run again next time"
            );
        }
    }
    status
}

fn read_cached_status(cache: &Path, boot_id: &str) -> Option<KvmStatus> {
    let text = fs::read_to_string(cache).ok()?;
    let record: ProbeRecord = serde_json::from_str(&text).ok()?;
    let current = record.probe_version == PROBE_VERSION
        && record.boot_id == boot_id
        && record.pages == KVM_PROBE_PAGES;
    if !current {
        return None;
    }
    record.status()
}

/// Writes `record` through a temporary file and a rename, so concurrent
/// readers see either the old or the new record.
fn write_cache(cache: &Path, record: &ProbeRecord) -> io::Result<()> {
    if let Some(dir) = cache.parent() {
        fs::create_dir_all(dir)?;
    }

    let temporary = cache.with_extension(format!("json.{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(record).map_err(io::Error::other)?;
    fs::write(&temporary, text)?;
    fs::rename(&temporary, cache).inspect_err(|_| {
        let _ = fs::remove_file(&temporary);
    })
}

fn auto_verdict(status: &KvmStatus) -> AccelVerdict {
    match status {
        KvmStatus::Unavailable(cause) => AccelVerdict {
            accel: Accel::Tcg,
            reason: format!("{cause}: using TCG"),
            probe_ms: None,
            kvm_available: false,
        },
        KvmStatus::ProbeFailed(error) => AccelVerdict {
            accel: Accel::Tcg,
            reason: format!("KVM probe failed: {error}: using TCG"),
            probe_ms: None,
            kvm_available: false,
        },
        KvmStatus::Probed(elapsed) if *elapsed <= KVM_PROBE_LIMIT => AccelVerdict {
            accel: Accel::Kvm,
            reason: format!("{}: using KVM", probe_summary(*elapsed)),
            probe_ms: Some(as_millis_f64(*elapsed)),
            kvm_available: true,
        },
        KvmStatus::Probed(elapsed) => AccelVerdict {
            accel: Accel::Tcg,
            reason: format!(
                "{}: /dev/kvm is too slow here, probably software nested virtualization, \
                 so using TCG",
                probe_summary(*elapsed)
            ),
            probe_ms: Some(as_millis_f64(*elapsed)),
            kvm_available: true,
        },
    }
}

fn forced_kvm_verdict(status: &KvmStatus) -> Result<AccelVerdict, AccelError> {
    match status {
        KvmStatus::Unavailable(cause) => Err(AccelError::KvmUnusable {
            cause: cause.clone(),
        }),
        KvmStatus::ProbeFailed(error) => Err(AccelError::KvmUnusable {
            cause: format!("KVM probe failed: {error}"),
        }),
        KvmStatus::Probed(elapsed) => {
            let warning = if *elapsed <= KVM_PROBE_LIMIT {
                ""
            } else {
                ", so expect slow sandboxes or boot failures"
            };
            Ok(AccelVerdict {
                accel: Accel::Kvm,
                reason: format!("requested: {}{warning}", probe_summary(*elapsed)),
                probe_ms: Some(as_millis_f64(*elapsed)),
                kvm_available: true,
            })
        }
    }
}

fn probe_summary(elapsed: Duration) -> String {
    format!(
        "KVM probe cleared {KVM_PROBE_PAGES} guest pages in {} (limit {})",
        format_millis(elapsed),
        format_millis(KVM_PROBE_LIMIT)
    )
}

/// Formats a duration in milliseconds with one decimal below 10 ms.
fn format_millis(duration: Duration) -> String {
    let ms = as_millis_f64(duration);
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn as_millis_f64(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn accel_choice_parsing() {
        assert_eq!("auto".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert_eq!("kvm".parse::<AccelChoice>().unwrap(), AccelChoice::Kvm);
        assert_eq!(" TCG ".parse::<AccelChoice>().unwrap(), AccelChoice::Tcg);

        let error = "hvf".parse::<AccelChoice>().unwrap_err().to_string();
        assert!(error.contains("`hvf`"), "{error}");
        assert!(error.contains("`auto`, `kvm` or `tcg`"), "{error}");
    }

    #[test]
    fn accel_round_trips() {
        for accel in [Accel::Kvm, Accel::Tcg] {
            assert_eq!(accel.to_string().parse::<Accel>().unwrap(), accel);
            let json = serde_json::to_string(&accel).unwrap();
            assert_eq!(json, format!("\"{accel}\""));
        }
        assert!("auto".parse::<Accel>().is_err());
    }

    #[test]
    fn explicit_choice_wins_over_env() {
        assert_eq!(
            AccelChoice::resolve(Some(AccelChoice::Tcg)).unwrap(),
            AccelChoice::Tcg
        );
    }

    #[test]
    fn cache_reprobes_after_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("state").join(CACHE_FILE);
        let probes = Cell::new(0);
        let probe = |ms: u64| {
            probes.set(probes.get() + 1);
            Ok(Duration::from_millis(ms))
        };

        let first = cached_probe(&cache, Some("boot-a"), || probe(3));
        assert_eq!(first, KvmStatus::Probed(Duration::from_millis(3)));
        assert_eq!(probes.get(), 1);

        let again = cached_probe(&cache, Some("boot-a"), || probe(400));
        assert_eq!(again, first, "same boot must reuse the cached result");
        assert_eq!(probes.get(), 1);

        let rebooted = cached_probe(&cache, Some("boot-b"), || probe(400));
        assert_eq!(rebooted, KvmStatus::Probed(Duration::from_millis(400)));
        assert_eq!(probes.get(), 2);

        let record: ProbeRecord =
            serde_json::from_str(&fs::read_to_string(&cache).unwrap()).unwrap();
        assert_eq!(record.boot_id, "boot-b");
    }

    #[test]
    fn cache_stores_probe_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(CACHE_FILE);

        let failed = cached_probe(&cache, Some("boot-a"), || {
            Err(KvmProbeError::UnexpectedExit {
                exit: "Shutdown".into(),
            })
        });
        let KvmStatus::ProbeFailed(error) = &failed else {
            panic!("expected a failed probe, got {failed:?}");
        };
        assert!(error.contains("Shutdown"), "{error}");

        let cached = cached_probe(&cache, Some("boot-a"), || {
            panic!("probe ran despite the cache")
        });
        assert_eq!(cached, failed);
    }

    #[test]
    fn cache_skips_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(CACHE_FILE);

        let timed_out = cached_probe(&cache, Some("boot-a"), || {
            Err(KvmProbeError::TimedOut {
                timeout: KVM_PROBE_TIMEOUT,
            })
        });
        assert!(
            matches!(timed_out, KvmStatus::ProbeFailed(_)),
            "{timed_out:?}"
        );
        assert!(!cache.exists());

        let retried = cached_probe(&cache, Some("boot-a"), || Ok(Duration::from_millis(2)));
        assert_eq!(retried, KvmStatus::Probed(Duration::from_millis(2)));
    }

    #[test]
    fn cache_from_older_probe_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(CACHE_FILE);
        let old = ProbeRecord {
            probe_version: PROBE_VERSION - 1,
            boot_id: "boot-a".into(),
            pages: KVM_PROBE_PAGES,
            probe_ms: Some(1.0),
            error: None,
        };
        write_cache(&cache, &old).unwrap();

        let status = cached_probe(&cache, Some("boot-a"), || Ok(Duration::from_millis(300)));
        assert_eq!(status, KvmStatus::Probed(Duration::from_millis(300)));
    }

    #[test]
    fn cache_unused_without_boot_id() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(CACHE_FILE);

        cached_probe(&cache, None, || Ok(Duration::from_millis(1)));
        assert!(!cache.exists());
    }

    #[test]
    fn corrupt_cache_is_reprobed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(CACHE_FILE);
        fs::write(&cache, "{not json").unwrap();

        let status = cached_probe(&cache, Some("boot-a"), || Ok(Duration::from_millis(2)));
        assert_eq!(status, KvmStatus::Probed(Duration::from_millis(2)));
    }

    #[test]
    fn auto_verdict_by_probe_time() {
        let fast = auto_verdict(&KvmStatus::Probed(Duration::from_micros(1300)));
        assert_eq!(fast.accel, Accel::Kvm);
        assert_eq!(
            fast.reason,
            "KVM probe cleared 200 guest pages in 1.3 ms (limit 50 ms): using KVM"
        );
        assert!(fast.kvm_available);

        let slow = auto_verdict(&KvmStatus::Probed(Duration::from_millis(412)));
        assert_eq!(slow.accel, Accel::Tcg);
        assert!(
            slow.reason.contains("in 412 ms (limit 50 ms)"),
            "{}",
            slow.reason
        );
        assert!(slow.reason.ends_with("using TCG"), "{}", slow.reason);
        assert!(slow.kvm_available);

        let missing = auto_verdict(&KvmStatus::Unavailable("/dev/kvm missing".into()));
        assert_eq!(missing.accel, Accel::Tcg);
        assert_eq!(missing.reason, "/dev/kvm missing: using TCG");
        assert!(!missing.kvm_available);
    }

    #[test]
    fn forced_kvm_needs_working_device() {
        let missing = forced_kvm_verdict(&KvmStatus::Unavailable("/dev/kvm missing".into()));
        let error = missing.unwrap_err().to_string();
        assert!(error.contains("/dev/kvm missing"), "{error}");

        let slow = forced_kvm_verdict(&KvmStatus::Probed(Duration::from_millis(412))).unwrap();
        assert_eq!(slow.accel, Accel::Kvm);
        assert!(slow.reason.starts_with("requested"), "{}", slow.reason);
        assert!(
            slow.reason.contains("expect slow sandboxes"),
            "{}",
            slow.reason
        );
    }

    #[test]
    fn select_tcg_is_requested() {
        let dir = tempfile::tempdir().unwrap();
        let verdict = select(AccelChoice::Tcg, &Paths::new(dir.path())).unwrap();
        assert_eq!(verdict.accel, Accel::Tcg);
        assert_eq!(verdict.reason, "requested");
        assert_eq!(verdict.probe_ms, None);
    }

    #[test]
    fn open_missing_device() {
        let dir = tempfile::tempdir().unwrap();
        let cause = open_kvm_device(&dir.path().join("kvm")).unwrap_err();
        assert!(cause.ends_with("missing"), "{cause}");
    }
}
