//! Filesystem mounts of init mode and the switch from the initramfs to the
//! root disk.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::InitError;
use crate::log::log;
use crate::sys;

/// The root disk: the first virtio block device.
pub(super) const ROOT_DEVICE: &str = "/dev/vda";

/// Mount point of the root disk before it becomes `/`.
const NEW_ROOT: &str = "/newroot";

/// How long to wait for the root disk's device node after its driver
/// loaded.
const ROOT_WAIT: Duration = Duration::from_secs(5);

/// Kernel filesystems moved from the initramfs into the root disk.
const KERNEL_MOUNTS: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Filesystem magic numbers (`statfs`) of an initramfs.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Mounts `/dev`, `/proc` and `/sys` in the initramfs.
pub(super) fn mount_kernel_filesystems() -> Result<(), InitError> {
    mount_required(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_required("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None)?;
    mount_required("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None)
}

/// Waits for the root disk and mounts it at [`NEW_ROOT`] with `discard`,
/// so blocks freed in the guest are freed in the host's overlay file too.
pub(super) fn mount_root() -> Result<(), InitError> {
    let start = Instant::now();
    while !Path::new(ROOT_DEVICE).exists() {
        if start.elapsed() > ROOT_WAIT {
            let waited_ms = start.elapsed().as_millis();
            return Err(InitError::RootMissing {
                device: ROOT_DEVICE,
                waited_ms,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    mount_required(ROOT_DEVICE, NEW_ROOT, "ext4", 0, Some("discard"))
}

/// Moves the kernel filesystems into the root disk, frees the initramfs
/// and makes the root disk `/` (what `switch_root` does).
pub(super) fn switch_root() -> Result<(), InitError> {
    let new_root = Path::new(NEW_ROOT);
    for dir in KERNEL_MOUNTS {
        let target = new_root.join(&dir[1..]);
        let _ = fs::create_dir_all(&target);
        sys::mount(Some(dir), &target, None, libc::MS_MOVE, None).map_err(|source| {
            InitError::Mount {
                target: target.display().to_string(),
                source,
            }
        })?;
    }
    free_initramfs();

    let step = |step| move |source| InitError::SwitchRoot { step, source };
    std::env::set_current_dir(new_root).map_err(step("chdir"))?;
    sys::mount(Some("."), Path::new("/"), None, libc::MS_MOVE, None).map_err(step("move mount"))?;
    std::os::unix::fs::chroot(".").map_err(step("chroot"))?;
    std::env::set_current_dir("/").map_err(step("chdir"))
}

/// Mounts what programs expect in a running system. Failures are logged
/// and skipped: the sandbox still works without any one of them.
pub(super) fn mount_runtime_filesystems() {
    let pts_options = "gid=5,mode=0620,ptmxmode=0666";
    mount_optional(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(pts_options),
    );
    mount_optional(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    );
    mount_optional(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    );
    mount_cgroup2();
    ensure_tmp();
    link_dev_fds();
}

/// Mounts cgroup v2 with `favordynmods` (Linux 6.0+) where supported:
/// moving a process between cgroups then no longer waits for an RCU grace
/// period, which made each exec's cgroup join take milliseconds.
fn mount_cgroup2() {
    let target = "/sys/fs/cgroup";
    if mount_required(
        "cgroup2",
        target,
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        Some("favordynmods"),
    )
    .is_ok()
    {
        return;
    }
    mount_optional("cgroup2", target, "cgroup2", NOSUID_NODEV_NOEXEC, None);
}

fn mount_required(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), InitError> {
    let _ = fs::create_dir_all(target);
    match sys::mount(Some(source), Path::new(target), Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already mounted (by the kernel, or by an earlier agent start).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(source) => Err(InitError::Mount {
            target: target.to_string(),
            source,
        }),
    }
}

fn mount_optional(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) {
    if let Err(e) = mount_required(source, target, fstype, flags, data) {
        log!("{}", crate::session::Chain(&e));
    }
}

/// Creates `/tmp` (mode 1777) when the root filesystem lacks it.
fn ensure_tmp() {
    let tmp = Path::new("/tmp");
    if tmp.is_dir() {
        return;
    }
    let created = fs::create_dir(tmp)
        .and_then(|()| fs::set_permissions(tmp, fs::Permissions::from_mode(0o1777)));
    if let Err(e) = created {
        log!("creating /tmp failed: {e}");
    }
}

/// Adds the `/dev` links that udev would create and devtmpfs does not;
/// shells need `/dev/fd` for process substitution.
fn link_dev_fds() {
    let links = [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    for (target, link) in links {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                log!("linking {link} failed: {e}")
            }
            _ => {}
        }
    }
}

/// Deletes the initramfs files (kernel modules, this binary's path) to
/// give their memory back. The running binary stays mapped. Only runs when
/// `/` is a ramfs or tmpfs, and never crosses into another filesystem.
fn free_initramfs() {
    if !matches!(filesystem_magic("/"), Some(RAMFS_MAGIC | TMPFS_MAGIC)) {
        return;
    }
    let Ok(root) = fs::symlink_metadata("/") else {
        return;
    };
    let Ok(entries) = fs::read_dir("/") else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path() != Path::new(NEW_ROOT) {
            remove_tree(&entry.path(), root.dev());
        }
    }
}

fn remove_tree(path: &Path, device: u64) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.dev() != device {
        return;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            remove_tree(&entry.path(), device);
        }
        let _ = fs::remove_dir(path);
    } else {
        let _ = fs::remove_file(path);
    }
}

fn filesystem_magic(path: &str) -> Option<i64> {
    let path = std::ffi::CString::new(path).ok()?;
    // SAFETY: statfs is plain data, for which all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a writable statfs.
    let ret = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    (ret == 0).then_some(stat.f_type as i64)
}
