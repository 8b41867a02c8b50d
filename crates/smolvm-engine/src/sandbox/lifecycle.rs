//! Stop, start, delete and prune.

use std::time::Duration;

use super::reconcile::{kill_and_wait, wait_gone};
use super::{CreateProgress, Engine, EngineError, SandboxInfo};
use crate::client::Connection;
use crate::id::SandboxId;
use crate::state::SandboxState;
use crate::store::SandboxRecord;
use crate::supervisor::{LaunchConfig, STOP_GRACE};

/// Sandbox directories younger than this are never pruned as orphans.
const ORPHAN_DIR_MIN_AGE: Duration = Duration::from_secs(120);

/// How long delete lets the guest power off before killing the VMM.
const DELETE_GRACE: Duration = Duration::from_secs(3);

impl Engine {
    /// Powers a running sandbox off, keeping its disk for `start`.
    pub async fn stop(&self, id: &str) -> Result<SandboxInfo, EngineError> {
        let record = self.reconcile(self.record(id)?);
        if !record.state.can_stop() {
            return Err(wrong_state(&record, "stop"));
        }
        let moved = self.store().transition(
            &record.id,
            &[SandboxState::Running],
            SandboxState::Stopping,
            None,
        )?;
        if !moved {
            let current = self.record(id)?;
            return Err(wrong_state(&current, "stop"));
        }

        self.shut_down(&record, STOP_GRACE).await;
        self.store().transition(
            &record.id,
            &[SandboxState::Stopping, SandboxState::Running],
            SandboxState::Stopped,
            None,
        )?;
        self.get(id).await
    }

    /// Boots a stopped sandbox again from its disk.
    pub async fn start(&self, id: &str) -> Result<SandboxInfo, EngineError> {
        let record = self.reconcile(self.record(id)?);
        if !record.state.can_start() {
            return Err(wrong_state(&record, "start"));
        }
        let moved = self.store().transition(
            &record.id,
            &[SandboxState::Stopped, SandboxState::Error],
            SandboxState::Creating,
            None,
        )?;
        if !moved {
            return Err(wrong_state(&self.record(id)?, "start"));
        }

        let dir = self.sandbox_dir(&record.id);
        let mut supervisor_pid = None;
        let booted = self
            .boot(
                &record.id,
                &dir,
                &|_: CreateProgress| {},
                &mut supervisor_pid,
            )
            .await;
        if let Err(e) = booted {
            if let Some(pid) = supervisor_pid {
                kill_and_wait(pid, Duration::from_secs(5));
            }
            let reason = e.to_string();
            self.store().transition(
                &record.id,
                &[SandboxState::Creating],
                SandboxState::Error,
                Some(&reason),
            )?;
            return Err(e);
        }
        self.get(id).await
    }

    /// Stops (if needed) and removes a sandbox: its processes, its
    /// directory and its row.
    pub async fn delete(&self, id: &str) -> Result<(), EngineError> {
        let record = self.record(id)?;
        if record.state.has_supervisor() {
            self.shut_down(&record, DELETE_GRACE).await;
        }
        self.remove(&record.id)
    }

    /// Removes sandboxes in `error` and directories without a sandbox;
    /// returns the ids removed.
    pub async fn prune(&self) -> Result<Vec<String>, EngineError> {
        let mut removed = Vec::new();
        for info in self.list().await? {
            if info.status == SandboxState::Error {
                self.delete(&info.id).await?;
                removed.push(info.id);
            }
        }

        let dir = self.paths().sandboxes_dir();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| EngineError::io(format!("read {}", dir.display()), e))?;
        for entry in entries.flatten() {
            // A create makes the directory just before it records the
            // sandbox; leave young directories to it.
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_none_or(|age| age < ORPHAN_DIR_MIN_AGE) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = match name.parse::<SandboxId>() {
                Ok(id) => self.store().get(&id)?.is_some(),
                Err(_) => false,
            };
            if !known {
                std::fs::remove_dir_all(entry.path()).map_err(|e| {
                    EngineError::io(format!("remove {}", entry.path().display()), e)
                })?;
                removed.push(name);
            }
        }
        self.prune_images(&mut removed)?;
        Ok(removed)
    }

    /// Removes image files that neither the current images nor any
    /// remaining sandbox use.
    fn prune_images(&self, removed: &mut Vec<String>) -> Result<(), EngineError> {
        // With a shared images directory, sandboxes of other data
        // directories may boot from files this one cannot see in use.
        if !self.paths().images_are_private() {
            return Ok(());
        }
        let in_use = self.image_files_in_use()?;
        let pruned = self.images().prune(&in_use)?;
        removed.extend(pruned.into_iter().map(|p| p.display().to_string()));
        Ok(())
    }

    /// Lists the image files that this data directory's sandboxes boot from.
    pub fn image_files_in_use(&self) -> Result<Vec<std::path::PathBuf>, EngineError> {
        let mut in_use = Vec::new();
        for record in self.store().list()? {
            let path = self.sandbox_dir(&record.id).launch_config();
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if let Ok(launch) = serde_json::from_str::<LaunchConfig>(&text) {
                in_use.extend(launch.image_files);
            }
        }
        Ok(in_use)
    }

    /// Asks the supervisor to power the sandbox off, and makes sure the
    /// supervisor and VMM are gone afterwards, killing them if needed.
    async fn shut_down(&self, record: &SandboxRecord, grace: Duration) {
        let dir = self.sandbox_dir(&record.id);
        if self.supervisor_alive(record)
            && let Ok(mut conn) = Connection::connect(&dir.control_socket()).await
            && let Err(e) = conn.stop(grace).await
        {
            tracing::warn!(sandbox.id = %record.id, error = %e, "graceful stop failed; killing");
        }

        let current = self.store().get(&record.id).ok().flatten();
        let supervisor = current
            .as_ref()
            .and_then(|r| r.supervisor_pid)
            .or(record.supervisor_pid);
        if let Some(pid) = supervisor
            && super::reconcile::is_supervisor_of(pid, &record.id)
            && !wait_gone(pid, grace).await
        {
            kill_and_wait(pid, Duration::from_secs(5));
        }
        // The VMM dies with its supervisor (parent-death signal); this
        // catches one that outlived it anyway.
        if let Some(vmm) = current.as_ref().and_then(|r| r.vmm_pid).or(record.vmm_pid)
            && super::reconcile::process_mentions(vmm, dir.root().to_string_lossy().as_ref())
            && !wait_gone(vmm, Duration::from_secs(2)).await
        {
            kill_and_wait(vmm, Duration::from_secs(5));
        }
        for socket in dir.sockets() {
            let _ = std::fs::remove_file(socket);
        }
    }

    fn remove(&self, id: &SandboxId) -> Result<(), EngineError> {
        let dir = self.sandbox_dir(id);
        match std::fs::remove_dir_all(dir.root()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(EngineError::io(
                    format!("remove {}", dir.root().display()),
                    e,
                ));
            }
        }
        if !self.store().delete(id)? {
            return Err(EngineError::NotFound { id: id.to_string() });
        }
        Ok(())
    }
}

/// Builds the error for an operation the sandbox's state does not allow,
/// with a hint on what to do instead.
pub(super) fn wrong_state(record: &SandboxRecord, action: &'static str) -> EngineError {
    let needs_running = !matches!(action, "stop" | "start");
    let hint = match record.state {
        SandboxState::Stopped if needs_running => "; start it first with `smolvm sandbox start`",
        SandboxState::Creating => "; wait until it is running",
        SandboxState::Stopping => "; wait until it has stopped",
        SandboxState::Error => {
            "; see its error with `smolvm sandbox info`, then start or delete it"
        }
        _ => "",
    };
    EngineError::WrongState {
        id: record.id.to_string(),
        state: record.state,
        action,
        hint,
    }
}
