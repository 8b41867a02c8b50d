//! The root user's name, home and shell, read from `/etc/passwd` directly:
//! the agent is a static glibc binary and cannot use NSS.

use std::path::Path;

const PASSWD: &str = "/etc/passwd";

/// Account details of uid 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RootUser {
    pub(crate) name: String,
    pub(crate) home: String,
    pub(crate) shell: String,
}

impl Default for RootUser {
    fn default() -> Self {
        Self {
            name: "root".into(),
            home: "/".into(),
            shell: "/bin/sh".into(),
        }
    }
}

/// Reads uid 0's entry from `/etc/passwd`. Falls back to `root`, `/` and
/// `/bin/sh` for whatever is missing, and to `/bin/sh` when the listed
/// shell does not exist in this root filesystem.
pub(crate) fn root_user() -> RootUser {
    let text = std::fs::read_to_string(PASSWD).unwrap_or_default();
    let mut user = parse_root_entry(&text).unwrap_or_default();
    if !Path::new(&user.shell).exists() {
        user.shell = RootUser::default().shell;
    }
    user
}

fn parse_root_entry(text: &str) -> Option<RootUser> {
    let fallback = RootUser::default();
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[2] != "0" {
            return None;
        }
        let or = |value: &str, default: &str| {
            if value.is_empty() {
                default.to_string()
            } else {
                value.to_string()
            }
        };
        Some(RootUser {
            name: or(fields[0], &fallback.name),
            home: or(fields[5], &fallback.home),
            shell: or(fields[6], &fallback.shell),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_finds_uid_zero() {
        let text = "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
                    toor:x:0:0:root:/root:/bin/bash\n";
        let user = parse_root_entry(text).unwrap();
        assert_eq!(user.name, "toor");
        assert_eq!(user.home, "/root");
        assert_eq!(user.shell, "/bin/bash");
    }

    #[test]
    fn parse_fills_empty_fields() {
        let user = parse_root_entry("root:x:0:0:::\n").unwrap();
        assert_eq!(user, RootUser::default());
    }

    #[test]
    fn parse_skips_short_lines() {
        assert_eq!(parse_root_entry("# comment\nroot:x:0\n"), None);
    }
}
