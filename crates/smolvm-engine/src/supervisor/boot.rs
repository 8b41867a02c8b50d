//! Boot: spawn the VMM (and its network), connect to the agent, shake
//! hands, and open the control socket.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use smolvm_protocol::{Frame, FrameError, Message, PROTOCOL_VERSION, SupervisorStatus};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

use super::{LaunchConfig, status_of};
use crate::codec::{read_frame, write_frame};
use crate::layout::SandboxDir;
use crate::netns::{self, NetnsError, Slirp};
use crate::store::{Store, StoreError};

/// Errors while booting a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("failed to read the launch config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("launch config {path} is invalid")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to open {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to start the VMM {program}")]
    SpawnVmm {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Network(#[from] NetnsError),
    #[error("the VMM exited during boot ({status}); console output: {console}")]
    VmmExited { status: String, console: String },
    #[error("the agent did not answer within {timeout:?}; console output: {console}")]
    Timeout { timeout: Duration, console: String },
    #[error("agent handshake failed")]
    Handshake(#[source] FrameError),
    #[error(
        "the agent speaks protocol version {found}, this host speaks {PROTOCOL_VERSION}; rebuild the image with `smolvm image build --force`"
    )]
    VersionMismatch { found: u32 },
    #[error("the sandbox was deleted or stopped while it booted")]
    Abandoned,
    #[error("failed to bind the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A booted sandbox, ready to serve clients.
pub(super) struct Booted {
    pub config: LaunchConfig,
    pub store: Store,
    pub vmm: Child,
    pub agent: UnixStream,
    pub listener: UnixListener,
    pub status: SupervisorStatus,
    pub slirp: Option<Slirp>,
}

pub(super) async fn boot(dir: &SandboxDir) -> Result<Booted, BootError> {
    let config = read_config(dir)?;
    let store = Store::open(&config.database)?;
    for socket in dir.sockets() {
        let _ = std::fs::remove_file(socket);
    }

    let started = Instant::now();
    let mut vmm = spawn_vmm(dir, &config)?;
    let vmm_pid = vmm.id().unwrap_or_default();
    store.set_processes(&config.sandbox_id, Some(std::process::id()), Some(vmm_pid))?;
    tracing::info!(sandbox.id = %config.sandbox_id, vm.pid = vmm_pid, "VMM spawned");

    let slirp = match config.network {
        true => Some(netns::start_slirp(vmm_pid, open_log(dir)?).await?),
        false => None,
    };

    let timeout = Duration::from_millis(config.boot_timeout_ms);
    let handshake = tokio::time::timeout(timeout, connect_agent(dir));
    let (agent, hello) = tokio::select! {
        result = handshake => match result {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => return Err(explain_vmm_exit(dir, &mut vmm).await.unwrap_or(error)),
            Err(_) => {
                let console = SandboxDir::log_tail(&dir.console_log(), 2000);
                return Err(BootError::Timeout { timeout, console });
            }
        },
        status = vmm.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let console = SandboxDir::log_tail(&dir.console_log(), 2000);
            return Err(BootError::VmmExited { status, console });
        }
    };
    let boot_ms = started.elapsed().as_millis() as u64;

    let control = dir.control_socket();
    let listener = UnixListener::bind(&control).map_err(|source| BootError::Bind {
        path: control.clone(),
        source,
    })?;
    if !store.set_running(&config.sandbox_id, vmm_pid, boot_ms)? {
        return Err(BootError::Abandoned);
    }

    let status = status_of(&config, vmm_pid, &hello, boot_ms);
    Ok(Booted {
        config,
        store,
        vmm,
        agent,
        listener,
        status,
        slirp,
    })
}

/// When the agent connection failed because the VMM is exiting, returns
/// that (with the console output) as the more useful error.
async fn explain_vmm_exit(dir: &SandboxDir, vmm: &mut Child) -> Option<BootError> {
    let status = tokio::time::timeout(Duration::from_secs(2), vmm.wait())
        .await
        .ok()?
        .ok()?;
    let console = SandboxDir::log_tail(&dir.console_log(), 2000);
    Some(BootError::VmmExited {
        status: status.to_string(),
        console,
    })
}

fn read_config(dir: &SandboxDir) -> Result<LaunchConfig, BootError> {
    let path = dir.launch_config();
    let text = std::fs::read_to_string(&path).map_err(|source| BootError::ReadConfig {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| BootError::ParseConfig { path, source })
}

fn open_log(dir: &SandboxDir) -> Result<std::fs::File, BootError> {
    let path = dir.supervisor_log();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| BootError::Log { path, source })
}

fn spawn_vmm(dir: &SandboxDir, config: &LaunchConfig) -> Result<Child, BootError> {
    let log = open_log(dir)?;
    let log_err = log.try_clone().map_err(|source| BootError::Log {
        path: dir.supervisor_log(),
        source,
    })?;

    let mut command = Command::new(&config.qemu_program);
    command
        .args(&config.qemu_args)
        .current_dir(dir.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    // SAFETY: runs in the forked child before exec; prctl is
    // async-signal-safe. If the supervisor dies, the VMM dies with it
    // instead of running unowned.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    if config.network {
        let resolv = netns::write_resolv_conf(dir.root())?;
        netns::isolate_network(&mut command, Some(&resolv));
    }

    command.spawn().map_err(|source| BootError::SpawnVmm {
        program: config.qemu_program.clone(),
        source,
    })
}

/// Connects to QEMU's agent socket, retrying while QEMU creates it, and
/// exchanges `Hello`.
async fn connect_agent(dir: &SandboxDir) -> Result<(UnixStream, Message), BootError> {
    let path = dir.agent_socket();
    let mut stream = loop {
        match UnixStream::connect(&path).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };

    let hello = Frame::new(Message::Hello {
        version: PROTOCOL_VERSION,
    });
    write_frame(&mut stream, &hello)
        .await
        .map_err(BootError::Handshake)?;
    loop {
        let frame = read_frame(&mut stream)
            .await
            .map_err(BootError::Handshake)?;
        match frame.message {
            Message::HelloOk { version, .. } if version != PROTOCOL_VERSION => {
                return Err(BootError::VersionMismatch { found: version });
            }
            message @ Message::HelloOk { .. } => return Ok((stream, message)),
            other => tracing::debug!(?other, "ignoring frame before handshake"),
        }
    }
}
