//! Serving the protocol: the virtio-serial port in init mode, a Unix socket
//! in socket mode. Either way one session at a time, each read frame by
//! frame on the calling thread.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smolvm_protocol::FrameError;

use crate::channel::{Channel, ReceiveError};
use crate::dispatch::dispatch;
use crate::files::Uploads;
use crate::log::log;
use crate::session::{Chain, Session, Settings};
use crate::sys;

/// Name of the virtio-serial port the host attaches the agent channel to.
const PORT_NAME: &str = "org.smolvm.agent";

/// Pause between checks for a host on the port. Reads return end-of-file
/// while no host is connected, so the agent has to poll.
const HOST_POLL_INTERVAL: Duration = Duration::from_millis(15);

/// After this long without the port appearing, the agent logs that it is
/// still waiting.
const PORT_WAIT_WARNING: Duration = Duration::from_secs(5);

/// Reason a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// The host closed the connection.
    Closed,
    /// A frame length was over the limit, so frame boundaries are lost.
    OutOfStep,
    /// Reading failed; the descriptor may be unusable.
    Failed(io::Error),
}

/// Serves the agent port forever, reopening it if reading fails.
pub(crate) fn serve_port(settings: &Arc<Settings>) -> ! {
    loop {
        let channel = open_port();
        loop {
            wait_for_host(&channel);
            match serve_session(&channel, settings) {
                SessionEnd::Closed => {}
                SessionEnd::OutOfStep => channel.discard_until_closed(),
                SessionEnd::Failed(e) => {
                    log!("reading the agent port failed, reopening it: {e}");
                    std::thread::sleep(HOST_POLL_INTERVAL);
                    break;
                }
            }
        }
    }
}

/// Finds the port by name under `/sys/class/virtio-ports` and opens it,
/// waiting until it exists (its driver may still be probing).
fn open_port() -> Arc<Channel> {
    let start = Instant::now();
    let mut warned = false;
    loop {
        match find_port().map(|path| open_device(&path)) {
            Some(Ok(channel)) => return channel,
            Some(Err(e)) => log!("opening the agent port failed: {e}"),
            None if !warned && start.elapsed() > PORT_WAIT_WARNING => {
                log!("still waiting for virtio port {PORT_NAME}");
                warned = true;
            }
            None => {}
        }
        std::thread::sleep(HOST_POLL_INTERVAL);
    }
}

fn find_port() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    entries.flatten().find_map(|entry| {
        let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (name.trim() == PORT_NAME).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

fn open_device(path: &Path) -> io::Result<Arc<Channel>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Channel::new(OwnedFd::from(file))
}

/// Returns once a host is connected to the port. The port reports
/// `POLLHUP` while no host is connected.
fn wait_for_host(channel: &Channel) {
    while !channel.wait_for_input() {
        std::thread::sleep(HOST_POLL_INTERVAL);
    }
}

/// Serves a Unix socket, one connection at a time, until `Shutdown`.
pub(crate) fn serve_socket(path: &Path, settings: &Arc<Settings>) -> io::Result<()> {
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)?;
    log!("listening on {}", path.display());
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log!("accepting a connection failed: {e}");
                continue;
            }
        };
        let channel = Channel::new(OwnedFd::from(stream))?;
        if let SessionEnd::Failed(e) = serve_session(&channel, settings) {
            log!("connection ended with an error: {e}");
        }
    }
    Ok(())
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(_) => Ok(()),
    }
}

/// Reads and dispatches frames until the connection ends, then aborts what
/// is still running for it.
fn serve_session(channel: &Arc<Channel>, settings: &Arc<Settings>) -> SessionEnd {
    let session = Arc::new(Session::new(channel.begin_session(), settings.clone()));
    let mut uploads = Uploads::default();

    let end = loop {
        match channel.read_frame() {
            Ok(frame) => dispatch(&session, &mut uploads, frame),
            Err(ReceiveError::Invalid { id, source }) => {
                log!("ignoring an invalid frame: {}", Chain(&source));
                if let Some(id) = id {
                    let message = format!("invalid message: {source}");
                    session.fail(id, smolvm_protocol::FailureKind::InvalidRequest, message);
                }
            }
            Err(ReceiveError::Frame(FrameError::Closed)) => break SessionEnd::Closed,
            Err(ReceiveError::Frame(e @ FrameError::TooLarge { .. })) => {
                log!("closing the session: {e}");
                break SessionEnd::OutOfStep;
            }
            Err(ReceiveError::Frame(FrameError::Io(e)))
                if e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                break SessionEnd::Closed;
            }
            Err(ReceiveError::Frame(FrameError::Io(e))) => break SessionEnd::Failed(e),
            Err(ReceiveError::Frame(e)) => break SessionEnd::Failed(io::Error::other(e)),
        }
    };

    let aborted = session.end();
    if aborted > 0 {
        log!("host disconnected; stopped {aborted} running requests");
    }
    end
}

/// Makes the process a child subreaper, so orphans of execs are reparented
/// to it (and reaped by it) in socket mode, as they are to PID 1.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument only.
    sys::cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }).map(drop)
}
