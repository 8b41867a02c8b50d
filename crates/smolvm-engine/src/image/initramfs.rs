//! The initramfs: the agent as `/init`, the kernel modules it loads before
//! it mounts the root disk, and the empty mount points it uses.
//!
//! Layout, as the agent expects it:
//!
//! ```text
//! /init                 the agent (mode 0755)
//! /modules/<name>.ko    uncompressed modules
//! /modules/load.order   the module file names, one a line, in load order
//! /dev /proc /sys /newroot
//! /dev/console          character device 5:1, so /init starts with a console
//! ```

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::ImageError;
use super::cpio::CpioWriter;
use super::fingerprint::Fingerprint;
use super::host::{Tool, XZ, ZSTD};
use super::modules::{INITRAMFS_MODULES, ModuleIndex, initramfs_file_name};

/// Version of the layout above; bump it to rebuild every initramfs.
const INITRAMFS_RECIPE_VERSION: &str = "1";

const MOUNT_POINTS: &[&str] = &["dev", "proc", "sys", "newroot"];

/// Returns the initramfs fingerprint for a kernel and an agent binary.
pub(crate) fn fingerprint(kernel_fingerprint: &str, agent_sha256: &str) -> String {
    Fingerprint::new("initramfs")
        .field("recipe", INITRAMFS_RECIPE_VERSION)
        .field("kernel", kernel_fingerprint)
        .field("agent", agent_sha256)
        .field("modules", INITRAMFS_MODULES.join(" "))
        .finish()
}

/// Writes the initramfs to `out` as an uncompressed newc cpio archive and
/// returns the module file names in load order.
///
/// Uncompressed, because the kernel then copies it instead of inflating it,
/// which is faster under TCG for an archive of a few MiB.
pub(crate) fn write(
    out: &Path,
    agent: &Path,
    modules_dir: &Path,
) -> Result<Vec<String>, ImageError> {
    let order = ModuleIndex::read(modules_dir)?.load_order(INITRAMFS_MODULES)?;
    let modules = order
        .iter()
        .map(|path| {
            Ok((
                initramfs_file_name(path),
                read_module(&modules_dir.join(path))?,
            ))
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    let agent_bytes = std::fs::read(agent).map_err(ImageError::io("read", agent))?;

    let file = File::create(out).map_err(ImageError::io("create", out))?;
    write_archive(BufWriter::new(file), &agent_bytes, &modules)
        .map_err(ImageError::io("write", out))?;
    Ok(modules.into_iter().map(|(name, _)| name).collect())
}

/// Writes the archive; `modules` are (file name, contents) in load order.
fn write_archive(
    out: BufWriter<File>,
    agent: &[u8],
    modules: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    let mut cpio = CpioWriter::new(out);
    for dir in MOUNT_POINTS {
        cpio.dir(dir, 0o755)?;
    }
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.file("init", 0o755, agent)?;

    cpio.dir("modules", 0o755)?;
    let mut load_order = String::new();
    for (name, data) in modules {
        cpio.file(&format!("modules/{name}"), 0o644, data)?;
        load_order.push_str(name);
        load_order.push('\n');
    }
    cpio.file("modules/load.order", 0o644, load_order.as_bytes())?;

    let file = cpio.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Reads a module, decompressing `.ko.xz` and `.ko.zst` with the host's
/// `xz` or `zstd`.
///
/// NOTE: Debian's 6.1 kernels ship plain `.ko` files, so the decompressing
/// branches have only run in unit tests.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let decompressor: Option<Tool> = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => Some(XZ),
        Some("zst") => Some(ZSTD),
        _ => None,
    };
    let Some(tool) = decompressor else {
        return std::fs::read(path).map_err(ImageError::io("read", path));
    };

    let mut cmd = tool.command();
    cmd.args(["-d", "-c", "--"]).arg(path);
    tool.output(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::cpio::tests::parse;

    /// Makes a modules folder in which `virtio_net` is xz-compressed, or
    /// returns None when `xz` is not installed.
    fn fake_modules_dir() -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir().unwrap();
        let dep = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";
        std::fs::write(dir.path().join("modules.dep"), dep).unwrap();
        for line in dep.lines() {
            let path = line.split(':').next().unwrap();
            let plain = dir.path().join(path.trim_end_matches(".xz"));
            std::fs::create_dir_all(plain.parent().unwrap()).unwrap();
            std::fs::write(&plain, format!("module {path}")).unwrap();
            if path.ends_with(".xz") {
                std::process::Command::new("xz").arg(&plain).status().ok()?;
            }
        }
        Some(dir)
    }

    #[test]
    fn initramfs_layout() {
        let Some(modules) = fake_modules_dir() else {
            println!("skipped initramfs_layout: `xz` is not installed");
            return;
        };
        let agent = modules.path().join("agent");
        std::fs::write(&agent, b"\x7fELF agent").unwrap();
        let out = modules.path().join("initrd.img");

        let names = write(&out, &agent, modules.path()).unwrap();

        let entries = parse(&std::fs::read(&out).unwrap());
        let entry = |name: &str| entries.iter().find(|e| e.name == name).unwrap();
        assert_eq!(entry("init").data, b"\x7fELF agent");
        assert_eq!(entry("init").mode, 0o100_755);
        assert_eq!(entry("dev/console").rdev, (5, 1));
        for dir in ["dev", "proc", "sys", "newroot", "modules"] {
            assert_eq!(entry(dir).mode, 0o040_755, "{dir}");
        }
        let expected_order = "virtio_ring.ko\nvirtio.ko\nvirtio_mmio.ko\nvirtio_blk.ko\n\
                              virtio_console.ko\nfailover.ko\nnet_failover.ko\nvirtio_net.ko\n";
        assert_eq!(
            String::from_utf8_lossy(&entry("modules/load.order").data),
            expected_order
        );
        assert_eq!(names.len(), 8);
        assert_eq!(
            entry("modules/virtio_net.ko").data,
            b"module kernel/drivers/net/virtio_net.ko.xz",
            "virtio_net.ko is decompressed"
        );
    }

    #[test]
    fn initramfs_fingerprint_follows_agent() {
        assert_ne!(fingerprint("k", "agent-a"), fingerprint("k", "agent-b"));
        assert_ne!(fingerprint("k1", "agent-a"), fingerprint("k2", "agent-a"));
    }
}
