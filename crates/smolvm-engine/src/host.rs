//! Small facts about the host process, shared across the engine.

use std::path::PathBuf;

/// Returns whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Finds `name` in the directories of `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Joins an error and its sources with ": ", for logs and messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_joins_sources() {
        let outer = OuterError(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&outer), "write failed: disk full");
    }

    #[derive(Debug)]
    struct OuterError(std::io::Error);

    impl std::fmt::Display for OuterError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("write failed")
        }
    }

    impl std::error::Error for OuterError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn find_program_finds_sh_only() {
        assert!(find_program("sh").is_some());
        assert!(find_program("smolvm-test-no-such-program").is_none());
    }
}
