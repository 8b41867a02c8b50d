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
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::paths::Paths;

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

// Probe guest memory layout: the GDT, the code and the page tables sit in
// the first 1 MiB, and the pages the guest clears start at 1 MiB.
const PROBE_GDT_ADDR: u64 = 0x500;
const PROBE_CODE_ADDR: u64 = 0x1000;
const PROBE_PML4_ADDR: u64 = 0x2000;
const PROBE_PDPT_ADDR: u64 = 0x3000;
const PROBE_PD_ADDR: u64 = 0x4000;
const PROBE_DATA_ADDR: u64 = 0x10_0000;

const PAGE_SIZE: u64 = 4096;
const LARGE_PAGE_SIZE: u64 = 2 << 20;

// x86 paging and control register bits (Intel SDM volume 3, chapters 2 and 4).
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_LARGE: u64 = 1 << 7;
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
// Flat 64-bit code and data segment descriptors.
const GDT_CODE64: u64 = 0x00af_9a00_0000_ffff;
const GDT_DATA: u64 = 0x00cf_9200_0000_ffff;

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

/// Errors from the timed KVM probe.
#[derive(Debug, thiserror::Error)]
pub enum KvmProbeError {
    #[error("invalid KVM probe page count {pages}: expected 1 to {max}")]
    InvalidPageCount { pages: u32, max: u32 },

    #[error("opening {KVM_DEVICE} failed")]
    Open(#[source] kvm_ioctls::Error),

    #[error("creating a KVM VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),

    #[error("mapping {bytes} bytes of probe guest memory failed")]
    MapMemory {
        bytes: usize,
        #[source]
        source: io::Error,
    },

    #[error("registering probe guest memory with KVM failed")]
    SetMemory(#[source] kvm_ioctls::Error),

    #[error("creating the probe vCPU failed")]
    CreateVcpu(#[source] kvm_ioctls::Error),

    #[error("setting the probe vCPU registers failed")]
    SetRegisters(#[source] kvm_ioctls::Error),

    #[error("running the probe vCPU failed")]
    Run(#[source] kvm_ioctls::Error),

    #[error("probe vCPU stopped with unexpected exit {exit}")]
    UnexpectedExit { exit: String },

    #[error("probe guest wrote {written} of {pages} pages")]
    IncompleteWrite { written: u32, pages: u32 },

    #[error("KVM probe timed out after {} ms", timeout.as_millis())]
    TimedOut { timeout: Duration },

    #[error("starting the KVM probe thread failed")]
    SpawnThread(#[source] io::Error),

    #[error("KVM probe thread panicked")]
    ThreadPanicked,
}

impl KvmProbeError {
    /// Reports whether another run could succeed on the same boot, so the
    /// result must not be cached.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            KvmProbeError::TimedOut { .. }
                | KvmProbeError::SpawnThread(_)
                | KvmProbeError::ThreadPanicked
                | KvmProbeError::MapMemory { .. }
        )
    }
}

/// Runs a 64-bit guest that clears `pages` fresh 4 KiB guest pages with
/// `rep stosb` and returns how long the vCPU took, from first entry to `hlt`.
///
/// The probe runs on its own thread. After [`KVM_PROBE_TIMEOUT`] it returns
/// [`KvmProbeError::TimedOut`] and leaves that thread behind, because a vCPU
/// stuck inside `KVM_RUN` cannot be stopped from here.
pub fn probe_kvm(pages: u32) -> Result<Duration, KvmProbeError> {
    if pages == 0 || pages > MAX_KVM_PROBE_PAGES {
        return Err(KvmProbeError::InvalidPageCount {
            pages,
            max: MAX_KVM_PROBE_PAGES,
        });
    }

    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            // Sending fails only after the caller timed out and dropped the receiver.
            let _ = sender.send(run_probe_guest(pages));
        })
        .map_err(KvmProbeError::SpawnThread)?;

    match receiver.recv_timeout(KVM_PROBE_TIMEOUT) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(KvmProbeError::TimedOut {
            timeout: KVM_PROBE_TIMEOUT,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(KvmProbeError::ThreadPanicked),
    }
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

/// Joins an error and its sources with ": ".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// 64-bit machine code loaded at [`PROBE_CODE_ADDR`]. It fills `pages`
/// consecutive 4 KiB pages from [`PROBE_DATA_ADDR`] with the byte 1, one
/// `rep stosb` per page as Linux's `clear_page_erms` does, then halts.
#[rustfmt::skip]
fn probe_code(pages: u64) -> [u8; 38] {
    let data = PROBE_DATA_ADDR.to_le_bytes();
    let count = pages.to_le_bytes();
    [
        0x48, 0xbf, data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7],
                                                    // mov rdi, PROBE_DATA_ADDR
        0x48, 0xba, count[0], count[1], count[2], count[3], count[4], count[5], count[6], count[7],
                                                    // mov rdx, pages
        0xb8, 0x01, 0x00, 0x00, 0x00,               // mov eax, 1
        0xb9, 0x00, 0x10, 0x00, 0x00,               // next: mov ecx, 4096
        0xf3, 0xaa,                                 // rep stosb (advances rdi by 4096)
        0x48, 0xff, 0xca,                           // dec rdx
        0x75, 0xf4,                                 // jnz next (back 12 bytes)
        0xf4,                                       // hlt
    ]
}

/// Anonymous private mapping used as probe guest memory; unmapped on drop.
struct ProbeMemory {
    base: NonNull<u8>,
    len: usize,
}

impl ProbeMemory {
    fn new(len: usize) -> Result<Self, KvmProbeError> {
        // SAFETY: a fresh anonymous mapping with a null hint aliases no
        // existing Rust object, and the result is checked before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            let source = io::Error::last_os_error();
            return Err(KvmProbeError::MapMemory { bytes: len, source });
        }

        let base = NonNull::new(address.cast::<u8>()).ok_or_else(|| KvmProbeError::MapMemory {
            bytes: len,
            source: io::Error::other("mmap returned a null address"),
        })?;
        Ok(Self { base, len })
    }

    fn host_address(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    fn write(&mut self, guest_address: u64, bytes: &[u8]) {
        let offset = guest_address as usize;
        assert!(
            offset + bytes.len() <= self.len,
            "probe memory write out of bounds"
        );
        // SAFETY: the bounds check above keeps the copy inside the mapping,
        // and the source is a Rust slice, which cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(offset),
                bytes.len(),
            );
        }
    }

    fn write_u64(&mut self, guest_address: u64, value: u64) {
        self.write(guest_address, &value.to_le_bytes());
    }

    fn read_byte(&self, guest_address: u64) -> u8 {
        let offset = guest_address as usize;
        assert!(offset < self.len, "probe memory read out of bounds");
        // SAFETY: `offset` is inside the mapping (checked above), and the
        // guest writes it only inside `KVM_RUN` on this thread, which has
        // returned by the time this runs.
        unsafe { self.base.as_ptr().add(offset).read() }
    }
}

impl Drop for ProbeMemory {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` describe the mapping made in `new`, and no
        // reference into it outlives `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Builds the probe guest and runs it to `hlt`, returning the vCPU run time.
fn run_probe_guest(pages: u32) -> Result<Duration, KvmProbeError> {
    let memory_len = probe_memory_len(pages);

    // Declared before the VM so that it is unmapped only after the VM is closed.
    let mut memory = ProbeMemory::new(memory_len as usize)?;
    write_probe_guest(&mut memory, memory_len, pages);

    let kvm = Kvm::new().map_err(KvmProbeError::Open)?;
    let vm = kvm.create_vm().map_err(KvmProbeError::CreateVm)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: memory_len,
        userspace_addr: memory.host_address(),
        flags: 0,
    };
    // SAFETY: `region` describes exactly the live mapping in `memory`, which
    // is dropped after `vm`, and slot 0 is the only slot of this new VM.
    unsafe { vm.set_user_memory_region(region) }.map_err(KvmProbeError::SetMemory)?;

    let mut vcpu = vm.create_vcpu(0).map_err(KvmProbeError::CreateVcpu)?;
    enter_long_mode(&vcpu)?;

    let started = Instant::now();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => break,
            Ok(VcpuExit::Intr) => continue,
            Ok(exit) => {
                return Err(KvmProbeError::UnexpectedExit {
                    exit: format!("{exit:?}"),
                });
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(KvmProbeError::Run(e)),
        }
    }
    let elapsed = started.elapsed();

    let written = (0..pages)
        .filter(|page| {
            let first = PROBE_DATA_ADDR + u64::from(*page) * PAGE_SIZE;
            memory.read_byte(first) == 1 && memory.read_byte(first + PAGE_SIZE - 1) == 1
        })
        .count() as u32;
    if written != pages {
        return Err(KvmProbeError::IncompleteWrite { written, pages });
    }
    Ok(elapsed)
}

/// Guest memory size for `pages` data pages, rounded up to whole 2 MiB
/// pages because the guest maps its memory with 2 MiB pages.
fn probe_memory_len(pages: u32) -> u64 {
    let end = PROBE_DATA_ADDR + u64::from(pages) * PAGE_SIZE;
    end.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE
}

/// Writes the code, a flat GDT and identity-mapping page tables (2 MiB
/// pages) into guest memory.
fn write_probe_guest(memory: &mut ProbeMemory, memory_len: u64, pages: u32) {
    memory.write(PROBE_CODE_ADDR, &probe_code(u64::from(pages)));

    memory.write_u64(PROBE_GDT_ADDR + 8, GDT_CODE64);
    memory.write_u64(PROBE_GDT_ADDR + 16, GDT_DATA);

    memory.write_u64(
        PROBE_PML4_ADDR,
        PROBE_PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE,
    );
    memory.write_u64(PROBE_PDPT_ADDR, PROBE_PD_ADDR | PTE_PRESENT | PTE_WRITABLE);
    for index in 0..memory_len / LARGE_PAGE_SIZE {
        let entry = (index * LARGE_PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE;
        memory.write_u64(PROBE_PD_ADDR + index * 8, entry);
    }
}

/// Puts the vCPU in 64-bit mode with paging on, at [`PROBE_CODE_ADDR`].
fn enter_long_mode(vcpu: &VcpuFd) -> Result<(), KvmProbeError> {
    let mut sregs = vcpu.get_sregs().map_err(KvmProbeError::SetRegisters)?;

    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3, // read/write, accessed
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = PROBE_GDT_ADDR;
    sregs.gdt.limit = 3 * 8 - 1;

    sregs.cr3 = PROBE_PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(KvmProbeError::SetRegisters)?;

    // Bit 1 of RFLAGS is reserved and must be set. DF is clear, so `rep stosb` counts up.
    let regs = kvm_regs {
        rip: PROBE_CODE_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(KvmProbeError::SetRegisters)
}

/// Returns the host's TSC frequency in kHz, for the guest kernel argument
/// `tsc_early_khz`, or `None` when no source gives a plausible value.
///
/// Sources, most exact first: sysfs `tsc_freq_khz` (present only on some
/// kernels), the kernel log line "tsc: Detected 2599.998 MHz processor" or
/// its later "Refined TSC clocksource calibration", and the "cpu MHz" field
/// of `/proc/cpuinfo`. The last is the current core clock, which equals the
/// TSC frequency only without frequency scaling, hence last.
pub fn host_tsc_khz() -> Option<u64> {
    type ReadKhz = fn() -> Option<u64>;
    let sources: [(&str, ReadKhz); 4] = [
        ("sysfs tsc_freq_khz", tsc_khz_from_sysfs),
        ("/dev/kmsg", tsc_khz_from_kmsg),
        ("dmesg", tsc_khz_from_dmesg),
        ("/proc/cpuinfo", tsc_khz_from_cpuinfo),
    ];
    sources.into_iter().find_map(|(source, read)| {
        let khz = read().filter(|khz| is_plausible_tsc_khz(*khz))?;
        tracing::debug!(source, tsc_khz = khz, "read host TSC frequency");
        Some(khz)
    })
}

/// Rejects values no x86 TSC runs at (below 100 MHz or above 20 GHz), which
/// come from garbled input.
fn is_plausible_tsc_khz(khz: u64) -> bool {
    (100_000..=20_000_000).contains(&khz)
}

fn tsc_khz_from_sysfs() -> Option<u64> {
    let text = fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz").ok()?;
    parse_sysfs_tsc_khz(&text)
}

/// Reads the kernel log records still in the ring buffer without blocking.
/// Usually needs root or CAP_SYSLOG.
fn tsc_khz_from_kmsg() -> Option<u64> {
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")
        .ok()?;

    // Each read returns one record and fails with EINVAL when the buffer is
    // smaller. 8 KiB is Linux's largest record (CONSOLE_EXT_LOG_MAX in printk).
    let mut record = vec![0_u8; 8192];
    let mut tsc_lines = String::new();
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(len) => {
                let line = String::from_utf8_lossy(&record[..len]);
                if line.contains("tsc:") {
                    tsc_lines.push_str(&line);
                }
            }
            // EPIPE: the ring buffer overwrote records since the last read.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    parse_kernel_log_tsc_khz(&tsc_lines)
}

fn tsc_khz_from_dmesg() -> Option<u64> {
    let output = Command::new("dmesg").output().ok()?;
    if !output.status.success() {
        return None;
    }
    parse_kernel_log_tsc_khz(&String::from_utf8_lossy(&output.stdout))
}

fn tsc_khz_from_cpuinfo() -> Option<u64> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpuinfo_khz(&text)
}

/// Parses sysfs `tsc_freq_khz`, a whole number of kHz.
fn parse_sysfs_tsc_khz(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Finds the TSC frequency in kernel log text (`dmesg` or `/dev/kmsg`
/// format). The refined calibration wins over the early detection when both
/// are present.
fn parse_kernel_log_tsc_khz(log: &str) -> Option<u64> {
    const REFINED: &str = "tsc: Refined TSC clocksource calibration: ";
    const DETECTED: &str = "tsc: Detected ";

    let mhz_after = |marker: &str| {
        log.lines().rev().find_map(|line| {
            let rest = &line[line.find(marker)? + marker.len()..];
            let mut words = rest.split_whitespace();
            let value = words.next()?;
            let unit = words.next()?;
            if unit != "MHz" {
                return None;
            }
            mhz_to_khz(value)
        })
    };
    mhz_after(REFINED).or_else(|| mhz_after(DETECTED))
}

/// Parses the first "cpu MHz : 2599.998" line of `/proc/cpuinfo`.
fn parse_cpuinfo_khz(cpuinfo: &str) -> Option<u64> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() != "cpu MHz" {
            return None;
        }
        mhz_to_khz(value.trim())
    })
}

/// Converts a decimal MHz value such as "2599.998" to kHz (2599998) without
/// floating-point rounding; digits beyond kHz precision are dropped.
fn mhz_to_khz(mhz: &str) -> Option<u64> {
    let (whole, fraction) = mhz.split_once('.').unwrap_or((mhz, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }

    let fraction_khz: String = fraction.chars().chain("000".chars()).take(3).collect();
    let whole: u64 = whole.parse().ok()?;
    let fraction_khz: u64 = fraction_khz.parse().ok()?;
    whole.checked_mul(1000)?.checked_add(fraction_khz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn mhz_to_khz_is_exact() {
        assert_eq!(mhz_to_khz("2599.998"), Some(2_599_998));
        assert_eq!(mhz_to_khz("2600"), Some(2_600_000));
        assert_eq!(mhz_to_khz("2599.9"), Some(2_599_900));
        assert_eq!(mhz_to_khz("2599.99876"), Some(2_599_998));
        assert_eq!(mhz_to_khz(""), None);
        assert_eq!(mhz_to_khz(".5"), None);
        assert_eq!(mhz_to_khz("26a0"), None);
        assert_eq!(mhz_to_khz("-1"), None);
    }

    #[test]
    fn kernel_log_dmesg_format() {
        let log = "[    0.000000] Linux version 6.1.0\n\
                   [    0.000061] tsc: Detected 2599.998 MHz processor\n\
                   [    0.094621] TSC deadline timer available\n";
        assert_eq!(parse_kernel_log_tsc_khz(log), Some(2_599_998));
    }

    #[test]
    fn kernel_log_kmsg_format() {
        let log = "5,0,0,-;Linux version 6.18.44\n6,16,61,-;tsc: Detected 3000.000 MHz processor\n";
        assert_eq!(parse_kernel_log_tsc_khz(log), Some(3_000_000));
    }

    #[test]
    fn kernel_log_prefers_refined() {
        let log = "[    0.000000] tsc: Detected 2095.076 MHz processor\n\
                   [    1.532118] tsc: Refined TSC clocksource calibration: 2095.079 MHz\n";
        assert_eq!(parse_kernel_log_tsc_khz(log), Some(2_095_079));
    }

    #[test]
    fn kernel_log_without_tsc_line() {
        assert_eq!(parse_kernel_log_tsc_khz(""), None);
        assert_eq!(
            parse_kernel_log_tsc_khz("[0.1] clocksource: Switched to clocksource tsc"),
            None
        );
        assert_eq!(
            parse_kernel_log_tsc_khz("tsc: Detected fast MHz processor"),
            None
        );
        assert_eq!(parse_kernel_log_tsc_khz("tsc: Detected 2599.998 GHz"), None);
    }

    #[test]
    fn cpuinfo_first_cpu_mhz() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n\
                       cpu MHz\t\t: 2599.998\ncache size\t: 16384 KB\n\n\
                       processor\t: 1\ncpu MHz\t\t: 1200.000\n";
        assert_eq!(parse_cpuinfo_khz(cpuinfo), Some(2_599_998));
        assert_eq!(parse_cpuinfo_khz("processor\t: 0\n"), None);
    }

    #[test]
    fn sysfs_tsc_khz() {
        assert_eq!(parse_sysfs_tsc_khz("2599998\n"), Some(2_599_998));
        assert_eq!(parse_sysfs_tsc_khz("garbage"), None);
    }

    #[test]
    fn host_tsc_khz_is_plausible_when_found() {
        if let Some(khz) = host_tsc_khz() {
            assert!(
                is_plausible_tsc_khz(khz),
                "implausible TSC frequency {khz} kHz"
            );
        }
    }

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
    fn probe_rejects_page_counts_out_of_range() {
        for pages in [0, MAX_KVM_PROBE_PAGES + 1] {
            let error = probe_kvm(pages).unwrap_err();
            assert!(
                matches!(error, KvmProbeError::InvalidPageCount { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn probe_code_loop_jumps_to_mov_ecx() {
        let code = probe_code(200);
        assert_eq!(&code[12..20], &200_u64.to_le_bytes());
        let jump_end = 37_i32;
        let target = (jump_end + i32::from(code[36] as i8)) as usize;
        assert_eq!(&code[target..target + 5], &[0xb9, 0x00, 0x10, 0x00, 0x00]);
        assert_eq!(code[37], 0xf4);
    }

    #[test]
    fn probe_memory_rounds_to_large_pages() {
        assert_eq!(probe_memory_len(1), 2 << 20);
        assert_eq!(probe_memory_len(256), 2 << 20);
        assert_eq!(probe_memory_len(257), 4 << 20);
        assert_eq!(probe_memory_len(MAX_KVM_PROBE_PAGES), 18 << 20);
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

    #[test]
    fn probe_finishes_within_timeout() {
        if !Path::new(KVM_DEVICE).exists() {
            println!("skipped: {KVM_DEVICE} not present");
            return;
        }

        let started = Instant::now();
        let result = probe_kvm(KVM_PROBE_PAGES);
        let waited = started.elapsed();
        println!("KVM probe of {KVM_PROBE_PAGES} pages: {result:?} (waited {waited:?})");

        assert!(
            waited < KVM_PROBE_TIMEOUT + Duration::from_secs(1),
            "waited {waited:?}"
        );
        if let Ok(elapsed) = result {
            assert!(
                elapsed <= waited,
                "probe reported {elapsed:?} but took {waited:?}"
            );
        }
    }
}
