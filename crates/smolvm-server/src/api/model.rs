//! The API's value types shared by several endpoints, each mirroring an
//! engine type so the OpenAPI document describes exactly what is sent.

use serde::{Deserialize, Serialize};
use smolvm_engine::accel::{Accel, AccelChoice};
use smolvm_engine::sandbox::SandboxInfo;
use smolvm_engine::spec;
use smolvm_engine::state::SandboxState;
use utoipa::ToSchema;

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// The sandbox is booting; commands cannot run yet.
    Creating,
    /// The agent is ready; commands can run.
    Running,
    /// A stop was requested and the sandbox is shutting down.
    Stopping,
    /// Powered off; the disk is kept and `start` boots it again.
    Stopped,
    /// Boot failed or the sandbox died; `error` gives the reason.
    Error,
}

impl From<SandboxState> for SandboxStatus {
    fn from(state: SandboxState) -> Self {
        match state {
            SandboxState::Creating => Self::Creating,
            SandboxState::Running => Self::Running,
            SandboxState::Stopping => Self::Stopping,
            SandboxState::Stopped => Self::Stopped,
            SandboxState::Error => Self::Error,
        }
    }
}

/// Guest operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Linux,
}

impl From<spec::Os> for Os {
    fn from(os: spec::Os) -> Self {
        match os {
            spec::Os::Linux => Self::Linux,
        }
    }
}

impl From<Os> for spec::Os {
    fn from(os: Os) -> Self {
        match os {
            Os::Linux => Self::Linux,
        }
    }
}

/// The VMM that runs a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Qemu,
    Firecracker,
}

impl From<spec::Backend> for Backend {
    fn from(backend: spec::Backend) -> Self {
        match backend {
            spec::Backend::Qemu => Self::Qemu,
            spec::Backend::Firecracker => Self::Firecracker,
        }
    }
}

/// The VMM a create request names; `auto` picks QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Auto,
    Qemu,
    Firecracker,
}

impl From<BackendChoice> for spec::BackendChoice {
    fn from(choice: BackendChoice) -> Self {
        match choice {
            BackendChoice::Auto => Self::Auto,
            BackendChoice::Qemu => Self::Qemu,
            BackendChoice::Firecracker => Self::Firecracker,
        }
    }
}

/// CPU accelerator a sandbox runs with: hardware `kvm` or emulated `tcg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Accel)]
pub enum AccelName {
    Kvm,
    Tcg,
}

impl From<Accel> for AccelName {
    fn from(accel: Accel) -> Self {
        match accel {
            Accel::Kvm => Self::Kvm,
            Accel::Tcg => Self::Tcg,
        }
    }
}

/// The accelerator a create request names; `auto` uses KVM when a
/// timed probe finds it usable and fast, else TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = AccelChoice)]
pub enum AccelChoiceName {
    Auto,
    Kvm,
    Tcg,
}

impl From<AccelChoiceName> for AccelChoice {
    fn from(choice: AccelChoiceName) -> Self {
        match choice {
            AccelChoiceName::Auto => Self::Auto,
            AccelChoiceName::Kvm => Self::Kvm,
            AccelChoiceName::Tcg => Self::Tcg,
        }
    }
}

/// Network access: `open` gives outbound access with the host's loopback
/// blocked; `off` gives no network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Open,
    Off,
}

impl From<spec::NetworkMode> for NetworkMode {
    fn from(mode: spec::NetworkMode) -> Self {
        match mode {
            spec::NetworkMode::Open => Self::Open,
            spec::NetworkMode::Off => Self::Off,
        }
    }
}

impl From<NetworkMode> for spec::NetworkMode {
    fn from(mode: NetworkMode) -> Self {
        match mode {
            NetworkMode::Open => Self::Open,
            NetworkMode::Off => Self::Off,
        }
    }
}

/// One sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    #[schema(example = "sbx-4k2m9xq7ab")]
    pub id: String,
    pub status: SandboxStatus,
    pub os: Os,
    /// The image the sandbox booted: `default` or a `file://` reference.
    pub image: String,
    /// Guest memory in MiB.
    pub memory: u32,
    /// Disk size in MiB.
    pub disk_size: u32,
    pub cpus: u32,
    pub backend: Backend,
    pub accel: AccelName,
    pub network: NetworkMode,
    /// Creation time, RFC 3339 in UTC.
    #[schema(example = "2026-12-01T10:00:00.000Z")]
    pub created_at: String,
    /// Milliseconds from starting the VMM to a ready agent, at the last boot.
    pub boot_ms: Option<u64>,
    /// Reason the sandbox is in `error`.
    pub error: Option<String>,
}

impl From<SandboxInfo> for Sandbox {
    fn from(info: SandboxInfo) -> Self {
        Self {
            id: info.id,
            status: info.status.into(),
            os: info.os.into(),
            image: info.image,
            memory: info.memory,
            disk_size: info.disk_size,
            cpus: info.cpus,
            backend: info.backend.into(),
            accel: info.accel.into(),
            network: info.network.into(),
            created_at: info.created_at,
            boot_ms: info.boot_ms,
            error: info.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_engine() {
        for state in SandboxState::ALL {
            let ours = serde_json::to_value(SandboxStatus::from(state)).unwrap();
            assert_eq!(ours, state.as_str());
        }
    }

    #[test]
    fn enum_names_match_engine() {
        let pairs = [
            (
                serde_json::to_value(Backend::from(spec::Backend::Qemu)),
                spec::Backend::Qemu.to_string(),
            ),
            (
                serde_json::to_value(Backend::from(spec::Backend::Firecracker)),
                spec::Backend::Firecracker.to_string(),
            ),
            (
                serde_json::to_value(AccelName::from(Accel::Kvm)),
                Accel::Kvm.to_string(),
            ),
            (
                serde_json::to_value(AccelName::from(Accel::Tcg)),
                Accel::Tcg.to_string(),
            ),
            (
                serde_json::to_value(NetworkMode::from(spec::NetworkMode::Off)),
                spec::NetworkMode::Off.to_string(),
            ),
            (
                serde_json::to_value(Os::from(spec::Os::Linux)),
                spec::Os::Linux.to_string(),
            ),
        ];
        for (ours, engine) in pairs {
            assert_eq!(ours.unwrap(), engine);
        }
    }
}
