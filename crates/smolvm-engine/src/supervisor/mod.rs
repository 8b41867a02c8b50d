//! The supervisor: one long-lived host process per running sandbox.
//!
//! It spawns and reaps the VMM (and slirp4netns), keeps the single agent
//! connection that QEMU's virtio-serial socket allows, serves any number of
//! local clients on `ctl.sock` by routing their requests to the agent, and
//! records in the store what happened to the sandbox when the VMM exits.
//! Sandboxes therefore outlive the CLI or server process that created them.

mod boot;
mod router;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smolvm_protocol::{Frame, Message, RequestId, SupervisorStatus};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::host::error_chain;
use crate::id::SandboxId;
use crate::layout::SandboxDir;
use crate::netns::Slirp;
use crate::state::SandboxState;
use crate::store::Store;

pub use boot::BootError;
use router::Router;

/// How long a stop waits for the guest to power off before killing the VMM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The launch parameters the engine gives a supervisor, stored as `launch.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchConfig {
    pub sandbox_id: SandboxId,
    /// The database file the supervisor records state changes in.
    pub database: PathBuf,
    pub qemu_program: PathBuf,
    pub qemu_args: Vec<String>,
    pub network: bool,
    pub boot_timeout_ms: u64,
    /// The image files the sandbox boots from, kept while it exists.
    #[serde(default)]
    pub image_files: Vec<PathBuf>,
}

/// A request from a client connection to stop the sandbox.
struct StopRequest {
    timeout: Duration,
    done: oneshot::Sender<()>,
}

/// Runs the supervisor for the sandbox in `dir` until its VMM exits.
/// `ready` receives one line, `ok` or `error: ...`, once boot succeeds or
/// fails. Returns the process exit code.
pub fn run(dir: &Path, ready: Option<OwnedFd>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            report_ready(
                ready,
                &format!("error: failed to start the supervisor runtime: {e}"),
            );
            return 1;
        }
    };
    // A current-thread runtime keeps every spawn on this thread, which
    // matters because PR_SET_PDEATHSIG fires when the spawning thread exits.
    runtime.block_on(supervise(SandboxDir::new(dir), ready))
}

async fn supervise(dir: SandboxDir, ready: Option<OwnedFd>) -> i32 {
    let booted = match boot::boot(&dir).await {
        Ok(booted) => booted,
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "boot failed");
            report_ready(ready, &format!("error: {}", error_chain(&e)));
            return 1;
        }
    };
    let boot::Booted {
        config,
        store,
        mut vmm,
        agent,
        listener,
        status,
        mut slirp,
    } = booted;
    report_ready(ready, "ok");
    tracing::info!(sandbox.id = %config.sandbox_id, vm.pid = status.vmm_pid, boot_ms = status.boot_ms, "sandbox running");

    let router = Router::start(agent, status);
    let exit = serve(listener, &router, &mut vmm, &mut slirp).await;
    drop(slirp);

    record_exit(&store, &config.sandbox_id, &exit);
    for socket in dir.sockets() {
        let _ = std::fs::remove_file(socket);
    }
    router.fail_all("the sandbox stopped");
    if let Exit::Stopped {
        done: Some(done), ..
    } = exit
    {
        let _ = done.send(());
        // Let the reply reach the client before the runtime shuts down;
        // clients also accept the socket closing as the end of a stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    0
}

/// The reason the serve loop ended.
enum Exit {
    /// Stopped on request; `done` is signalled once the state is recorded.
    Stopped {
        status: Option<ExitStatus>,
        done: Option<oneshot::Sender<()>>,
    },
    /// The VMM exited on its own.
    VmmExited(ExitStatus),
}

async fn serve(
    listener: UnixListener,
    router: &Arc<Router>,
    vmm: &mut tokio::process::Child,
    slirp: &mut Option<Slirp>,
) -> Exit {
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<StopRequest>();
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigint = signal(SignalKind::interrupt()).ok();

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(router::serve_client(router.clone(), stream, stop_tx.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            status = vmm.wait() => {
                let status = status.unwrap_or_else(|_| failed_status());
                return Exit::VmmExited(status);
            }
            status = wait_slirp(slirp) => {
                // The guest keeps running, but without a way out.
                tracing::error!(?status, "slirp4netns exited; the sandbox has no network until it is stopped and started");
                *slirp = None;
            }
            Some(request) = stop_rx.recv() => {
                let status = shut_down(router, vmm, request.timeout).await;
                return Exit::Stopped { status, done: Some(request.done) };
            }
            _ = recv_signal(&mut sigterm) => {
                let status = shut_down(router, vmm, STOP_GRACE).await;
                return Exit::Stopped { status, done: None };
            }
            _ = recv_signal(&mut sigint) => {
                let status = shut_down(router, vmm, STOP_GRACE).await;
                return Exit::Stopped { status, done: None };
            }
        }
    }
}

async fn wait_slirp(slirp: &mut Option<Slirp>) -> Option<ExitStatus> {
    match slirp {
        Some(slirp) => slirp.child.wait().await.ok(),
        None => std::future::pending().await,
    }
}

async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Asks the agent to power off and waits for the VMM; kills it after
/// `timeout`.
async fn shut_down(
    router: &Router,
    vmm: &mut tokio::process::Child,
    timeout: Duration,
) -> Option<ExitStatus> {
    router.send_to_agent_detached(Frame::new(Message::Shutdown { id: RequestId(0) }));

    match tokio::time::timeout(timeout, vmm.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!("guest did not power off within {timeout:?}; killing the VMM");
            let _ = vmm.kill().await;
            vmm.wait().await.ok()
        }
    }
}

fn record_exit(store: &Store, id: &SandboxId, exit: &Exit) {
    use SandboxState::*;

    let result = match exit {
        Exit::Stopped { status, .. } => {
            tracing::info!(sandbox.id = %id, ?status, "sandbox stopped");
            store.transition(id, &[Running, Stopping], Stopped, None)
        }
        Exit::VmmExited(status) if status.success() => {
            // The guest powered itself off, e.g. `poweroff` inside it.
            store.transition(id, &[Running, Stopping], Stopped, None)
        }
        Exit::VmmExited(status) => {
            let reason = format!("the VMM exited unexpectedly ({status})");
            tracing::error!(sandbox.id = %id, %status, "VMM exited unexpectedly");
            store.transition(id, &[Running, Stopping, Creating], Error, Some(&reason))
        }
    };
    if let Err(e) = result {
        tracing::error!(sandbox.id = %id, error = %error_chain(&e), "failed to record the sandbox's state");
    }
}

fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(1 << 8)
}

fn report_ready(ready: Option<OwnedFd>, line: &str) {
    if let Some(fd) = ready {
        let mut file = std::fs::File::from(fd);
        let _ = writeln!(file, "{line}");
    }
}

/// Current status, as returned to `Status` requests.
pub(crate) fn status_of(
    config: &LaunchConfig,
    vmm_pid: u32,
    hello: &Message,
    boot_ms: u64,
) -> SupervisorStatus {
    let (agent_version, kernel) = match hello {
        Message::HelloOk {
            agent_version,
            kernel,
            ..
        } => (agent_version.clone(), kernel.clone()),
        _ => (String::new(), String::new()),
    };
    SupervisorStatus {
        sandbox_id: config.sandbox_id.to_string(),
        supervisor_pid: std::process::id(),
        vmm_pid,
        agent_version,
        kernel,
        boot_ms,
    }
}
