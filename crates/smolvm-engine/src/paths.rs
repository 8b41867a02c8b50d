//! Where smolvm keeps its files on the host.
//!
//! The data directory is `$SMOLVM_DATA_DIR`, else `$XDG_STATE_HOME/smolvm`,
//! else `~/.local/state/smolvm`. It contains `smolvm.db`, `images/` (unless
//! `$SMOLVM_IMAGES_DIR` points elsewhere) and `sandboxes/<id>/`.

use std::path::{Path, PathBuf};

/// Resolved host paths for one smolvm installation.
#[derive(Debug, Clone)]
pub struct Paths {
    data_dir: PathBuf,
    images_dir: PathBuf,
}

impl Paths {
    /// Resolves paths from the environment (see the module docs).
    pub fn from_env() -> Self {
        // Paths are made absolute: supervisors and QEMU run in the sandbox
        // directory, where a relative path would point elsewhere.
        let data_dir = match std::env::var_os("SMOLVM_DATA_DIR") {
            Some(dir) if !dir.is_empty() => absolute(PathBuf::from(dir)),
            _ => default_data_dir(),
        };
        let images_dir = match std::env::var_os("SMOLVM_IMAGES_DIR") {
            Some(dir) if !dir.is_empty() => absolute(PathBuf::from(dir)),
            _ => data_dir.join("images"),
        };
        Self {
            data_dir,
            images_dir,
        }
    }

    /// Uses `data_dir` with images stored inside it.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let images_dir = data_dir.join("images");
        Self {
            data_dir,
            images_dir,
        }
    }

    /// Returns a copy that stores images in `images_dir`.
    pub fn with_images_dir(mut self, images_dir: impl Into<PathBuf>) -> Self {
        self.images_dir = images_dir.into();
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    /// The SQLite database file.
    pub fn database(&self) -> PathBuf {
        self.data_dir.join("smolvm.db")
    }

    /// Directory holding one folder per sandbox.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.data_dir.join("sandboxes")
    }

    /// Whether images live inside the data directory, so no other data
    /// directory's sandboxes can be using them.
    pub fn images_are_private(&self) -> bool {
        self.images_dir.starts_with(&self.data_dir)
    }

    /// Directory for downloads and other rebuildable files.
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

fn default_data_dir() -> PathBuf {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("smolvm");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".local/state/smolvm")
}
