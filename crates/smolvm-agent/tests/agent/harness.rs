//! Test harness: starts the agent in socket mode and talks the protocol to
//! it with the protocol crate's `read_frame`/`write_frame`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smolvm_protocol::{
    ExecCommand, ExecRequest, FailureKind, Frame, Message, OutputStream, RequestId, read_frame,
    write_frame,
};

/// Maximum wait for any one frame before a test fails.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A scratch directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("smolvm-agent-test-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        Self(path.canonicalize().unwrap())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An agent process serving a socket in its own temporary directory.
pub(crate) struct Agent {
    child: Child,
    pub(crate) dir: TempDir,
    socket: PathBuf,
}

impl Agent {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    pub(crate) fn start_with(extra_args: &[&OsStr]) -> Self {
        let dir = TempDir::new();
        let socket = dir.path().join("agent.sock");
        let log = fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_smolvm-agent"))
            .arg("--listen")
            .arg(&socket)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("failed to start the agent binary");

        let agent = Self { child, dir, socket };
        let start = Instant::now();
        while !agent.socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        agent
    }

    /// Connects, retrying while the agent is between `bind` and `listen`.
    pub(crate) fn connect(&self) -> Client {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(&self.socket) {
                Ok(stream) => break stream,
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    panic!("failed to connect to the agent: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
        Client { stream, next_id: 1 }
    }

    /// Waits up to `limit` for the agent process to exit by itself.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
            eprintln!("--- agent log ---\n{log}--- end of agent log ---");
        }
    }
}

/// One connection to the agent.
pub(crate) struct Client {
    stream: UnixStream,
    next_id: u64,
}

/// Everything the agent sent for one exec.
#[derive(Debug, Default)]
pub(crate) struct ExecResult {
    pub(crate) pid: Option<u32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) timed_out: bool,
    pub(crate) duration_ms: u64,
    /// Set instead of an exit when the agent replied `Failed`.
    pub(crate) failure: Option<(FailureKind, String)>,
    /// Time from sending the request to the final frame.
    pub(crate) elapsed: Duration,
}

impl ExecResult {
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Client {
    pub(crate) fn next_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    pub(crate) fn send(&mut self, message: Message) {
        self.send_data(message, Vec::new());
    }

    pub(crate) fn send_data(&mut self, message: Message, data: Vec<u8>) {
        write_frame(&mut self.stream, &Frame::with_data(message, data))
            .expect("failed to send a frame");
    }

    /// Writes raw bytes, for malformed frames.
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    pub(crate) fn recv(&mut self) -> Frame {
        read_frame(&mut self.stream).expect("failed to read a frame from the agent")
    }

    /// Returns the next frame if one starts arriving within `wait`.
    pub(crate) fn try_recv(&mut self, wait: Duration) -> Option<Frame> {
        use std::os::fd::AsRawFd;
        let mut fds = [libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, wait.as_millis() as libc::c_int) };
        (ready > 0).then(|| self.recv())
    }

    /// Runs one exec to its end, granting credit for every output byte.
    pub(crate) fn exec(&mut self, request: ExecRequest) -> ExecResult {
        let id = self.next_id();
        self.start_exec(id, request);
        self.collect(&[id]).remove(&id).unwrap()
    }

    pub(crate) fn start_exec(&mut self, id: RequestId, request: ExecRequest) {
        self.send(Message::Exec { id, request });
    }

    /// Reads frames until every exec in `ids` has ended, granting credit
    /// for each output chunk as it arrives.
    pub(crate) fn collect(&mut self, ids: &[RequestId]) -> HashMap<RequestId, ExecResult> {
        let start = Instant::now();
        let mut results: HashMap<RequestId, ExecResult> = HashMap::new();
        let mut open: Vec<RequestId> = ids.to_vec();
        while !open.is_empty() {
            let frame = self.recv();
            let id = frame.message.id().expect("exec frames carry an id");
            assert!(
                ids.contains(&id),
                "frame for an unexpected request: {:?}",
                frame.message
            );
            let result = results.entry(id).or_default();
            if record(result, frame, &mut self.stream) {
                result.elapsed = start.elapsed();
                open.retain(|open_id| *open_id != id);
            }
        }
        results
    }
}

/// Stores one exec frame; returns true for the final one.
fn record(result: &mut ExecResult, frame: Frame, stream: &mut UnixStream) -> bool {
    match frame.message {
        Message::Started { pid, .. } => result.pid = Some(pid),
        Message::Output { id, stream: which } => {
            let bytes = frame.data.len() as u64;
            match which {
                OutputStream::Stdout => result.stdout.extend_from_slice(&frame.data),
                OutputStream::Stderr => result.stderr.extend_from_slice(&frame.data),
            }
            write_frame(stream, &Frame::new(Message::Credit { id, bytes })).unwrap();
        }
        Message::Exited {
            exit_code,
            signal,
            timed_out,
            duration_ms,
            ..
        } => {
            result.exit_code = Some(exit_code);
            result.signal = signal;
            result.timed_out = timed_out;
            result.duration_ms = duration_ms;
            return true;
        }
        Message::Failed { kind, message, .. } => {
            result.failure = Some((kind, message));
            return true;
        }
        other => panic!("unexpected frame during an exec: {other:?}"),
    }
    false
}

/// Builds a request to run `command` through the login shell.
pub(crate) fn login(command: &str) -> ExecRequest {
    request(ExecCommand::Login {
        command: command.to_string(),
    })
}

/// Builds a request to run `argv` directly.
pub(crate) fn argv(argv: &[&str]) -> ExecRequest {
    request(ExecCommand::Argv {
        argv: argv.iter().map(|s| s.to_string()).collect(),
    })
}

fn request(command: ExecCommand) -> ExecRequest {
    ExecRequest {
        command,
        env: Vec::new(),
        cwd: None,
        timeout_ms: None,
        stdin: false,
        window: 256 * 1024,
    }
}

/// A `sleep` duration in seconds that no other test run uses, so the
/// process can be found by its argv: `<whole>.<pid><tag>`.
pub(crate) fn unique_seconds(whole: u32, tag: u32) -> String {
    format!("{whole}.{}{tag}", std::process::id())
}

/// Pids of live (non-zombie) processes whose argv is exactly `args`.
pub(crate) fn processes_running(args: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A zombie's cmdline is empty, so it never matches.
        if fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline == wanted) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `limit` for a process running `args` to appear (a forked
/// child may not have called `execve` yet); returns the pids found.
pub(crate) fn wait_until_running(args: &[&str], limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = processes_running(args);
        if !pids.is_empty() || start.elapsed() > limit {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for process `pid` to end; true once it is gone or
/// a zombie (the agent reaps its children, so `/proc/<pid>` disappears).
pub(crate) fn wait_for_exit(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let after_name = &stat[stat.rfind(')')? + 1..];
                after_name.split_whitespace().next().map(str::to_string)
            });
        if state.is_none_or(|state| state == "Z") {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for no process to run `args`; returns the pids
/// still running after that.
pub(crate) fn wait_until_gone(args: &[&str], limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = processes_running(args);
        if pids.is_empty() || start.elapsed() > limit {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes (xorshift), for content checks.
pub(crate) fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
