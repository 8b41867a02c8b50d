//! The public view of one sandbox, named as in the HTTP API.

use std::time::SystemTime;

use serde::Serialize;

use crate::accel::Accel;
use crate::spec::{Backend, NetworkMode, Os};
use crate::state::SandboxState;
use crate::store::SandboxRecord;

/// One sandbox as callers see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub status: SandboxState,
    pub os: Os,
    pub image: String,
    /// Guest memory in MiB.
    pub memory: u32,
    /// Disk size in MiB.
    pub disk_size: u32,
    pub cpus: u32,
    pub backend: Backend,
    pub accel: Accel,
    pub network: NetworkMode,
    /// Creation time, RFC 3339 in UTC.
    pub created_at: String,
    /// Milliseconds from spawning the VMM to a ready agent, last boot.
    pub boot_ms: Option<u64>,
    /// The reason the sandbox is in `error`.
    pub error: Option<String>,
}

impl From<&SandboxRecord> for SandboxInfo {
    fn from(record: &SandboxRecord) -> Self {
        Self {
            id: record.id.to_string(),
            status: record.state,
            os: record.spec.os,
            image: record.image.clone(),
            memory: record.spec.memory_mib,
            disk_size: record.spec.disk_mib,
            cpus: record.spec.cpus,
            backend: record.spec.backend,
            accel: record.accel,
            network: record.spec.network,
            created_at: rfc3339(record.created_at),
            boot_ms: record.boot_ms,
            error: record.error.clone(),
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
