//! `manifest.json`: what one built image consists of.
//!
//! The manifest is the only file read to resolve an image, so resolving
//! never hashes large files. It is written last, through a rename, so an
//! image folder either has a complete manifest or none.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ImageError;
use super::fingerprint::Fingerprint;

pub(crate) const MANIFEST_FILE: &str = "manifest.json";

/// Layout version of the manifest. A manifest of another version is
/// treated as missing by builds and rejected by `resolve`.
pub(crate) const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Manifest {
    pub(crate) format: u32,
    pub(crate) name: String,
    /// Fingerprint of the three parts together.
    pub(crate) fingerprint: String,
    /// Build time, in seconds since the Unix epoch.
    pub(crate) created_unix: u64,
    pub(crate) kernel: KernelPart,
    pub(crate) initrd: InitrdPart,
    pub(crate) rootfs: RootfsPart,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct KernelPart {
    /// File name inside the image folder.
    pub(crate) file: String,
    pub(crate) fingerprint: String,
    /// Debian package name and version the kernel came from.
    pub(crate) package: String,
    pub(crate) version: String,
    /// Kernel release (`uname -r` in the guest).
    pub(crate) release: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct InitrdPart {
    pub(crate) file: String,
    pub(crate) fingerprint: String,
    pub(crate) agent_sha256: String,
    /// Module file names in load order.
    pub(crate) modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RootfsPart {
    /// A raw ext4 filesystem.
    pub(crate) file: String,
    pub(crate) fingerprint: String,
    pub(crate) suite: String,
    pub(crate) packages: Vec<String>,
}

impl Manifest {
    /// Returns the fingerprint of an image made of these three parts. It
    /// covers the root filesystem's file name, which is new for every build,
    /// because two builds from the same inputs still differ in content.
    pub(crate) fn combined_fingerprint(
        kernel: &KernelPart,
        initrd: &InitrdPart,
        rootfs: &RootfsPart,
    ) -> String {
        Fingerprint::new("image")
            .field("kernel", &kernel.fingerprint)
            .field("initrd", &initrd.fingerprint)
            .field("rootfs", &rootfs.fingerprint)
            .field("rootfs_file", &rootfs.file)
            .finish()
    }

    /// Reads `dir/manifest.json`; `Ok(None)` when the file does not exist.
    pub(crate) fn read(dir: &Path) -> Result<Option<Self>, ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(ImageError::io("read", &path)(err)),
        };

        let manifest: Self =
            serde_json::from_slice(&text).map_err(|source| ImageError::InvalidManifest {
                path: path.clone(),
                source,
            })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ImageError::ManifestFormat {
                path,
                found: manifest.format,
                expected: MANIFEST_FORMAT,
            });
        }
        Ok(Some(manifest))
    }

    /// Writes `dir/manifest.json` atomically.
    pub(crate) fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let staging = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).expect("a manifest always serializes");

        std::fs::write(&staging, text).map_err(ImageError::io("write", &staging))?;
        let file = std::fs::File::open(&staging).map_err(ImageError::io("open", &staging))?;
        file.sync_all().map_err(ImageError::io("sync", &staging))?;
        std::fs::rename(&staging, &path).map_err(ImageError::io("rename", &staging))
    }

    /// Returns the file names this manifest refers to.
    pub(crate) fn files(&self) -> [&str; 3] {
        [&self.kernel.file, &self.initrd.file, &self.rootfs.file]
    }

    /// Returns the first file of the image that does not exist in `dir`.
    pub(crate) fn missing_file(&self, dir: &Path) -> Option<PathBuf> {
        self.files()
            .into_iter()
            .map(|file| dir.join(file))
            .find(|path| !path.is_file())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            name: "default".into(),
            fingerprint: "f".repeat(64),
            created_unix: 1_700_000_000,
            kernel: KernelPart {
                file: "vmlinuz-6.1.0-57-cloud-amd64".into(),
                fingerprint: "k".into(),
                package: "linux-image-6.1.0-57-cloud-amd64".into(),
                version: "6.1.192-3".into(),
                release: "6.1.0-57-cloud-amd64".into(),
            },
            initrd: InitrdPart {
                file: "initrd-0123456789ab.img".into(),
                fingerprint: "i".into(),
                agent_sha256: "a".into(),
                modules: vec!["virtio.ko".into()],
            },
            rootfs: RootfsPart {
                file: "rootfs-ba9876543210.ext4".into(),
                fingerprint: "r".into(),
                suite: "bookworm".into(),
                packages: vec!["bash".into()],
            },
        }
    }

    #[test]
    fn manifest_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);

        sample().write(dir.path()).unwrap();

        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(sample()));
        assert!(!dir.path().join(".manifest.json.tmp").exists());
    }

    #[test]
    fn manifest_rejects_other_format() {
        let dir = tempfile::tempdir().unwrap();
        Manifest {
            format: 99,
            ..sample()
        }
        .write(dir.path())
        .unwrap();
        let err = Manifest::read(dir.path()).unwrap_err();
        assert!(
            matches!(err, ImageError::ManifestFormat { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn manifest_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), "{not json").unwrap();
        let err = Manifest::read(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::InvalidManifest { .. }), "{err}");
    }

    #[test]
    fn combined_fingerprint_follows_parts() {
        let Manifest {
            kernel,
            initrd,
            rootfs,
            ..
        } = sample();
        let base = Manifest::combined_fingerprint(&kernel, &initrd, &rootfs);
        let changed = |kernel: &KernelPart, initrd: &InitrdPart, rootfs: &RootfsPart| {
            Manifest::combined_fingerprint(kernel, initrd, rootfs)
        };

        let new_kernel = KernelPart {
            fingerprint: "k2".into(),
            ..kernel.clone()
        };
        let new_initrd = InitrdPart {
            fingerprint: "i2".into(),
            ..initrd.clone()
        };
        let new_rootfs = RootfsPart {
            fingerprint: "r2".into(),
            ..rootfs.clone()
        };
        let rebuilt_rootfs = RootfsPart {
            file: "rootfs-ba9876543210-2.ext4".into(),
            ..rootfs.clone()
        };
        assert_ne!(base, changed(&new_kernel, &initrd, &rootfs));
        assert_ne!(base, changed(&kernel, &new_initrd, &rootfs));
        assert_ne!(base, changed(&kernel, &initrd, &new_rootfs));
        assert_ne!(base, changed(&kernel, &initrd, &rebuilt_rootfs));
        assert_eq!(base, changed(&kernel, &initrd, &rootfs));
    }
}
