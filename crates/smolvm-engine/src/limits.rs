//! Limits on sandbox resources and exec requests, quoted in error messages.

/// Smallest guest memory in MiB; the Debian root needs about this much.
pub const MEMORY_MIB_MIN: u32 = 128;
/// Largest guest memory in MiB.
pub const MEMORY_MIB_MAX: u32 = 16384;
pub const MEMORY_MIB_DEFAULT: u32 = 512;

/// Smallest disk in MiB; the default root filesystem needs about 400 MiB.
pub const DISK_MIB_MIN: u32 = 512;
/// Largest disk in MiB (256 GiB).
pub const DISK_MIB_MAX: u32 = 262_144;
pub const DISK_MIB_DEFAULT: u32 = 2048;

pub const CPUS_MIN: u32 = 1;
pub const CPUS_DEFAULT: u32 = 1;

/// Exec timeout bounds in seconds.
pub const TIMEOUT_SECS_MIN: u64 = 1;
pub const TIMEOUT_SECS_MAX: u64 = 3600;
pub const TIMEOUT_SECS_DEFAULT: u64 = 30;

/// Buffered exec output kept per stream; more is dropped and the result
/// sets `stdout_truncated`/`stderr_truncated`. Streaming execs have no cap.
pub const EXEC_OUTPUT_CAP_BYTES: usize = 32 * 1024 * 1024;

/// How long a sandbox may take from spawning the VMM to a ready agent.
pub const BOOT_TIMEOUT_SECS: u64 = 60;

/// Returns the number of host CPUs, the upper bound for `cpus`.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}
