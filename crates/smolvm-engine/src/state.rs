//! The lifecycle states of a sandbox and which operations each allows.
//!
//! ```text
//! creating --> running --> stopping --> stopped --> (start) --> running
//!     \           \                                   
//!      `-> error   `-> error (VMM died)
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lifecycle state, stored as its lowercase text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// The VMM is booting; commands cannot run yet.
    Creating,
    /// The agent replied; commands can run.
    Running,
    /// A stop was requested and the VMM is shutting down.
    Stopping,
    /// The VMM exited on request; the disk is kept and `start` boots it again.
    Stopped,
    /// The VMM or its supervisor died unexpectedly, or boot failed.
    Error,
}

impl SandboxState {
    pub const ALL: [SandboxState; 5] = [
        Self::Creating,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }

    pub fn can_exec(self) -> bool {
        self == Self::Running
    }

    pub fn can_stop(self) -> bool {
        self == Self::Running
    }

    /// A stopped sandbox boots again from its disk; one in `error` does
    /// too, since its disk is intact.
    pub fn can_start(self) -> bool {
        matches!(self, Self::Stopped | Self::Error)
    }

    /// Every state may be deleted; a running sandbox is stopped first.
    pub fn can_delete(self) -> bool {
        true
    }

    /// Whether a supervisor process is expected to be alive in this state.
    pub fn has_supervisor(self) -> bool {
        matches!(self, Self::Creating | Self::Running | Self::Stopping)
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for text that names no state.
#[derive(Debug, thiserror::Error)]
#[error("unknown sandbox state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for SandboxState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for state in SandboxState::ALL {
            assert_eq!(state.as_str().parse::<SandboxState>().unwrap(), state);
        }
        assert!("booting".parse::<SandboxState>().is_err());
    }

    #[test]
    fn only_running_accepts_exec() {
        let exec: Vec<_> = SandboxState::ALL
            .into_iter()
            .filter(|s| s.can_exec())
            .collect();
        assert_eq!(exec, [SandboxState::Running]);
    }

    #[test]
    fn start_allowed_from_stopped_and_error() {
        let start: Vec<_> = SandboxState::ALL
            .into_iter()
            .filter(|s| s.can_start())
            .collect();
        assert_eq!(start, [SandboxState::Stopped, SandboxState::Error]);
    }

    #[test]
    fn stop_allowed_only_when_running() {
        assert!(SandboxState::Running.can_stop());
        assert!(!SandboxState::Stopped.can_stop());
        assert!(!SandboxState::Creating.can_stop());
    }
}
