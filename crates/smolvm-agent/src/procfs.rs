//! Process listing from `/proc/<pid>/stat`.

use std::fs;

/// `PF_KTHREAD` in the `flags` field: the process is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessInfo {
    pub(crate) pid: libc::pid_t,
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    pub(crate) session: libc::pid_t,
    pub(crate) flags: u64,
}

impl ProcessInfo {
    pub(crate) fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Lists the processes visible in `/proc`. Processes that exit while being
/// listed are skipped.
pub(crate) fn processes() -> Vec<ProcessInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

/// Parses a stat line. The command name is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat(pid: libc::pid_t, stat: &str) -> Option<ProcessInfo> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields after the name: state ppid pgrp session tty_nr tpgid flags ...
    Some(ProcessInfo {
        pid,
        state: fields.first()?.chars().next()?,
        session: fields.get(3)?.parse().ok()?,
        flags: fields.get(6)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_handles_odd_names() {
        let stat = "42 (a) b (c) S 1 40 41 0 -1 4194560 100 0 0 0";
        let info = parse_stat(42, stat).unwrap();
        assert_eq!(
            info,
            ProcessInfo {
                pid: 42,
                state: 'S',
                session: 41,
                flags: 4194560
            }
        );
        assert!(!info.is_kernel_thread());
    }

    #[test]
    fn processes_include_self() {
        let me = std::process::id() as libc::pid_t;
        assert!(processes().iter().any(|p| p.pid == me));
    }
}
