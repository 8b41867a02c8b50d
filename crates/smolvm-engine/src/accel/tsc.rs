//! The host's TSC frequency, for the guest kernel argument `tsc_early_khz`.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

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
}
