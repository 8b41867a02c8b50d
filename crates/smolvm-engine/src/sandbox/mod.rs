//! Sandbox operations, one file each: create, exec, files, and the
//! lifecycle (stop, start, delete, prune), over the store and the
//! supervisors. The CLI and the HTTP server both drive sandboxes through
//! [`Engine`].

mod create;
mod error;
mod exec;
mod files;
mod info;
mod lifecycle;
mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::id::SandboxId;
use crate::image::ImageStore;
use crate::layout::SandboxDir;
use crate::paths::Paths;
use crate::store::{SandboxRecord, Store};

pub use create::CreateProgress;
pub use error::EngineError;
pub use exec::{ExecEvent, ExecOutput, ExecStream};
pub use files::FileReader;
pub use info::SandboxInfo;

/// The entry point for sandbox operations on one host.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    paths: Paths,
    store: Store,
    images: ImageStore,
    /// The `smolvm` binary, run as `smolvm __supervise DIR` per sandbox.
    smolvm_program: PathBuf,
    /// Caps concurrent cold boots at the host's core count, so a burst of
    /// creates queues instead of starving each other past the boot timeout.
    boot_slots: Semaphore,
}

impl Engine {
    /// Opens the engine on `paths`, creating its directories and database.
    /// `smolvm_program` is the binary that supervises sandboxes.
    pub fn open(paths: Paths, smolvm_program: PathBuf) -> Result<Self, EngineError> {
        for dir in [
            paths.data_dir().to_path_buf(),
            paths.sandboxes_dir(),
            paths.cache_dir(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| EngineError::io(format!("create {}", dir.display()), source))?;
        }
        let store = Store::open(&paths.database())?;
        let images = ImageStore::new(&paths);
        let boot_slots = Semaphore::new(crate::limits::host_cpus() as usize);
        let inner = Inner {
            paths,
            store,
            images,
            smolvm_program,
            boot_slots,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn paths(&self) -> &Paths {
        &self.inner.paths
    }

    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn sandbox_dir(&self, id: &SandboxId) -> SandboxDir {
        SandboxDir::new(self.inner.paths.sandboxes_dir().join(id.as_str()))
    }

    /// Looks up a sandbox by id text, reconciled with its processes.
    pub async fn get(&self, id: &str) -> Result<SandboxInfo, EngineError> {
        let record = self.record(id)?;
        let record = self.reconcile(record);
        Ok(SandboxInfo::from(&record))
    }

    /// Lists every sandbox on the host, reconciled with its processes.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, EngineError> {
        let records = self.inner.store.list()?;
        Ok(records
            .into_iter()
            .map(|r| SandboxInfo::from(&self.reconcile(r)))
            .collect())
    }

    fn record(&self, id: &str) -> Result<SandboxRecord, EngineError> {
        let parsed: SandboxId = id
            .parse()
            .map_err(|_| EngineError::NotFound { id: id.to_owned() })?;
        self.inner
            .store
            .get(&parsed)?
            .ok_or_else(|| EngineError::NotFound { id: id.to_owned() })
    }
}
