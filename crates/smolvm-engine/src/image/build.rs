//! Building the default image, reusing every part whose inputs did not
//! change.
//!
//! An image has three parts, each in its own file named after its
//! fingerprint, so each part is rebuilt only when its own inputs change:
//!
//! | part | file | inputs |
//! |---|---|---|
//! | kernel | `vmlinuz-<release>-<fp>` | kernel package version |
//! | initramfs | `initrd-<fp>.img` | kernel, agent binary hash, module list |
//! | root filesystem | `rootfs-<fp>-<build time>.ext4` | suite, package list |
//!
//! A new agent binary therefore rebuilds only the initramfs. Measured on a
//! 2-core host, that takes about 2 s (most of it unpacking the kernel
//! package for its modules), and a new root filesystem 30-45 s.
//!
//! A build never changes the contents of a file that an earlier manifest
//! named. Kernel and initramfs files are reproducible from their
//! fingerprints, and every root filesystem build gets a new name, because
//! mkfs output and the packages fetched differ between runs. Stopped
//! sandboxes, whose saved QEMU arguments and overlay backing files name
//! these paths, therefore start again unchanged. `ImageStore::prune`
//! removes the files that no sandbox uses.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::agent::check_static_elf;
use super::fingerprint::{hash_file, short};
use super::kernel::{self, KernelPackage, UnpackedKernel};
use super::manifest::{InitrdPart, KernelPart, MANIFEST_FORMAT, Manifest, RootfsPart};
use super::reference::DEFAULT_IMAGE;
use super::rootfs::{self, RootfsBuild};
use super::staging::{self, StagingDir};
use super::store::{BootImage, ImageStore, boot_image};
use super::{ImageError, initramfs};

const STEPS: usize = 4;

/// Inputs of `build_default`.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The static agent binary, placed in the initramfs as `/init`.
    pub agent_binary: PathBuf,
    /// Rebuilds every part even when its fingerprint matches.
    pub force: bool,
}

/// One progress report; `step` is 1-based, or 0 for a summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildProgress {
    pub step: usize,
    pub steps: usize,
    pub message: String,
}

impl fmt::Display for BuildProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step == 0 {
            return f.write_str(&self.message);
        }
        write!(f, "[{}/{}] {}", self.step, self.steps, self.message)
    }
}

/// Fingerprints of the image the current inputs make.
#[derive(Debug)]
struct Plan {
    kernel_package: KernelPackage,
    kernel: String,
    agent_sha256: String,
    initrd: String,
    rootfs: String,
}

impl Plan {
    fn new(agent: &Path) -> Result<Self, ImageError> {
        let kernel_package = kernel::resolve_package()?;
        let kernel = kernel_package.fingerprint();
        let agent_sha256 = hash_file(agent)?;
        let initrd = initramfs::fingerprint(&kernel, &agent_sha256);
        let rootfs = rootfs::fingerprint();
        Ok(Self {
            kernel_package,
            kernel,
            agent_sha256,
            initrd,
            rootfs,
        })
    }
}

/// Parts of the previous build that match the plan and still exist.
#[derive(Debug, Default)]
struct Reusable {
    kernel: Option<KernelPart>,
    initrd: Option<InitrdPart>,
    rootfs: Option<RootfsPart>,
}

impl Reusable {
    fn find(plan: &Plan, previous: Option<&Manifest>, dir: &Path) -> Self {
        let Some(previous) = previous else {
            return Self::default();
        };
        let usable = |fingerprint: &str, expected: &str, file: &str| {
            fingerprint == expected && dir.join(file).is_file()
        };
        let (kernel, initrd, rootfs) = (&previous.kernel, &previous.initrd, &previous.rootfs);
        Self {
            kernel: Some(kernel.clone())
                .filter(|_| usable(&kernel.fingerprint, &plan.kernel, &kernel.file)),
            initrd: Some(initrd.clone())
                .filter(|_| usable(&initrd.fingerprint, &plan.initrd, &initrd.file)),
            rootfs: Some(rootfs.clone())
                .filter(|_| usable(&rootfs.fingerprint, &plan.rootfs, &rootfs.file)),
        }
    }

    fn everything(&self) -> bool {
        self.kernel.is_some() && self.initrd.is_some() && self.rootfs.is_some()
    }
}

/// Reports progress and logs how long each step took.
struct Reporter<'a> {
    progress: &'a mut dyn FnMut(&BuildProgress),
    step: usize,
    started: Instant,
}

impl Reporter<'_> {
    fn step(&mut self, message: String) {
        self.finish_step();
        self.step += 1;
        (self.progress)(&BuildProgress {
            step: self.step,
            steps: STEPS,
            message,
        });
    }

    fn summary(&mut self, message: String) {
        self.finish_step();
        (self.progress)(&BuildProgress {
            step: 0,
            steps: STEPS,
            message,
        });
    }

    fn finish_step(&mut self) {
        if self.step > 0 {
            let elapsed_ms = self.started.elapsed().as_millis() as u64;
            tracing::info!(
                image.name = DEFAULT_IMAGE,
                image.step = self.step,
                elapsed_ms,
                "image build step done"
            );
        }
        self.started = Instant::now();
    }
}

impl ImageStore {
    /// Builds the default image, or reuses it when its fingerprint matches
    /// and `force` is not set. A first build blocks for about 45 s, so
    /// async callers run it with `spawn_blocking`.
    ///
    /// Even with nothing to do it runs `apt-cache` and hashes the agent
    /// (about 0.5 s), so callers should try `resolve` first. Concurrent
    /// builds, in this process or others, wait for each other. Files of
    /// earlier builds stay in place for the sandboxes that use them.
    pub fn build_default(
        &self,
        opts: &BuildOptions,
        progress: &mut dyn FnMut(&BuildProgress),
    ) -> Result<BootImage, ImageError> {
        let build_started = Instant::now();
        check_static_elf(&opts.agent_binary)?;
        let mut reporter = Reporter {
            progress,
            step: 0,
            started: build_started,
        };
        let _lock = self.lock(&mut |path| {
            reporter.summary(format!(
                "waiting for another image build to finish (lock {})",
                path.display()
            ))
        })?;
        staging::remove_stale(self.images_dir())?;

        let plan = Plan::new(&opts.agent_binary)?;
        let dir = self.image_dir(DEFAULT_IMAGE);
        let previous = if opts.force {
            None
        } else {
            previous_manifest(&dir)
        };
        let reusable = Reusable::find(&plan, previous.as_ref(), &dir);
        if let (Some(manifest), true) = (&previous, reusable.everything()) {
            reporter.summary(format!(
                "image default is up to date (fingerprint {})",
                short(&manifest.fingerprint)
            ));
            return Ok(boot_image(&dir, manifest));
        }

        if reusable.rootfs.is_none() {
            // Fail before downloading anything.
            rootfs::check_root()?;
        }
        let staging = StagingDir::create(self.images_dir())?;
        let build = Build {
            store: self,
            plan: &plan,
            opts,
            staging: staging.path(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let (kernel, unpacked) =
            build.kernel(&mut reporter, reusable.kernel, reusable.initrd.is_some())?;
        let initrd = build.initrd(&mut reporter, reusable.initrd, unpacked.as_ref())?;
        let rootfs = build.rootfs(&mut reporter, reusable.rootfs)?;
        let manifest = build.install(&mut reporter, &dir, kernel, initrd, rootfs)?;

        let seconds = build_started.elapsed().as_secs_f64();
        reporter.summary(format!(
            "built image default in {seconds:.1} s (fingerprint {})",
            short(&manifest.fingerprint)
        ));
        Ok(boot_image(&dir, &manifest))
    }
}

/// Reads the previous manifest; an unreadable one means nothing is reused.
fn previous_manifest(dir: &Path) -> Option<Manifest> {
    match Manifest::read(dir) {
        Ok(manifest) => manifest,
        Err(err) => {
            tracing::warn!(error = %err, "ignoring the previous image manifest; rebuilding every part");
            None
        }
    }
}

/// One build in progress; new files go to `staging`.
struct Build<'a> {
    store: &'a ImageStore,
    plan: &'a Plan,
    opts: &'a BuildOptions,
    staging: &'a Path,
    /// Build time, in seconds since the Unix epoch.
    started_unix: u64,
}

impl Build<'_> {
    /// Step 1. Unpacks the kernel package unless both the kernel and the
    /// initramfs are reused, because the initramfs needs its modules.
    fn kernel(
        &self,
        reporter: &mut Reporter<'_>,
        reuse: Option<KernelPart>,
        initrd_reused: bool,
    ) -> Result<(KernelPart, Option<UnpackedKernel>), ImageError> {
        let package = &self.plan.kernel_package;
        if let (Some(part), true) = (&reuse, initrd_reused) {
            reporter.step(format!("kernel {}: reusing {}", part.release, part.file));
            return Ok((part.clone(), None));
        }

        reporter.step(format!(
            "kernel {} {}: downloading and unpacking",
            package.name, package.version
        ));
        let deb = kernel::download(package, &self.store.cache_dir().join("kernel"))?;
        let unpacked = kernel::unpack(&deb, &self.staging.join("kernel"))?;
        if let Some(part) = reuse {
            return Ok((part, Some(unpacked)));
        }

        let file = format!("vmlinuz-{}-{}", unpacked.release, short(&self.plan.kernel));
        let target = self.staging.join(&file);
        std::fs::copy(&unpacked.vmlinuz, &target)
            .map_err(ImageError::io("copy the kernel to", &target))?;
        let part = KernelPart {
            file,
            fingerprint: self.plan.kernel.clone(),
            package: package.name.clone(),
            version: package.version.clone(),
            release: unpacked.release.clone(),
        };
        Ok((part, Some(unpacked)))
    }

    /// Step 2. `unpacked` is present whenever `reuse` is not.
    fn initrd(
        &self,
        reporter: &mut Reporter<'_>,
        reuse: Option<InitrdPart>,
        unpacked: Option<&UnpackedKernel>,
    ) -> Result<InitrdPart, ImageError> {
        let (Some(unpacked), None) = (unpacked, &reuse) else {
            let part =
                reuse.expect("the kernel step unpacks the kernel unless the initramfs is reused");
            reporter.step(format!("initramfs: reusing {}", part.file));
            return Ok(part);
        };

        let agent = &self.opts.agent_binary;
        reporter.step(format!("initramfs with agent {}", agent.display()));
        let file = format!("initrd-{}.img", short(&self.plan.initrd));
        let modules = initramfs::write(&self.staging.join(&file), agent, &unpacked.modules_dir)?;
        Ok(InitrdPart {
            file,
            fingerprint: self.plan.initrd.clone(),
            agent_sha256: self.plan.agent_sha256.clone(),
            modules,
        })
    }

    /// Step 3.
    fn rootfs(
        &self,
        reporter: &mut Reporter<'_>,
        reuse: Option<RootfsPart>,
    ) -> Result<RootfsPart, ImageError> {
        if let Some(part) = reuse {
            reporter.step(format!("root filesystem: reusing {}", part.file));
            return Ok(part);
        }

        reporter.step(format!(
            "debootstrap {} and mkfs.ext4 (about 40 s)",
            rootfs::SUITE
        ));
        let cache = self.store.cache_dir();
        let log_dir = cache.join("logs");
        std::fs::create_dir_all(&log_dir).map_err(ImageError::io("create", &log_dir))?;
        let file = format!(
            "rootfs-{}-{}.ext4",
            short(&self.plan.rootfs),
            self.started_unix
        );
        RootfsBuild {
            tree: &self.staging.join("rootfs"),
            image: &self.staging.join(&file),
            package_cache: &cache.join("debootstrap"),
            log_dir: &log_dir,
        }
        .run()?;

        Ok(RootfsPart {
            file,
            fingerprint: self.plan.rootfs.clone(),
            suite: rootfs::SUITE.to_owned(),
            packages: rootfs::PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
        })
    }

    /// Step 4. Moves new files into the image folder, then writes the
    /// manifest. Files of earlier builds stay until `prune` removes them.
    fn install(
        &self,
        reporter: &mut Reporter<'_>,
        dir: &Path,
        kernel: KernelPart,
        initrd: InitrdPart,
        rootfs: RootfsPart,
    ) -> Result<Manifest, ImageError> {
        reporter.step(format!("installing image default in {}", dir.display()));
        std::fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;

        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: DEFAULT_IMAGE.to_owned(),
            fingerprint: Manifest::combined_fingerprint(&kernel, &initrd, &rootfs),
            created_unix: self.started_unix,
            kernel,
            initrd,
            rootfs,
        };
        for file in manifest.files() {
            let built = self.staging.join(file);
            if built.is_file() {
                let target = dir.join(file);
                std::fs::rename(&built, &target)
                    .map_err(ImageError::io("move a built file to", &target))?;
            }
        }
        manifest.write(dir)?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::tests::sample;

    fn plan_matching(manifest: &Manifest) -> Plan {
        Plan {
            kernel_package: KernelPackage {
                name: manifest.kernel.package.clone(),
                version: manifest.kernel.version.clone(),
            },
            kernel: manifest.kernel.fingerprint.clone(),
            agent_sha256: manifest.initrd.agent_sha256.clone(),
            initrd: manifest.initrd.fingerprint.clone(),
            rootfs: manifest.rootfs.fingerprint.clone(),
        }
    }

    fn image_dir_with(manifest: &Manifest) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in manifest.files() {
            std::fs::write(dir.path().join(file), "x").unwrap();
        }
        dir
    }

    #[test]
    fn reuses_parts_with_matching_fingerprints() {
        let previous = sample();
        let dir = image_dir_with(&previous);
        let plan = Plan {
            initrd: "new agent".into(),
            ..plan_matching(&previous)
        };

        let reusable = Reusable::find(&plan, Some(&previous), dir.path());

        assert_eq!(reusable.kernel, Some(previous.kernel));
        assert_eq!(reusable.initrd, None);
        assert_eq!(reusable.rootfs, Some(previous.rootfs));
    }

    #[test]
    fn missing_file_is_not_reused() {
        let previous = sample();
        let dir = image_dir_with(&previous);
        std::fs::remove_file(dir.path().join(&previous.rootfs.file)).unwrap();

        let reusable = Reusable::find(&plan_matching(&previous), Some(&previous), dir.path());

        assert!(reusable.kernel.is_some());
        assert!(reusable.initrd.is_some());
        assert_eq!(reusable.rootfs, None);
        assert!(!reusable.everything());
    }

    #[test]
    fn everything_reused_when_unchanged() {
        let previous = sample();
        let dir = image_dir_with(&previous);
        let reusable = Reusable::find(&plan_matching(&previous), Some(&previous), dir.path());
        assert!(reusable.everything());
    }

    #[test]
    fn nothing_reused_without_manifest() {
        let previous = sample();
        let reusable = Reusable::find(&plan_matching(&previous), None, Path::new("/nonexistent"));
        assert!(reusable.kernel.is_none());
        assert!(reusable.initrd.is_none());
        assert!(reusable.rootfs.is_none());
    }

    #[test]
    fn progress_display() {
        let step = BuildProgress {
            step: 2,
            steps: 4,
            message: "debootstrap bookworm".into(),
        };
        assert_eq!(step.to_string(), "[2/4] debootstrap bookworm");
        let summary = BuildProgress {
            step: 0,
            steps: 4,
            message: "up to date".into(),
        };
        assert_eq!(summary.to_string(), "up to date");
    }
}
