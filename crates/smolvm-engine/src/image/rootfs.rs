//! The default root filesystem: Debian bookworm from `debootstrap
//! --variant=minbase`, trimmed and configured for a sandbox, packed into a
//! raw ext4 image with `mkfs.ext4 -d` (no loop mount).

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::ImageError;
use super::fingerprint::Fingerprint;
use super::host::{DEBOOTSTRAP, MKFS_EXT4};
use super::mirror::debian_mirror;
use crate::host::is_root;

/// Debian release of the default image.
pub(crate) const SUITE: &str = "bookworm";

/// Packages added to debootstrap's minbase set.
pub(crate) const PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "procps",
    "python3",
    "ca-certificates",
    "curl",
    "iproute2",
    "e2fsprogs",
    "iputils-ping",
    "less",
    "netbase",
];

/// Version of the steps in this file; bump it to rebuild every root filesystem.
const ROOTFS_RECIPE_VERSION: &str = "1";

const HOSTNAME: &str = "smolvm";

/// The DNS server that QEMU's user-mode network (slirp) provides.
const NAMESERVER: &str = "10.0.2.3";

/// Filesystem label of the root disk.
const LABEL: &str = "smolvm-root";

/// Free space left in the image beyond what its files use: a percentage of
/// the used size, plus a fixed amount in bytes for ext4's journal and inode
/// tables. The default image ends up with about 90 MiB free.
const HEADROOM_PERCENT: u64 = 25;
const HEADROOM_FIXED: u64 = 64 << 20;

/// Tells dpkg to skip documentation when the guest installs packages later.
const DPKG_NODOC: &str = "\
# smolvm images carry no documentation; copyright files stay.
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
";

const HOSTS: &str = "\
127.0.0.1\tlocalhost
127.0.1.1\tsmolvm
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
";

pub(crate) fn fingerprint() -> String {
    fingerprint_for(SUITE, PACKAGES)
}

fn fingerprint_for(suite: &str, packages: &[&str]) -> String {
    Fingerprint::new("rootfs")
        .field("recipe", ROOTFS_RECIPE_VERSION)
        .field("suite", suite)
        .field("variant", "minbase")
        .field("packages", packages.join(","))
        .finish()
}

/// Fails unless this process can run debootstrap, which needs root.
pub(crate) fn check_root() -> Result<(), ImageError> {
    if is_root() {
        return Ok(());
    }
    Err(ImageError::NotRoot {
        step: "building the root filesystem with debootstrap",
    })
}

/// Paths one root filesystem build uses.
#[derive(Debug)]
pub(crate) struct RootfsBuild<'a> {
    /// Empty folder that debootstrap fills.
    pub(crate) tree: &'a Path,
    /// The ext4 image to write.
    pub(crate) image: &'a Path,
    /// debootstrap's package cache, kept between builds.
    pub(crate) package_cache: &'a Path,
    /// Folder for the debootstrap and mkfs logs.
    pub(crate) log_dir: &'a Path,
}

impl RootfsBuild<'_> {
    /// Runs every step and returns the image size in bytes.
    pub(crate) fn run(&self) -> Result<u64, ImageError> {
        check_root()?;
        let mirror = debian_mirror(SUITE)?;
        // debootstrap rejects a relative --cache-dir.
        let package_cache = std::path::absolute(self.package_cache)
            .map_err(ImageError::io("resolve", self.package_cache))?;
        std::fs::create_dir_all(&package_cache)
            .map_err(ImageError::io("create", &package_cache))?;

        let mut cmd = DEBOOTSTRAP.command_ending_with_parent();
        cmd.args(debootstrap_args(self.tree, &package_cache, &mirror));
        DEBOOTSTRAP.run_logged(&mut cmd, &self.log_dir.join("debootstrap.log"))?;

        configure(self.tree)?;
        trim(self.tree)?;
        self.make_ext4()
    }

    fn make_ext4(&self) -> Result<u64, ImageError> {
        let size = image_size(used_bytes(self.tree)?);
        let mut cmd = MKFS_EXT4.command();
        // `-T default`: below 512 MiB mke2fs would pick its "small" type with
        // 1 KiB blocks, which stay when the guest grows the filesystem.
        let options = [
            "-q", "-F", "-T", "default", "-b", "4096", "-L", LABEL, "-m", "0",
        ];
        cmd.args(options)
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(self.tree)
            .arg(self.image)
            .arg(format!("{}k", size / 1024));
        MKFS_EXT4.run_logged(&mut cmd, &self.log_dir.join("mkfs.log"))?;
        Ok(size)
    }
}

fn debootstrap_args(tree: &Path, package_cache: &Path, mirror: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--variant=minbase".into(),
        format!("--include={}", PACKAGES.join(",")).into(),
    ];
    let mut cache = OsString::from("--cache-dir=");
    cache.push(package_cache);
    args.push(cache);
    args.extend([SUITE.into(), tree.into(), mirror.into()]);
    args
}

/// Writes the files that make the tree a sandbox root.
fn configure(tree: &Path) -> Result<(), ImageError> {
    write(tree, "etc/hostname", &format!("{HOSTNAME}\n"))?;
    write(tree, "etc/hosts", HOSTS)?;
    // Empty, because the agent mounts the root disk itself and there are no other disks.
    write(tree, "etc/fstab", "")?;
    write(tree, "etc/dpkg/dpkg.cfg.d/smolvm-nodoc", DPKG_NODOC)?;

    // debootstrap copies the host's resolv.conf, which may be a symlink.
    remove_file_if_present(&tree.join("etc/resolv.conf"))?;
    write(
        tree,
        "etc/resolv.conf",
        &format!("nameserver {NAMESERVER}\n"),
    )?;

    // `mesg n` forks a process in every login shell and only matters on a terminal.
    let profile = tree.join("root/.profile");
    if profile.is_file() {
        let text = std::fs::read_to_string(&profile).map_err(ImageError::io("read", &profile))?;
        write(tree, "root/.profile", &without_mesg(&text))?;
    }
    Ok(())
}

fn without_mesg(profile: &str) -> String {
    let other_lines = profile
        .lines()
        .filter(|line| !line.trim_start().starts_with("mesg n"));
    other_lines.map(|line| format!("{line}\n")).collect()
}

/// Removes package lists, caches, documentation and manual pages.
fn trim(tree: &Path) -> Result<(), ImageError> {
    clear_dir(&tree.join("var/lib/apt/lists"), &["partial", "lock"])?;
    clear_dir(&tree.join("var/cache/apt/archives"), &["partial", "lock"])?;
    clear_dir(&tree.join("var/cache/apt"), &["archives"])?;
    clear_dir(&tree.join("usr/share/man"), &[])?;
    clear_dir(&tree.join("usr/share/info"), &[])?;

    // Keep each package's copyright file, as the dpkg rule above does.
    let doc = tree.join("usr/share/doc");
    for entry in read_dir(&doc)? {
        let path = entry.path();
        let is_real_dir = entry
            .file_type()
            .map_err(ImageError::io("read", &path))?
            .is_dir();
        if is_real_dir {
            clear_dir(&path, &["copyright"])?;
        }
    }
    Ok(())
}

/// Removes everything in `dir` except the entries named in `keep`.
fn clear_dir(dir: &Path, keep: &[&str]) -> Result<(), ImageError> {
    for entry in read_dir(dir)? {
        if keep.iter().any(|name| entry.file_name() == *name) {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(ImageError::io("read", &path))?;
        let removed = if file_type.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(ImageError::io("remove", &path))?;
    }
    Ok(())
}

/// Lists `dir`, which may be missing.
fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(ImageError::io("read", dir)(err)),
    };
    entries
        .collect::<Result<_, _>>()
        .map_err(ImageError::io("read", dir))
}

fn write(tree: &Path, relative: &str, contents: &str) -> Result<(), ImageError> {
    let path = tree.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(ImageError::io("create", parent))?;
    }
    std::fs::write(&path, contents).map_err(ImageError::io("write", &path))
}

fn remove_file_if_present(path: &Path) -> Result<(), ImageError> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(ImageError::io("remove", path)(err))
        }
        _ => Ok(()),
    }
}

/// Returns the disk space the tree's files take, counting hard-linked
/// files once and every inode as at least one 4 KiB block.
fn used_bytes(tree: &Path) -> Result<u64, ImageError> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut pending = vec![tree.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in read_dir(&dir)? {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(ImageError::io("read", &path))?;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += (meta.blocks() * 512).max(4096);
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(total)
}

/// Returns the image size for `used` bytes of files, rounded up to 1 MiB.
fn image_size(used: u64) -> u64 {
    let size = used + used * HEADROOM_PERCENT / 100 + HEADROOM_FIXED;
    size.next_multiple_of(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debootstrap_arguments() {
        let args = debootstrap_args(
            Path::new("/img/.build-1/tree"),
            Path::new("/c/deb"),
            "http://m.invalid/debian",
        );
        assert_eq!(
            args,
            [
                "--variant=minbase",
                "--include=bash,coreutils,procps,python3,ca-certificates,curl,iproute2,e2fsprogs,\
                 iputils-ping,less,netbase",
                "--cache-dir=/c/deb",
                "bookworm",
                "/img/.build-1/tree",
                "http://m.invalid/debian",
            ]
        );
    }

    #[test]
    fn configure_writes_sandbox_files() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("root")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("root/.profile"),
            "PATH=x\nmesg n 2> /dev/null || true\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/run/host-resolv.conf", root.join("etc/resolv.conf")).unwrap();

        configure(root).unwrap();

        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "smolvm\n");
        assert_eq!(read("etc/resolv.conf"), "nameserver 10.0.2.3\n");
        assert_eq!(read("etc/fstab"), "");
        assert_eq!(read("root/.profile"), "PATH=x\n");
        assert!(read("etc/hosts").contains("127.0.1.1\tsmolvm"));
        assert!(!root.join("etc/resolv.conf").is_symlink());
    }

    #[test]
    fn trim_keeps_copyright_and_apt_dirs() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        for file in [
            "usr/share/doc/bash/copyright",
            "usr/share/doc/bash/README.gz",
            "usr/share/man/man1/ls.1.gz",
            "var/lib/apt/lists/some_Packages",
            "var/lib/apt/lists/partial/.keep",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/archives/bash.deb",
            "var/cache/apt/archives/partial/.keep",
        ] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }

        trim(root).unwrap();

        let exists = |p: &str| root.join(p).exists();
        assert!(exists("usr/share/doc/bash/copyright"));
        assert!(!exists("usr/share/doc/bash/README.gz"));
        assert!(exists("usr/share/man"));
        assert!(!exists("usr/share/man/man1"));
        assert!(!exists("var/lib/apt/lists/some_Packages"));
        assert!(exists("var/lib/apt/lists/partial"));
        assert!(!exists("var/cache/apt/pkgcache.bin"));
        assert!(!exists("var/cache/apt/archives/bash.deb"));
        assert!(exists("var/cache/apt/archives/partial"));
    }

    #[test]
    fn image_size_adds_headroom() {
        assert_eq!(image_size(0), 64 << 20);
        assert_eq!(image_size(400 << 20), (400 + 100 + 64) << 20);
        assert_eq!(image_size(1) % (1 << 20), 0);
    }

    #[test]
    fn used_bytes_counts_hard_links_once() {
        let tree = tempfile::tempdir().unwrap();
        let big = tree.path().join("big");
        std::fs::write(&big, vec![1u8; 64 * 1024]).unwrap();
        let once = used_bytes(tree.path()).unwrap();
        std::fs::hard_link(&big, tree.path().join("link")).unwrap();
        assert_eq!(used_bytes(tree.path()).unwrap(), once);
        assert!(once >= 64 * 1024);
    }

    #[test]
    fn rootfs_fingerprint_follows_inputs() {
        let base = fingerprint_for("bookworm", &["bash", "curl"]);
        assert_eq!(fingerprint(), fingerprint_for(SUITE, PACKAGES));
        assert_ne!(base, fingerprint_for("trixie", &["bash", "curl"]));
        assert_ne!(base, fingerprint_for("bookworm", &["bash", "curl", "less"]));
        assert_eq!(base, fingerprint_for("bookworm", &["bash", "curl"]));
    }
}
