//! Kernel module selection for the initramfs: which modules to load, in
//! which order, read from the `modules.dep` that `depmod` writes.
//!
//! A `modules.dep` line is `kernel/a/b.ko: kernel/c.ko kernel/d.ko`, listing
//! every module `b` needs, directly or not. `modprobe` loads that list from
//! its end to its start, then `b` itself.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::ImageError;

/// Modules the guest needs before it can mount its root disk and talk to
/// the host: the virtio-mmio transport, the block, console and network
/// devices, and `failover`/`net_failover`, which `virtio_net` depends on.
pub(crate) const INITRAMFS_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "failover",
    "net_failover",
];

/// The dependency graph of one kernel's modules.
#[derive(Debug)]
pub(crate) struct ModuleIndex {
    /// Module name to its path, relative to `lib/modules/<release>`.
    paths: HashMap<String, String>,
    /// Module path to the paths it depends on, in `modules.dep` order.
    deps: HashMap<String, Vec<String>>,
    /// Names of modules built into the kernel image.
    builtin: HashSet<String>,
    /// The `modules.dep` file, named in errors.
    source: PathBuf,
}

impl ModuleIndex {
    /// Reads `modules.dep` and `modules.builtin` from `modules_dir`
    /// (`lib/modules/<release>`).
    pub(crate) fn read(modules_dir: &Path) -> Result<Self, ImageError> {
        let dep_path = modules_dir.join("modules.dep");
        let builtin_path = modules_dir.join("modules.builtin");
        let dep = std::fs::read_to_string(&dep_path).map_err(ImageError::io("read", &dep_path))?;
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(ImageError::io("read", &builtin_path)(err)),
        };
        Ok(Self::parse(&dep, &builtin, dep_path))
    }

    pub(crate) fn parse(modules_dep: &str, modules_builtin: &str, source: PathBuf) -> Self {
        let mut paths = HashMap::new();
        let mut deps = HashMap::new();
        for line in modules_dep.lines() {
            let Some((module, needs)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim().to_owned();
            paths.insert(module_name(&module), module.clone());
            deps.insert(
                module,
                needs.split_whitespace().map(str::to_owned).collect(),
            );
        }

        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty());
        let builtin = builtin.map(module_name).collect();
        Self {
            paths,
            deps,
            builtin,
            source,
        }
    }

    /// Returns the module paths to load for `requested`, each after the modules
    /// it depends on and each once. Built-in modules are left out.
    pub(crate) fn load_order(&self, requested: &[&str]) -> Result<Vec<String>, ImageError> {
        let mut order = Vec::new();
        let mut visiting = HashSet::new();
        for name in requested {
            let name = name.replace('-', "_");
            match self.paths.get(&name) {
                Some(path) => self.visit(path, &mut visiting, &mut order)?,
                None if self.builtin.contains(&name) => continue,
                None => {
                    return Err(ImageError::ModuleNotFound {
                        module: name,
                        modules_dep: self.source.clone(),
                    });
                }
            }
        }
        Ok(order)
    }

    /// Depth-first walk that appends `path` after its dependencies.
    fn visit(
        &self,
        path: &str,
        visiting: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        if order.iter().any(|done| done == path) {
            return Ok(());
        }
        if !visiting.insert(path.to_owned()) {
            return Err(ImageError::ModuleDependencyCycle {
                module: module_name(path),
                modules_dep: self.source.clone(),
            });
        }

        // Reverse, as modprobe does: the last dependency listed loads first.
        let needs = self.deps.get(path).map(Vec::as_slice).unwrap_or_default();
        for dep in needs.iter().rev() {
            self.visit(dep, visiting, order)?;
        }

        visiting.remove(path);
        order.push(path.to_owned());
        Ok(())
    }
}

/// Returns a module's name from its path: the file name without `.ko` or a
/// compressed `.ko.*` suffix, with `-` read as `_` as the kernel does.
pub(crate) fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(stem, _)| stem);
    stem.replace('-', "_")
}

/// Returns the file name a module gets in the initramfs: always `.ko`,
/// because the agent loads uncompressed modules.
pub(crate) fn initramfs_file_name(path: &str) -> String {
    format!("{}.ko", module_name(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as depmod writes them for Debian's 6.1 cloud kernel.
    const MODULES_DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko:
";

    const MODULES_BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(MODULES_DEP, MODULES_BUILTIN, "modules.dep".into())
    }

    fn names(order: &[String]) -> Vec<String> {
        order.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let order = index().load_order(&["virtio_net"]).unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio_ring",
                "virtio",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
    }

    #[test]
    fn load_order_lists_each_module_once() {
        let order = index().load_order(INITRAMFS_MODULES).unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "virtio_console",
                "failover",
                "net_failover",
                "virtio_net",
            ]
        );
        assert_eq!(order[2], "kernel/drivers/virtio/virtio_mmio.ko");
    }

    #[test]
    fn load_order_skips_builtin_modules() {
        let order = index()
            .load_order(&["ext4", "crc32c-generic", "overlay"])
            .unwrap();
        assert_eq!(names(&order), ["overlay"]);
    }

    #[test]
    fn load_order_rejects_unknown_module() {
        let err = index().load_order(&["virtio_gpu"]).unwrap_err();
        assert!(
            matches!(&err, ImageError::ModuleNotFound { module, .. } if module == "virtio_gpu"),
            "{err}"
        );
    }

    #[test]
    fn load_order_rejects_cycle() {
        let dep = "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n";
        let index = ModuleIndex::parse(dep, "", "modules.dep".into());
        let err = index.load_order(&["a"]).unwrap_err();
        assert!(
            matches!(err, ImageError::ModuleDependencyCycle { .. }),
            "{err}"
        );
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_ring.ko"),
            "virtio_ring"
        );
        assert_eq!(
            module_name("kernel/crypto/crc32c-generic.ko.xz"),
            "crc32c_generic"
        );
        assert_eq!(
            initramfs_file_name("kernel/net/core/failover.ko.zst"),
            "failover.ko"
        );
    }
}
