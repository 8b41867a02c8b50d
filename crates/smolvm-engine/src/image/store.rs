//! The image store: built images under the images folder, one folder per
//! image, each described by its `manifest.json`.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fs4::FileExt;

use super::ImageError;
use super::fingerprint::Fingerprint;
use super::manifest::{MANIFEST_FILE, Manifest};
use super::reference::{DEFAULT_IMAGE, DiskFormat, Reference, detect_disk_format};
use crate::paths::Paths;

/// Lock file that serializes builds and removals across processes.
const LOCK_FILE: &str = ".lock";

/// Built images on this host.
#[derive(Debug, Clone)]
pub struct ImageStore {
    images_dir: PathBuf,
    cache_dir: PathBuf,
}

/// The files a sandbox boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    /// Image name (`default`), or the `file://` reference it came from.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Root disk; sandboxes use it as the read-only base of an overlay.
    pub root_disk: PathBuf,
    pub root_format: DiskFormat,
    pub kernel_release: String,
    /// Changes whenever any of the files above changes, so it can key
    /// anything derived from the image, such as template snapshots.
    pub fingerprint: String,
}

/// One built image, as `list` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    pub fingerprint: String,
    pub kernel_release: String,
    /// Version of the Debian kernel package.
    pub kernel_version: String,
    pub suite: String,
    pub created: SystemTime,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub root_disk: PathBuf,
    pub kernel_bytes: u64,
    pub initrd_bytes: u64,
    /// Apparent size of the root filesystem.
    pub root_disk_bytes: u64,
    /// Disk space the root filesystem takes; less than its size, because
    /// the file is sparse.
    pub root_disk_allocated_bytes: u64,
}

/// Holds the image build lock until dropped.
#[derive(Debug)]
pub(crate) struct BuildLock {
    _file: File,
}

impl ImageStore {
    /// Creates a store over `paths`, made absolute against the current
    /// directory so that the returned file paths work from any directory.
    pub fn new(paths: &Paths) -> Self {
        let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Self {
            images_dir: absolute(paths.images_dir()),
            cache_dir: absolute(&paths.cache_dir()),
        }
    }

    pub(crate) fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    pub(crate) fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub(crate) fn image_dir(&self, name: &str) -> PathBuf {
        self.images_dir.join(name)
    }

    /// Lists built images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let mut images = Vec::new();
        for (dir, manifest) in self.built_images()? {
            images.push(image_info(&dir, &manifest)?);
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Returns the folder and manifest of every built image.
    fn built_images(&self) -> Result<Vec<(PathBuf, Manifest)>, ImageError> {
        let entries = match std::fs::read_dir(&self.images_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(ImageError::io("read", &self.images_dir)(err)),
        };

        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ImageError::io("read", &self.images_dir))?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden || !entry.path().is_dir() {
                continue;
            }
            if let Some(manifest) = Manifest::read(&entry.path())? {
                images.push((entry.path(), manifest));
            }
        }
        Ok(images)
    }

    /// Resolves a reference to bootable files without building anything.
    ///
    /// `None`, `default` and `debian-bookworm` name the default image.
    /// `file:///PATH` names a raw ext4 filesystem or a qcow2 disk, which
    /// are distinguished by their contents and booted with the default
    /// image's kernel and initramfs. Returns `Ok(None)` while the default image is not
    /// built.
    pub fn resolve(&self, reference: Option<&str>) -> Result<Option<BootImage>, ImageError> {
        match Reference::parse(reference)? {
            Reference::Default => self.resolve_default(),
            Reference::File(path) => {
                let reference = reference.unwrap_or_default();
                let format = detect_disk_format(reference, &path)?;
                let Some(default) = self.resolve_default()? else {
                    return Ok(None);
                };
                Ok(Some(file_image(reference, &path, format, default)?))
            }
        }
    }

    fn resolve_default(&self) -> Result<Option<BootImage>, ImageError> {
        let dir = self.image_dir(DEFAULT_IMAGE);
        let Some(manifest) = Manifest::read(&dir)? else {
            return Ok(None);
        };
        if let Some(path) = manifest.missing_file(&dir) {
            return Err(ImageError::MissingImageFile {
                name: manifest.name,
                path,
            });
        }
        Ok(Some(boot_image(&dir, &manifest)))
    }

    /// Removes a built image and its files.
    ///
    /// Running sandboxes keep working because their processes hold the
    /// files open, but they cannot boot again from this image.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        validate_name(name)?;
        let _lock = self.lock(&mut |_| {})?;

        let dir = self.image_dir(name);
        if !dir.join(MANIFEST_FILE).is_file() {
            return Err(ImageError::ImageNotFound {
                name: name.to_owned(),
            });
        }
        std::fs::remove_dir_all(&dir).map_err(ImageError::io("remove", &dir))
    }

    /// Removes the files of earlier builds that no manifest names and that
    /// are not in `in_use`, and returns their paths.
    ///
    /// `in_use` must list every kernel, initramfs and root disk path that an
    /// existing sandbox, running or stopped, boots from. Builds never delete
    /// these files themselves because only the caller knows which
    /// sandboxes exist.
    pub fn prune(&self, in_use: &[PathBuf]) -> Result<Vec<PathBuf>, ImageError> {
        let _lock = self.lock(&mut |_| {})?;

        let mut removed = Vec::new();
        for (dir, manifest) in self.built_images()? {
            let entries = std::fs::read_dir(&dir).map_err(ImageError::io("read", &dir))?;
            for entry in entries {
                let entry = entry.map_err(ImageError::io("read", &dir))?;
                let name = entry.file_name();
                let path = entry.path();
                let current = name == MANIFEST_FILE || manifest.files().iter().any(|f| name == *f);
                let hidden = name.to_string_lossy().starts_with('.');
                if current || hidden || in_use.contains(&path) {
                    continue;
                }

                tracing::info!(path = %path.display(), "removing an unused image file");
                std::fs::remove_file(&path).map_err(ImageError::io("remove", &path))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Takes the build lock, calling `waiting` once if another process
    /// holds it.
    pub(crate) fn lock(&self, waiting: &mut dyn FnMut(&Path)) -> Result<BuildLock, ImageError> {
        std::fs::create_dir_all(&self.images_dir)
            .map_err(ImageError::io("create", &self.images_dir))?;
        let path = self.images_dir.join(LOCK_FILE);
        let lock_error = |source| ImageError::Lock {
            path: path.clone(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_error)?;

        match FileExt::try_lock(&file) {
            Ok(()) => return Ok(BuildLock { _file: file }),
            Err(fs4::TryLockError::WouldBlock) => waiting(&path),
            Err(fs4::TryLockError::Error(err)) => return Err(lock_error(err)),
        }
        FileExt::lock(&file).map_err(lock_error)?;
        Ok(BuildLock { _file: file })
    }
}

/// Accepts names that are a single path component and not hidden.
fn validate_name(name: &str) -> Result<(), ImageError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(ImageError::InvalidImageName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

pub(crate) fn boot_image(dir: &Path, manifest: &Manifest) -> BootImage {
    BootImage {
        name: manifest.name.clone(),
        kernel: dir.join(&manifest.kernel.file),
        initrd: dir.join(&manifest.initrd.file),
        root_disk: dir.join(&manifest.rootfs.file),
        root_format: DiskFormat::Raw,
        kernel_release: manifest.kernel.release.clone(),
        fingerprint: manifest.fingerprint.clone(),
    }
}

/// Pairs a user's root disk with the default image's kernel and initramfs.
/// The fingerprint covers the disk's size and modification time, not its
/// contents, so that resolving stays cheap.
fn file_image(
    reference: &str,
    path: &Path,
    format: DiskFormat,
    default: BootImage,
) -> Result<BootImage, ImageError> {
    let meta = std::fs::metadata(path).map_err(ImageError::io("read", path))?;
    let fingerprint = Fingerprint::new("file-image")
        .field("base", &default.fingerprint)
        .field("path", path.as_os_str().as_encoded_bytes())
        .field("size", meta.len().to_le_bytes())
        .field("mtime", meta.mtime().to_le_bytes())
        .field("mtime_nsec", meta.mtime_nsec().to_le_bytes())
        .finish();
    Ok(BootImage {
        name: reference.to_owned(),
        root_disk: path.to_owned(),
        root_format: format,
        fingerprint,
        ..default
    })
}

fn image_info(dir: &Path, manifest: &Manifest) -> Result<ImageInfo, ImageError> {
    let boot = boot_image(dir, manifest);
    let size = |path: &Path| -> Result<(u64, u64), ImageError> {
        let meta = std::fs::metadata(path).map_err(|_| ImageError::MissingImageFile {
            name: manifest.name.clone(),
            path: path.to_owned(),
        })?;
        Ok((meta.len(), meta.blocks() * 512))
    };
    let (kernel_bytes, _) = size(&boot.kernel)?;
    let (initrd_bytes, _) = size(&boot.initrd)?;
    let (root_disk_bytes, root_disk_allocated_bytes) = size(&boot.root_disk)?;

    Ok(ImageInfo {
        name: boot.name,
        fingerprint: boot.fingerprint,
        kernel_release: boot.kernel_release,
        kernel_version: manifest.kernel.version.clone(),
        suite: manifest.rootfs.suite.clone(),
        created: UNIX_EPOCH + Duration::from_secs(manifest.created_unix),
        kernel: boot.kernel,
        initrd: boot.initrd,
        root_disk: boot.root_disk,
        kernel_bytes,
        initrd_bytes,
        root_disk_bytes,
        root_disk_allocated_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::tests::sample;

    /// Creates a store whose default image is the sample manifest with small files.
    fn store_with_default() -> (tempfile::TempDir, ImageStore) {
        let data = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&Paths::new(data.path()));
        let dir = store.image_dir(DEFAULT_IMAGE);
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = sample();
        for file in manifest.files() {
            std::fs::write(dir.join(file), file).unwrap();
        }
        manifest.write(&dir).unwrap();
        (data, store)
    }

    fn ext4_file(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        let mut data = vec![0u8; 2048];
        data[1080..1082].copy_from_slice(&[0x53, 0xef]);
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn resolve_nothing_built() {
        let data = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&Paths::new(data.path()));
        let disk = ext4_file(data.path(), "root.ext4");

        assert_eq!(store.resolve(None).unwrap(), None);
        assert_eq!(store.resolve(Some("default")).unwrap(), None);
        let reference = format!("file://{}", disk.display());
        assert_eq!(store.resolve(Some(&reference)).unwrap(), None);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn resolve_default_image() {
        let (_data, store) = store_with_default();
        let dir = store.image_dir(DEFAULT_IMAGE);

        let image = store.resolve(Some("debian-bookworm")).unwrap().unwrap();

        assert_eq!(image.name, "default");
        assert_eq!(image.kernel, dir.join("vmlinuz-6.1.0-57-cloud-amd64"));
        assert_eq!(image.initrd, dir.join("initrd-0123456789ab.img"));
        assert_eq!(image.root_disk, dir.join("rootfs-ba9876543210.ext4"));
        assert_eq!(image.root_format, DiskFormat::Raw);
        assert_eq!(image.kernel_release, "6.1.0-57-cloud-amd64");
        assert_eq!(store.resolve(None).unwrap(), Some(image));
    }

    #[test]
    fn resolve_file_reference_uses_default_kernel() {
        let (data, store) = store_with_default();
        let disk = ext4_file(data.path(), "mine.img");
        let reference = format!("file://{}", disk.display());
        let default = store.resolve(None).unwrap().unwrap();

        let image = store.resolve(Some(&reference)).unwrap().unwrap();

        assert_eq!(image.name, reference);
        assert_eq!(image.root_disk, disk);
        assert_eq!(image.root_format, DiskFormat::Raw);
        assert_eq!(image.kernel, default.kernel);
        assert_eq!(image.initrd, default.initrd);
        assert_ne!(image.fingerprint, default.fingerprint);
    }

    #[test]
    fn resolve_reports_missing_file() {
        let (_data, store) = store_with_default();
        let initrd = store
            .image_dir(DEFAULT_IMAGE)
            .join("initrd-0123456789ab.img");
        std::fs::remove_file(&initrd).unwrap();

        let err = store.resolve(None).unwrap_err();

        assert!(
            matches!(&err, ImageError::MissingImageFile { path, .. } if *path == initrd),
            "{err}"
        );
    }

    #[test]
    fn list_reports_sizes() {
        let (_data, store) = store_with_default();

        let images = store.list().unwrap();

        assert_eq!(images.len(), 1);
        let info = &images[0];
        assert_eq!(info.name, "default");
        assert_eq!(info.kernel_version, "6.1.192-3");
        assert_eq!(info.initrd_bytes, "initrd-0123456789ab.img".len() as u64);
        assert_eq!(
            info.created,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }

    #[test]
    fn prune_keeps_current_and_used_files() {
        let (_data, store) = store_with_default();
        let dir = store.image_dir(DEFAULT_IMAGE);
        let used = dir.join("rootfs-old-1.ext4");
        let unused = dir.join("initrd-old.img");
        std::fs::write(&used, "x").unwrap();
        std::fs::write(&unused, "x").unwrap();

        let removed = store.prune(std::slice::from_ref(&used)).unwrap();

        assert_eq!(removed, std::slice::from_ref(&unused));
        assert!(!unused.exists());
        assert!(used.exists());
        assert!(dir.join(MANIFEST_FILE).exists());
        for file in sample().files() {
            assert!(dir.join(file).exists(), "{file}");
        }
    }

    #[test]
    fn remove_image() {
        let (_data, store) = store_with_default();

        store.remove("default").unwrap();

        assert!(!store.image_dir(DEFAULT_IMAGE).exists());
        assert_eq!(store.resolve(None).unwrap(), None);
        let err = store.remove("default").unwrap_err();
        assert!(matches!(err, ImageError::ImageNotFound { .. }), "{err}");
    }

    #[test]
    fn remove_rejects_path_names() {
        let (_data, store) = store_with_default();
        for name in ["", "..", ".lock", "a/b", "../default"] {
            let err = store.remove(name).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidImageName { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn lock_waits_for_other_holder() {
        let data = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&Paths::new(data.path()));
        let first_lock = store.lock(&mut |_| panic!("lock is free")).unwrap();

        let (sender, receiver) = std::sync::mpsc::channel();
        let other = store.clone();
        let waiter = std::thread::spawn(move || {
            let mut waited = false;
            let _lock = other.lock(&mut |_| waited = true).unwrap();
            sender.send(waited).unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            receiver.try_recv().is_err(),
            "second lock taken while the first is held"
        );

        drop(first_lock);
        assert!(
            receiver.recv_timeout(Duration::from_secs(5)).unwrap(),
            "waiter was told"
        );
        waiter.join().unwrap();
    }
}
