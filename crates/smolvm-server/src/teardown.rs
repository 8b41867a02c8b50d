//! Sandboxes this server is stopping or deleting. Powering a sandbox off
//! terminates its commands, which then look like any command killed by a
//! signal. This record lets an exec cut short that way report why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Reason a sandbox is going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Teardown {
    Stop,
    Delete,
}

/// The sandboxes being torn down, by id; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Teardowns {
    inner: Arc<Mutex<HashMap<String, Teardown>>>,
}

impl Teardowns {
    /// Records that `id` is being torn down until the guard is dropped.
    pub(crate) fn begin(&self, id: &str, kind: Teardown) -> TeardownGuard {
        self.lock().insert(id.to_owned(), kind);
        TeardownGuard {
            teardowns: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Returns how `id` is being torn down, if it is.
    pub(crate) fn get(&self, id: &str) -> Option<Teardown> {
        self.lock().get(id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Teardown>> {
        // The map stays consistent even if a holder panicked: every
        // operation on it is a single insert, remove or lookup.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes its sandbox from the record when dropped.
#[derive(Debug)]
pub(crate) struct TeardownGuard {
    teardowns: Teardowns,
    id: String,
}

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        self.teardowns.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_scopes_record() {
        let teardowns = Teardowns::default();
        {
            let _guard = teardowns.begin("sbx-a", Teardown::Delete);
            assert_eq!(teardowns.get("sbx-a"), Some(Teardown::Delete));
            assert_eq!(teardowns.get("sbx-b"), None);
        }
        assert_eq!(teardowns.get("sbx-a"), None);
    }
}
