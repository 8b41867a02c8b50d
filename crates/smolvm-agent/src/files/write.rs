//! One upload: a temporary file beside the target, renamed into place once
//! complete. Dropping an unfinished upload removes the temporary file.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{FileError, absolute};

/// Numbers temporary files, so concurrent uploads to one target do not
/// collide.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub(crate) struct Upload {
    target: PathBuf,
    temp: PathBuf,
    file: File,
    mode: u32,
    bytes: u64,
    /// Whether the temporary file still needs removing on drop.
    armed: bool,
}

impl Upload {
    /// Checks the target and creates the temporary file beside it.
    pub(crate) fn begin(path: &str, mode: u32, create_parents: bool) -> Result<Self, FileError> {
        let target = absolute(path)?;
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(FileError::NoFileName {
                path: path.to_string(),
            });
        };
        if target.is_dir() {
            return Err(FileError::IsDirectory {
                path: path.to_string(),
            });
        }
        prepare_parent(parent, create_parents)?;

        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let temp_name = format!(
            ".{}.smolvm-{}-{n}.tmp",
            name.to_string_lossy(),
            std::process::id()
        );
        let temp = parent.join(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(FileError::io("create", &temp))?;

        Ok(Self {
            target,
            temp,
            file,
            mode: mode & 0o7777,
            bytes: 0,
            armed: true,
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), FileError> {
        self.file
            .write_all(data)
            .map_err(FileError::io("write", &self.temp))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Syncs the data, applies the mode and renames the file into place.
    /// Returns the number of bytes written.
    pub(crate) fn finish(mut self) -> Result<u64, FileError> {
        self.file
            .sync_all()
            .map_err(FileError::io("sync", &self.temp))?;
        self.file
            .set_permissions(Permissions::from_mode(self.mode))
            .map_err(FileError::io("set the mode of", &self.temp))?;
        fs::rename(&self.temp, &self.target).map_err(FileError::io("rename into", &self.target))?;
        self.armed = false;

        // Persist the rename itself; the data is already safe, so a failure
        // here is not worth failing the request for.
        if let Some(parent) = self.target.parent() {
            let _ = File::open(parent).and_then(|dir| dir.sync_all());
        }
        Ok(self.bytes)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn prepare_parent(parent: &Path, create_parents: bool) -> Result<(), FileError> {
    if create_parents {
        return fs::create_dir_all(parent).map_err(FileError::io("create directory", parent));
    }
    match fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(FileError::ParentNotDirectory {
            path: parent.display().to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FileError::ParentMissing {
            path: parent.display().to_string(),
        }),
        Err(e) => Err(FileError::io("inspect", parent)(e)),
    }
}
