//! Creating a sandbox: validate, resolve the image (building the default
//! one when missing), lay out its directory, and boot it under a new
//! supervisor. Anything created is removed again if a later step fails.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncBufReadExt;

use super::{Engine, EngineError, SandboxInfo};
use crate::accel::{self, AccelChoice};
use crate::host::{find_program, is_root};
use crate::id::SandboxId;
use crate::image::{BootImage, BuildOptions, BuildProgress, DiskFormat, locate_agent_binary};
use crate::layout::SandboxDir;
use crate::limits::{BOOT_TIMEOUT_SECS, host_cpus};
use crate::qemu::QemuConfig;
use crate::spec::{Backend, CreateRequest, NetworkMode, SandboxSpec};
use crate::state::SandboxState;
use crate::store::{SandboxRecord, Store};
use crate::supervisor::LaunchConfig;

const QEMU_PROGRAM: &str = "qemu-system-x86_64";

/// Progress reported while a sandbox is created.
#[derive(Debug, Clone)]
pub enum CreateProgress {
    /// The default image is being built first.
    Image(BuildProgress),
    /// Waiting for a free boot slot.
    Queued,
    Booting {
        id: String,
    },
}

impl Engine {
    /// Creates and boots a sandbox; returns once commands can run.
    pub async fn create(
        &self,
        request: CreateRequest,
        progress: &(dyn Fn(CreateProgress) + Send + Sync),
    ) -> Result<SandboxInfo, EngineError> {
        let spec = request.validate(host_cpus())?;
        check_host(&spec)?;
        let choice = AccelChoice::resolve(request.accel)?;
        let verdict = {
            let paths = self.paths().clone();
            tokio::task::spawn_blocking(move || accel::select(choice, &paths))
                .await
                .expect("accel selection does not panic")?
        };
        let image = self.boot_image(spec.image.as_deref(), progress).await?;

        let id = SandboxId::generate();
        let dir = self.sandbox_dir(&id);
        if let Some(path) = dir.socket_path_too_long() {
            return Err(EngineError::HostUnavailable {
                what: format!(
                    "socket path {} is longer than the kernel's limit",
                    path.display()
                ),
                fix: "set SMOLVM_DATA_DIR to a shorter directory".into(),
            });
        }

        let mut guard = CreateGuard::new(self.store(), id.clone(), dir.clone());
        std::fs::create_dir_all(dir.root())
            .map_err(|e| EngineError::io(format!("create {}", dir.root().display()), e))?;
        create_overlay(&id, &image, &dir.disk(), spec.disk_mib).await?;

        let now = SystemTime::now();
        let record = SandboxRecord {
            id: id.clone(),
            state: SandboxState::Creating,
            spec: spec.clone(),
            image: image.name.clone(),
            accel: verdict.accel,
            created_at: now,
            updated_at: now,
            supervisor_pid: None,
            vmm_pid: None,
            boot_ms: None,
            error: None,
        };
        self.store().insert(&record)?;
        guard.row_inserted = true;

        let qemu = QemuConfig {
            accel: verdict.accel,
            memory_mib: spec.memory_mib,
            cpus: spec.cpus,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            disk: dir.disk(),
            agent_socket: dir.agent_socket(),
            qmp_socket: dir.qmp_socket(),
            console_log: dir.console_log(),
            network: spec.network == NetworkMode::Open,
            hostname: id.to_string(),
            tsc_khz: accel::host_tsc_khz(),
        };
        let launch = LaunchConfig {
            sandbox_id: id.clone(),
            database: self.paths().database(),
            qemu_program: QEMU_PROGRAM.into(),
            qemu_args: qemu.args(),
            network: qemu.network,
            boot_timeout_ms: BOOT_TIMEOUT_SECS * 1000,
            image_files: vec![
                image.kernel.clone(),
                image.initrd.clone(),
                image.root_disk.clone(),
            ],
        };
        write_launch_config(&dir, &launch)?;

        progress(CreateProgress::Booting { id: id.to_string() });
        self.boot(&id, &dir, progress, &mut guard.supervisor_pid)
            .await?;
        guard.disarm();
        self.get(id.as_str()).await
    }

    /// Resolves the image to boot, building the default image if needed.
    async fn boot_image(
        &self,
        reference: Option<&str>,
        progress: &(dyn Fn(CreateProgress) + Send + Sync),
    ) -> Result<BootImage, EngineError> {
        if let Some(image) = self.images().resolve(reference)? {
            return Ok(image);
        }

        let agent_binary = locate_agent_binary()?;
        let images = self.images().clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let build = tokio::task::spawn_blocking(move || {
            let options = BuildOptions {
                agent_binary,
                force: false,
            };
            images.build_default(&options, &mut |step: &BuildProgress| {
                let _ = tx.send(step.clone());
            })
        });
        while let Some(step) = rx.recv().await {
            progress(CreateProgress::Image(step));
        }
        build.await.expect("image build does not panic")?;

        self.images()
            .resolve(reference)?
            .ok_or_else(|| EngineError::Boot {
                id: String::new(),
                reason: "the default image was built but cannot be found".into(),
            })
    }

    /// Spawns a supervisor for the sandbox in `dir` and waits until it
    /// reports the agent ready or the boot failed.
    pub(super) async fn boot(
        &self,
        id: &SandboxId,
        dir: &SandboxDir,
        progress: &(dyn Fn(CreateProgress) + Send + Sync),
        supervisor_pid: &mut Option<u32>,
    ) -> Result<(), EngineError> {
        if self.inner.boot_slots.available_permits() == 0 {
            progress(CreateProgress::Queued);
        }
        let _slot = self
            .inner
            .boot_slots
            .acquire()
            .await
            .expect("boot semaphore is never closed");

        let (ready_read, ready_write) = pipe()?;
        let mut child = spawn_supervisor(&self.inner.smolvm_program, dir, ready_write)?;
        *supervisor_pid = child.id();

        let ready = tokio::fs::File::from_std(std::fs::File::from(ready_read));
        let mut ready = tokio::io::BufReader::new(ready);
        let mut line = String::new();
        let wait = Duration::from_secs(BOOT_TIMEOUT_SECS + 15);
        let read = tokio::time::timeout(wait, ready.read_line(&mut line)).await;

        match read {
            Ok(Ok(_)) if line.trim() == "ok" => Ok(()),
            Ok(_) => {
                let _ = child.wait().await;
                let reason = match line.trim().strip_prefix("error: ") {
                    Some(reason) => reason.to_owned(),
                    None => {
                        let log = SandboxDir::log_tail(&dir.supervisor_log(), 2000);
                        format!("the supervisor exited without reporting; its log: {log}")
                    }
                };
                Err(EngineError::Boot {
                    id: id.to_string(),
                    reason,
                })
            }
            Err(_) => Err(EngineError::Boot {
                id: id.to_string(),
                reason: format!("the supervisor did not report within {wait:?}"),
            }),
        }
    }
}

/// Checks the host programs and rights that `spec` needs.
fn check_host(spec: &SandboxSpec) -> Result<(), EngineError> {
    if spec.backend == Backend::Firecracker {
        let fix = "create the sandbox with backend qemu (or auto)".to_owned();
        let what = match find_program("firecracker") {
            None => "backend firecracker needs a `firecracker` binary on PATH, and none was found"
                .into(),
            Some(path) => format!(
                "backend firecracker is not supported by this smolvm yet (found {})",
                path.display()
            ),
        };
        return Err(EngineError::HostUnavailable { what, fix });
    }
    if find_program(QEMU_PROGRAM).is_none() {
        return Err(EngineError::HostUnavailable {
            what: format!("{QEMU_PROGRAM} was not found on PATH"),
            fix: "install QEMU with scripts/install-deps.sh".into(),
        });
    }
    if spec.network == NetworkMode::Open {
        if find_program("slirp4netns").is_none() {
            return Err(EngineError::HostUnavailable {
                what: "network open needs slirp4netns, which was not found on PATH".into(),
                fix: "install it with scripts/install-deps.sh, or create the sandbox with network off".into(),
            });
        }
        if !is_root() {
            return Err(EngineError::HostUnavailable {
                what: "network open runs the VMM in its own network namespace, which needs root"
                    .into(),
                fix: "run smolvm as root, or create the sandbox with network off".into(),
            });
        }
    }
    Ok(())
}

async fn create_overlay(
    id: &SandboxId,
    image: &BootImage,
    disk: &Path,
    disk_mib: u32,
) -> Result<(), EngineError> {
    let format = match image.root_format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    let output = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&image.root_disk)
        .arg(disk)
        .arg(format!("{disk_mib}M"))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            EngineError::io("run qemu-img (install it with scripts/install-deps.sh)", e)
        })?;
    if !output.status.success() {
        return Err(EngineError::Boot {
            id: id.to_string(),
            reason: format!(
                "qemu-img could not create the disk overlay: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn write_launch_config(dir: &SandboxDir, launch: &LaunchConfig) -> Result<(), EngineError> {
    let path = dir.launch_config();
    let text = serde_json::to_string_pretty(launch).expect("launch config serializes");
    std::fs::write(&path, text).map_err(|e| EngineError::io(format!("write {}", path.display()), e))
}

fn spawn_supervisor(
    program: &Path,
    dir: &SandboxDir,
    ready: OwnedFd,
) -> Result<tokio::process::Child, EngineError> {
    let log_path = dir.supervisor_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| EngineError::io(format!("open {}", log_path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| EngineError::io("duplicate the log file", e))?;

    let mut command = tokio::process::Command::new(program);
    command
        .arg("__supervise")
        .arg(dir.root())
        .arg("--ready-fd")
        .arg("3")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let ready_fd = ready.as_raw_fd();
    // SAFETY: runs in the forked child before exec and only calls the
    // async-signal-safe setsid and dup2 on a descriptor opened before the fork.
    unsafe {
        command.pre_exec(move || {
            // A session of its own keeps the supervisor alive when the
            // creating terminal or process goes away.
            libc::setsid();
            if libc::dup2(ready_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| EngineError::io(format!("start the supervisor {}", program.display()), e))?;
    drop(ready);
    Ok(child)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), EngineError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(EngineError::io(
            "create a pipe",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and unowned.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Removes a half-created sandbox unless disarmed: kills its supervisor
/// (the VMM dies with it), deletes its directory and its row.
struct CreateGuard<'a> {
    store: &'a Store,
    id: SandboxId,
    dir: SandboxDir,
    row_inserted: bool,
    supervisor_pid: Option<u32>,
    armed: bool,
}

impl<'a> CreateGuard<'a> {
    fn new(store: &'a Store, id: SandboxId, dir: SandboxDir) -> Self {
        Self {
            store,
            id,
            dir,
            row_inserted: false,
            supervisor_pid: None,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.supervisor_pid {
            super::reconcile::kill_and_wait(pid, Duration::from_secs(5));
        }
        if let Err(e) = std::fs::remove_dir_all(self.dir.root())
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox.id = %self.id, error = %e, "failed to remove the directory of a failed create");
        }
        if self.row_inserted
            && let Err(e) = self.store.delete(&self.id)
        {
            tracing::warn!(sandbox.id = %self.id, error = %e, "failed to remove the row of a failed create");
        }
    }
}
