//! A writer for cpio archives in the "newc" format, the format the Linux
//! kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header, the path name with its NUL, and
//! the file data, where the name and the data are each padded with NULs to a
//! multiple of 4 bytes:
//!
//! ```text
//! "070701" ino mode uid gid nlink mtime filesize devmajor devminor
//!          rdevmajor rdevminor namesize check      (13 fields, 8 hex digits each)
//! ```
//!
//! The archive ends with an entry named `TRAILER!!!`. Entries here are
//! owned by root, dated 0 (so archives are reproducible) and have no hard
//! links.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams entries into a newc archive.
#[derive(Debug)]
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

/// The header fields that differ between entries.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Adds a directory; `name` is relative to the archive root ("dev").
    pub(crate) fn dir(&mut self, name: &str, permissions: u32) -> io::Result<()> {
        let header = Header {
            name,
            mode: S_IFDIR | permissions,
            nlink: 2,
            size: 0,
            rdev: (0, 0),
        };
        self.entry(&header, &[])
    }

    /// Adds a regular file with the given contents.
    pub(crate) fn file(&mut self, name: &str, permissions: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is over 4 GiB"))
        })?;
        let header = Header {
            name,
            mode: S_IFREG | permissions,
            nlink: 1,
            size,
            rdev: (0, 0),
        };
        self.entry(&header, data)
    }

    /// Adds a character device node, such as `dev/console` (5, 1).
    pub(crate) fn char_device(
        &mut self,
        name: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let mode = S_IFCHR | permissions;
        let header = Header {
            name,
            mode,
            nlink: 1,
            size: 0,
            rdev: (major, minor),
        };
        self.entry(&header, &[])
    }

    /// Writes the trailer and returns the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let header = Header {
            name: TRAILER,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        };
        self.next_ino = 0;
        self.entry(&header, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, header: &Header<'_>, data: &[u8]) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = header.name.len() + 1;
        let fields = [
            ino,
            header.mode,
            0, // uid
            0, // gid
            header.nlink,
            0, // mtime
            header.size,
            0, // devmajor
            0, // devminor
            header.rdev.0,
            header.rdev.1,
            namesize as u32,
            0, // check, unused by newc
        ];

        let mut head = String::with_capacity(HEADER_LEN);
        head.push_str(MAGIC);
        for field in fields {
            head.push_str(&format!("{field:08x}"));
        }
        self.write_padded(head.as_bytes(), &[header.name.as_bytes(), b"\0"])?;
        self.write_padded(data, &[])
    }

    /// Writes `first` then each of `rest`, then NULs up to a 4-byte boundary.
    fn write_padded(&mut self, first: &[u8], rest: &[&[u8]]) -> io::Result<()> {
        for part in std::iter::once(first).chain(rest.iter().copied()) {
            self.out.write_all(part)?;
            self.written += part.len() as u64;
        }
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..padding])?;
        self.written += padding as u64;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed entry: name, mode, rdev and data.
    #[derive(Debug, PartialEq)]
    pub(crate) struct Entry {
        pub(crate) name: String,
        pub(crate) mode: u32,
        pub(crate) rdev: (u32, u32),
        pub(crate) data: Vec<u8>,
    }

    /// Parses a newc archive back into entries, checking magic and padding.
    pub(crate) fn parse(mut archive: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&archive[..6], MAGIC.as_bytes(), "magic at offset {offset}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&archive[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let rdev = (field(9), field(10));
            let name_end = HEADER_LEN + namesize;
            assert_eq!(archive[name_end - 1], 0, "name ends with NUL");
            let name = std::str::from_utf8(&archive[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_owned();
            let data_start = name_end.next_multiple_of(4);
            let data_end = data_start + size;
            let next = data_end.next_multiple_of(4);
            assert!(
                archive[name_end..data_start].iter().all(|&b| b == 0),
                "name padding"
            );
            assert!(
                archive[data_end..next].iter().all(|&b| b == 0),
                "data padding"
            );

            if name == TRAILER {
                assert_eq!(next, archive.len(), "nothing after the trailer");
                return entries;
            }
            let data = archive[data_start..data_end].to_vec();
            entries.push(Entry {
                name,
                mode,
                rdev,
                data,
            });
            archive = &archive[next..];
            offset += next;
        }
    }

    fn sample_archive() -> Vec<u8> {
        let mut cpio = CpioWriter::new(Vec::new());
        cpio.dir("dev", 0o755).unwrap();
        cpio.char_device("dev/console", 0o600, 5, 1).unwrap();
        cpio.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        cpio.file("empty", 0o644, b"").unwrap();
        cpio.file("modules/odd-length.ko", 0o644, b"12345").unwrap();
        cpio.finish().unwrap()
    }

    #[test]
    fn cpio_round_trips_entries() {
        let entries = parse(&sample_archive());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "empty",
                "modules/odd-length.ko"
            ]
        );
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[1].mode, S_IFCHR | 0o600);
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[2].mode, S_IFREG | 0o755);
        assert_eq!(entries[2].data, b"#!/bin/sh\n");
        assert_eq!(entries[4].data, b"12345");
    }

    #[test]
    fn cpio_header_layout() {
        let archive = sample_archive();
        assert_eq!(archive.len() % 4, 0);
        // First entry: "dev", ino 1, directory 0755, nlink 2, namesize 4.
        let header = std::str::from_utf8(&archive[..HEADER_LEN]).unwrap();
        let expected = [
            "070701", "00000001", "000041ed", "00000000", "00000000", "00000002", "00000000",
            "00000000", "00000000", "00000000", "00000000", "00000000", "00000004", "00000000",
        ]
        .concat();
        assert_eq!(header, expected);
        assert_eq!(&archive[HEADER_LEN..HEADER_LEN + 4], b"dev\0");
    }

    #[test]
    fn cpio_tool_lists_entries() {
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            println!("skipped cpio tool check: `cpio` is not installed");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&sample_archive())
            .unwrap();
        let output = child.wait_with_output().unwrap();

        assert!(output.status.success(), "cpio -it failed: {output:?}");
        let listing = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            listing,
            "dev\ndev/console\ninit\nempty\nmodules/odd-length.ko\n"
        );
    }
}
