//! Image references as users write them, and the format of a root disk.
//!
//! Accepted forms: nothing, `default` or `debian-bookworm` for the default
//! image; `file:///ABSOLUTE/PATH` for a raw ext4 filesystem or a qcow2 disk.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ImageError;

/// Names that refer to the default image.
pub(crate) const DEFAULT_NAMES: &[&str] = &["default", "debian-bookworm"];

/// Name of the default image's folder.
pub(crate) const DEFAULT_IMAGE: &str = "default";

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Offset of the ext2/3/4 superblock magic: superblock at 1024, field at 56.
const EXT4_MAGIC_OFFSET: u64 = 1024 + 56;
const EXT4_MAGIC: [u8; 2] = 0xEF53u16.to_le_bytes();

/// Storage format of a root disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A raw ext4 filesystem image (no partition table).
    Raw,
    /// A qcow2 disk holding an ext4 filesystem.
    Qcow2,
}

impl DiskFormat {
    /// Returns the format name QEMU's `format=` option takes.
    pub fn as_qemu_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// A parsed image reference.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reference {
    Default,
    File(PathBuf),
}

impl Reference {
    pub(crate) fn parse(reference: Option<&str>) -> Result<Self, ImageError> {
        let Some(reference) = reference else {
            return Ok(Self::Default);
        };
        let invalid = || ImageError::InvalidReference {
            reference: reference.to_owned(),
        };

        if DEFAULT_NAMES.contains(&reference) {
            return Ok(Self::Default);
        }
        if reference.starts_with("s3://") {
            return Err(ImageError::Unsupported {
                reference: reference.to_owned(),
                feature: "S3 images",
            });
        }

        let path = reference.strip_prefix("file://").ok_or_else(invalid)?;
        let path = path.strip_prefix("localhost").unwrap_or(path);
        let path = percent_decode(path).ok_or_else(invalid)?;
        if !path.starts_with('/') || path.len() < 2 || path.contains('\0') {
            return Err(invalid());
        }
        Ok(Self::File(PathBuf::from(path)))
    }
}

/// Decodes `%XX` escapes; None for a malformed escape or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads the first bytes of `path` to tell a qcow2 disk from a raw ext4
/// filesystem; the file name's extension is not trusted.
pub(crate) fn detect_disk_format(reference: &str, path: &Path) -> Result<DiskFormat, ImageError> {
    let not_found = |source| ImageError::DiskNotFound {
        reference: reference.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(not_found)?;
    if !file.metadata().map_err(not_found)?.is_file() {
        return Err(ImageError::UnrecognizedDisk {
            path: path.to_owned(),
        });
    }

    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_ok() && &magic == QCOW2_MAGIC {
        return Ok(DiskFormat::Qcow2);
    }

    let mut ext_magic = [0u8; 2];
    let read = file
        .seek(SeekFrom::Start(EXT4_MAGIC_OFFSET))
        .and_then(|_| file.read_exact(&mut ext_magic));
    if read.is_ok() && ext_magic == EXT4_MAGIC {
        return Ok(DiskFormat::Raw);
    }
    Err(ImageError::UnrecognizedDisk {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(reference: &str) -> Result<Reference, ImageError> {
        Reference::parse(Some(reference))
    }

    #[test]
    fn default_names() {
        assert_eq!(Reference::parse(None).unwrap(), Reference::Default);
        assert_eq!(parse("default").unwrap(), Reference::Default);
        assert_eq!(parse("debian-bookworm").unwrap(), Reference::Default);
    }

    #[test]
    fn file_references() {
        assert_eq!(
            parse("file:///srv/root.ext4").unwrap(),
            Reference::File("/srv/root.ext4".into())
        );
        assert_eq!(
            parse("file://localhost/srv/disk.qcow2").unwrap(),
            Reference::File("/srv/disk.qcow2".into())
        );
        assert_eq!(
            parse("file:///srv/my%20disk.qcow2").unwrap(),
            Reference::File("/srv/my disk.qcow2".into())
        );
    }

    #[test]
    fn s3_is_unsupported() {
        let err = parse("s3://bucket/key.qcow2").unwrap_err();
        assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");
        assert!(
            err.to_string().contains("S3 images are not supported yet"),
            "{err}"
        );
    }

    #[test]
    fn invalid_references() {
        for reference in [
            "",
            "ubuntu",
            "file://relative/path.ext4",
            "file://",
            "file:///",
            "file:///bad%zzescape",
            "http://host.invalid/root.ext4",
            "/abs/path/without/scheme.ext4",
        ] {
            let err = parse(reference).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "{reference}: {err}"
            );
            assert!(err.to_string().contains("file:///"), "{reference}: {err}");
        }
    }

    fn disk(dir: &Path, name: &str, bytes: &[(u64, &[u8])]) -> PathBuf {
        let path = dir.join(name);
        let mut data = vec![0u8; 4096];
        for (offset, magic) in bytes {
            let offset = *offset as usize;
            data[offset..offset + magic.len()].copy_from_slice(magic);
        }
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn disk_format_from_magic() {
        let dir = tempfile::tempdir().unwrap();
        let qcow2 = disk(dir.path(), "disk.qcow2", &[(0, QCOW2_MAGIC)]);
        let ext4 = disk(dir.path(), "root.ext4", &[(EXT4_MAGIC_OFFSET, &EXT4_MAGIC)]);
        let misnamed = disk(dir.path(), "actually-qcow2.ext4", &[(0, QCOW2_MAGIC)]);
        let img = disk(dir.path(), "root.img", &[(EXT4_MAGIC_OFFSET, &EXT4_MAGIC)]);

        assert_eq!(detect_disk_format("r", &qcow2).unwrap(), DiskFormat::Qcow2);
        assert_eq!(detect_disk_format("r", &ext4).unwrap(), DiskFormat::Raw);
        assert_eq!(
            detect_disk_format("r", &misnamed).unwrap(),
            DiskFormat::Qcow2
        );
        assert_eq!(detect_disk_format("r", &img).unwrap(), DiskFormat::Raw);
    }

    #[test]
    fn disk_format_rejects_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = disk(dir.path(), "zeros.ext4", &[]);
        std::fs::write(dir.path().join("tiny"), b"QF").unwrap();

        for path in [zeros, dir.path().join("tiny"), dir.path().to_owned()] {
            let err = detect_disk_format("r", &path).unwrap_err();
            assert!(
                matches!(err, ImageError::UnrecognizedDisk { .. }),
                "{}: {err}",
                path.display()
            );
        }
        let err = detect_disk_format("r", &dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, ImageError::DiskNotFound { .. }), "{err}");
    }
}
