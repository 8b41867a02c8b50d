//! Scratch folders for image builds, removed when dropped.
//!
//! A build writes everything into `images/.build-*` first and renames the
//! finished files into the image folder, so a half-built image is never
//! visible.
//!
//! debootstrap mounts `proc` and `sys` inside its target while it runs and
//! unmounts them when it exits. If one is still mounted because the build
//! was killed, removal detaches it first. If that fails, the folder stays,
//! so that removal never reaches into a host filesystem.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::ImageError;

pub(crate) const STAGING_PREFIX: &str = ".build-";

/// A scratch folder inside the images folder.
#[derive(Debug)]
pub(crate) struct StagingDir {
    path: PathBuf,
}

impl StagingDir {
    pub(crate) fn create(images_dir: &Path) -> Result<Self, ImageError> {
        let path = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .disable_cleanup(true)
            .tempdir_in(images_dir)
            .map_err(ImageError::io("create a folder in", images_dir))?
            .path()
            .to_owned();
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        remove_staging(&self.path);
    }
}

/// Removes staging folders that a killed build left behind. The caller
/// holds the build lock, so no other build is using them.
pub(crate) fn remove_stale(images_dir: &Path) -> Result<(), ImageError> {
    let entries = match std::fs::read_dir(images_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(ImageError::io("read", images_dir)(err)),
    };
    for entry in entries {
        let entry = entry.map_err(ImageError::io("read", images_dir))?;
        if entry
            .file_name()
            .as_bytes()
            .starts_with(STAGING_PREFIX.as_bytes())
        {
            tracing::info!(path = %entry.path().display(), "removing a staging folder left by an earlier build");
            remove_staging(&entry.path());
        }
    }
    Ok(())
}

/// Removes `dir` unless something is still mounted below it; errors are
/// logged, because this runs in `Drop`.
fn remove_staging(dir: &Path) {
    let remaining = detach_mounts_under(dir);
    if !remaining.is_empty() {
        tracing::warn!(
            path = %dir.display(),
            mounts = ?remaining,
            "leaving a staging folder in place because filesystems are still mounted inside it"
        );
        return;
    }
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %dir.display(), error = %err, "failed to remove a staging folder");
        }
        _ => {}
    }
}

/// Lazily unmounts every mount point below `dir`, deepest first, and
/// returns the ones still mounted afterwards.
fn detach_mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = mounts_under(dir);
    for mount in mounts.iter().rev() {
        let Ok(target) = CString::new(mount.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: `target` is a valid NUL-terminated path that outlives the call.
        let result = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if result != 0 {
            let err = std::io::Error::last_os_error();
            tracing::warn!(mount = %mount.display(), error = %err, "failed to unmount");
        }
    }
    mounts_under(dir)
}

/// Returns the mount points strictly below `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    // mountinfo lists absolute paths without symlinks.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mount_points(&mountinfo)
        .into_iter()
        .filter(|mount| mount.starts_with(&dir) && *mount != dir)
        .collect()
}

/// Reads field 5 (the mount point) of each mountinfo line, undoing the
/// kernel's octal escapes such as `\040` for a space.
fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let mut points = Vec::new();
    for line in mountinfo.lines() {
        let Some(field) = line.split(' ').nth(4) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(field.len());
        let raw = field.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            let escaped = raw
                .get(i + 1..i + 4)
                .and_then(|octal| u8::from_str_radix(std::str::from_utf8(octal).ok()?, 8).ok());
            match (raw[i], escaped) {
                (b'\\', Some(byte)) => {
                    bytes.push(byte);
                    i += 4;
                }
                (byte, _) => {
                    bytes.push(byte);
                    i += 1;
                }
            }
        }
        points.push(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)));
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
41 22 0:5 / /img/.build-x/rootfs/proc rw - proc proc rw
42 22 0:6 / /img/with\\040space rw - tmpfs tmpfs rw
";
        assert_eq!(
            parse_mount_points(text),
            [
                PathBuf::from("/"),
                PathBuf::from("/img/.build-x/rootfs/proc"),
                PathBuf::from("/img/with space"),
            ]
        );
    }

    #[test]
    fn staging_dir_removed_on_drop() {
        let images = tempfile::tempdir().unwrap();
        let staging = StagingDir::create(images.path()).unwrap();
        let path = staging.path().to_owned();
        std::fs::create_dir_all(path.join("a/b")).unwrap();
        std::fs::write(path.join("a/b/file"), "x").unwrap();
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(STAGING_PREFIX)
        );

        drop(staging);

        assert!(!path.exists());
    }

    #[test]
    fn stale_staging_mount_detached() {
        if !crate::host::is_root() {
            println!("skipped stale_staging_mount_detached: needs root to mount a tmpfs");
            return;
        }
        let images = tempfile::tempdir().unwrap();
        let proc_dir = images.path().join(".build-killed/rootfs/proc");
        std::fs::create_dir_all(&proc_dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "smolvm-test"])
            .arg(&proc_dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount -t tmpfs failed");
        std::fs::write(proc_dir.join("file"), "x").unwrap();
        assert_eq!(mounts_under(images.path()).len(), 1);

        remove_stale(images.path()).unwrap();

        assert!(mounts_under(images.path()).is_empty());
        assert!(!images.path().join(".build-killed").exists());
    }

    #[test]
    fn stale_staging_dirs_removed() {
        let images = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(images.path().join(".build-old/tree")).unwrap();
        std::fs::create_dir_all(images.path().join("default")).unwrap();

        remove_stale(images.path()).unwrap();

        assert!(!images.path().join(".build-old").exists());
        assert!(images.path().join("default").exists());
    }
}
