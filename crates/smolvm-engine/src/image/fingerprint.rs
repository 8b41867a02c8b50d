//! Content fingerprints: SHA-256 over named, length-prefixed fields, so
//! that no two different input lists hash the same bytes.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ImageError;

/// Number of fingerprint characters used in file names.
pub(crate) const SHORT_LEN: usize = 12;

/// Builder for one fingerprint.
#[derive(Debug)]
pub(crate) struct Fingerprint(Sha256);

impl Fingerprint {
    /// Starts a fingerprint; `domain` keeps fingerprints of different kinds apart.
    pub(crate) fn new(domain: &str) -> Self {
        Self(Sha256::new()).field("domain", domain)
    }

    /// Adds one named field.
    pub(crate) fn field(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let value = value.as_ref();
        for part in [name.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    /// Returns the lowercase hex digest.
    pub(crate) fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Returns the first characters of `fingerprint`, as used in file names.
pub(crate) fn short(fingerprint: &str) -> &str {
    &fingerprint[..SHORT_LEN.min(fingerprint.len())]
}

/// Returns the lowercase hex SHA-256 of a file's contents.
pub(crate) fn hash_file(path: &Path) -> Result<String, ImageError> {
    let mut file = File::open(path).map_err(ImageError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(ImageError::io("read", path))?;
        if read == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;

    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_each_field() {
        let base = Fingerprint::new("t")
            .field("a", "1")
            .field("b", "2")
            .finish();
        let changed_value = Fingerprint::new("t")
            .field("a", "1")
            .field("b", "3")
            .finish();
        let changed_domain = Fingerprint::new("u")
            .field("a", "1")
            .field("b", "2")
            .finish();
        let same = Fingerprint::new("t")
            .field("a", "1")
            .field("b", "2")
            .finish();

        assert_ne!(base, changed_value);
        assert_ne!(base, changed_domain);
        assert_eq!(base, same);
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn fingerprint_fields_do_not_run_together() {
        let split_one_way = Fingerprint::new("t")
            .field("a", "12")
            .field("b", "3")
            .finish();
        let split_other_way = Fingerprint::new("t")
            .field("a", "1")
            .field("b", "23")
            .finish();
        assert_ne!(split_one_way, split_other_way);
    }

    #[test]
    fn hash_file_matches_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            hash_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
