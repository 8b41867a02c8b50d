//! Messages carried in frame headers.
//!
//! Every request names a [`RequestId`] chosen by the sender; every reply and
//! stream frame carries the id of the request it belongs to. Several
//! requests may be in flight at once on one stream.
//!
//! Flow control: a reader of a stream (exec output, file read) grants the
//! sender a window of bytes in the request and more with [`Message::Credit`]
//! as it consumes data. The sender stops sending data frames for that id
//! when the window is spent.

use serde::{Deserialize, Serialize};

/// Version of this protocol. The host refuses an agent whose `Hello`
/// carries another major version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Identifier of one request and the stream of frames that replies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

/// The output stream a chunk of exec output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// The command to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ExecCommand {
    /// Run `command` through the user's login shell as `SHELL -l -c command`.
    Login { command: String },
    /// Run `argv[0]` directly with these arguments, with no shell. `argv[0]`
    /// is looked up in `PATH` when it contains no slash.
    Argv { argv: Vec<String> },
}

/// A request to run one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: ExecCommand,
    /// Extra environment variables, set on the process as given.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; the user's home directory when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command and all its descendants after this many
    /// milliseconds; no limit when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether the host sends stdin with [`Message::Stdin`] frames. When
    /// false, stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Initial output window in bytes (see the module docs).
    pub window: u64,
}

/// The reason a request failed, as a stable machine-readable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A path or directory does not exist.
    NotFound,
    /// The path exists but is the wrong kind of file (e.g. a directory).
    InvalidPath,
    PermissionDenied,
    /// The request itself is malformed (e.g. an empty argv).
    InvalidRequest,
    /// The request id is unknown or already finished.
    UnknownRequest,
    /// Any other failure inside the guest; the message describes it.
    Internal,
}

/// State of a sandbox as seen by its supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub sandbox_id: String,
    pub supervisor_pid: u32,
    pub vmm_pid: u32,
    pub agent_version: String,
    pub kernel: String,
    /// Milliseconds from spawning the VMM to the agent's `Hello`.
    pub boot_ms: u64,
}

/// A frame header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    // ---- Handshake (host -> agent, then agent -> host) ----
    /// First frame from the host on a new connection.
    Hello {
        version: u32,
    },
    /// The agent's reply to `Hello`.
    HelloOk {
        version: u32,
        agent_version: String,
        kernel: String,
    },

    // ---- Exec ----
    /// Host -> agent: start a command.
    Exec {
        id: RequestId,
        #[serde(flatten)]
        request: ExecRequest,
    },
    /// Agent -> host: the command started with this process id.
    Started {
        id: RequestId,
        pid: u32,
    },
    /// Agent -> host: a chunk of output; the bytes are the frame data.
    Output {
        id: RequestId,
        stream: OutputStream,
    },
    /// Host -> agent: bytes for the command's stdin in the frame data; empty
    /// data closes stdin.
    Stdin {
        id: RequestId,
    },
    /// Host -> agent: send `signal` to the command's process group and, for
    /// SIGKILL, to every descendant.
    Signal {
        id: RequestId,
        signal: i32,
    },
    /// Agent -> host: the command's main process ended. `exit_code` is the
    /// exit status, or 128 + N when killed by signal N.
    Exited {
        id: RequestId,
        exit_code: i32,
        signal: Option<i32>,
        timed_out: bool,
        duration_ms: u64,
    },

    // ---- Flow control ----
    /// Reader -> sender: `bytes` more may be sent for request `id`.
    Credit {
        id: RequestId,
        bytes: u64,
    },

    // ---- Files ----
    /// Host -> agent: start writing a file; data follows in `FileChunk`
    /// frames and ends with `FileEnd`. The file is written to a temporary
    /// name beside `path` and renamed into place at the end.
    WriteFile {
        id: RequestId,
        path: String,
        mode: u32,
        #[serde(default)]
        create_parents: bool,
    },
    /// Agent -> host: the file is in place.
    FileWritten {
        id: RequestId,
        bytes: u64,
    },
    /// Host -> agent: send the contents of a file.
    ReadFile {
        id: RequestId,
        path: String,
        window: u64,
    },
    /// Agent -> host: the size and mode of the file about to be sent.
    FileInfo {
        id: RequestId,
        size: u64,
        mode: u32,
    },
    /// Either way: a chunk of file contents in the frame data.
    FileChunk {
        id: RequestId,
    },
    /// Either way: the last chunk has been sent.
    FileEnd {
        id: RequestId,
    },

    // ---- Control ----
    Ping {
        id: RequestId,
    },
    Pong {
        id: RequestId,
    },
    /// Host -> agent: sync disks and power off.
    Shutdown {
        id: RequestId,
    },
    /// Agent -> host: the agent is about to power off.
    ShuttingDown {
        id: RequestId,
    },
    /// A request failed; no more frames follow for `id`.
    Failed {
        id: RequestId,
        kind: FailureKind,
        message: String,
    },

    // ---- Supervisor (client -> supervisor) ----
    /// Client -> supervisor: report the sandbox's status.
    Status {
        id: RequestId,
    },
    /// Supervisor -> client: the reply to `Status`.
    StatusOk {
        id: RequestId,
        status: SupervisorStatus,
    },
    /// Client -> supervisor: shut the sandbox down and exit; the reply is
    /// `ShuttingDown` once the VMM has exited.
    Stop {
        id: RequestId,
        timeout_ms: u64,
    },
}

impl Message {
    /// Returns the request id the message belongs to, if it has one.
    pub fn id(&self) -> Option<RequestId> {
        use Message::*;
        match self {
            Hello { .. } | HelloOk { .. } => None,
            Exec { id, .. }
            | Started { id, .. }
            | Output { id, .. }
            | Stdin { id }
            | Signal { id, .. }
            | Exited { id, .. }
            | Credit { id, .. }
            | WriteFile { id, .. }
            | FileWritten { id, .. }
            | ReadFile { id, .. }
            | FileInfo { id, .. }
            | FileChunk { id }
            | FileEnd { id }
            | Ping { id }
            | Pong { id }
            | Shutdown { id }
            | ShuttingDown { id }
            | Failed { id, .. }
            | Status { id }
            | StatusOk { id, .. }
            | Stop { id, .. } => Some(*id),
        }
    }

    /// Returns a copy of the message with its request id replaced. Messages
    /// without an id are returned unchanged.
    pub fn with_id(mut self, new_id: RequestId) -> Self {
        use Message::*;
        match &mut self {
            Hello { .. } | HelloOk { .. } => {}
            Exec { id, .. }
            | Started { id, .. }
            | Output { id, .. }
            | Stdin { id }
            | Signal { id, .. }
            | Exited { id, .. }
            | Credit { id, .. }
            | WriteFile { id, .. }
            | FileWritten { id, .. }
            | ReadFile { id, .. }
            | FileInfo { id, .. }
            | FileChunk { id }
            | FileEnd { id }
            | Ping { id }
            | Pong { id }
            | Shutdown { id }
            | ShuttingDown { id }
            | Failed { id, .. }
            | Status { id }
            | StatusOk { id, .. }
            | Stop { id, .. } => *id = new_id,
        }
        self
    }

    /// Returns true for the last frame of a request's reply.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Message::Exited { .. }
                | Message::FileWritten { .. }
                | Message::FileEnd { .. }
                | Message::Pong { .. }
                | Message::ShuttingDown { .. }
                | Message::Failed { .. }
                | Message::StatusOk { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the JSON form of each message kind, so a wire change is a
    /// reviewed diff rather than a silent break between host and agent.
    #[test]
    fn wire_form_snapshot() {
        let id = RequestId(5);
        let cases = [
            (
                Message::Hello { version: 1 },
                r#"{"type":"hello","version":1}"#,
            ),
            (
                Message::Exec {
                    id,
                    request: ExecRequest {
                        command: ExecCommand::Argv {
                            argv: vec!["ls".into(), "-l".into()],
                        },
                        env: vec![("A".into(), "$(b)".into())],
                        cwd: Some("/tmp".into()),
                        timeout_ms: Some(1000),
                        stdin: false,
                        window: 65536,
                    },
                },
                r#"{"type":"exec","id":5,"command":{"mode":"argv","argv":["ls","-l"]},"env":[["A","$(b)"]],"cwd":"/tmp","timeout_ms":1000,"stdin":false,"window":65536}"#,
            ),
            (
                Message::Output {
                    id,
                    stream: OutputStream::Stdout,
                },
                r#"{"type":"output","id":5,"stream":"stdout"}"#,
            ),
            (
                Message::Exited {
                    id,
                    exit_code: 137,
                    signal: Some(9),
                    timed_out: false,
                    duration_ms: 12,
                },
                r#"{"type":"exited","id":5,"exit_code":137,"signal":9,"timed_out":false,"duration_ms":12}"#,
            ),
            (
                Message::Credit { id, bytes: 10 },
                r#"{"type":"credit","id":5,"bytes":10}"#,
            ),
            (
                Message::Failed {
                    id,
                    kind: FailureKind::NotFound,
                    message: "x".into(),
                },
                r#"{"type":"failed","id":5,"kind":"not_found","message":"x"}"#,
            ),
        ];

        for (message, json) in cases {
            assert_eq!(serde_json::to_string(&message).unwrap(), json);
            let back: Message = serde_json::from_str(json).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn with_id_rewrites_request_id() {
        let message = Message::Signal {
            id: RequestId(1),
            signal: 9,
        }
        .with_id(RequestId(42));
        assert_eq!(message.id(), Some(RequestId(42)));
    }
}
