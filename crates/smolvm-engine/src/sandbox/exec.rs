//! Running commands: a streaming form and a buffered form built on it.

use std::time::Duration;

use serde::Serialize;
use smolvm_protocol::{Message, OutputStream, RequestId};

use super::lifecycle::wrong_state;
use super::{Engine, EngineError};
use crate::client::{ClientError, Connection, unexpected};
use crate::limits::EXEC_OUTPUT_CAP_BYTES;
use crate::spec::ExecSpec;

/// Output the agent may send ahead of the reader, per exec. Past it, the
/// command blocks on a full pipe until the reader catches up.
const OUTPUT_WINDOW: u64 = 4 * 1024 * 1024;

/// How long past the command's own timeout the host waits for the agent
/// to report before giving up on it.
const AGENT_GRACE: Duration = Duration::from_secs(10);

/// One event of a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The main process exited; no events follow.
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        timed_out: bool,
        duration_ms: u64,
    },
}

/// The result of a buffered exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecOutput {
    /// The exit status, or 128 + N when killed by signal N.
    pub exit_code: i32,
    /// Output decoded as UTF-8 after joining chunks; invalid bytes are U+FFFD.
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    /// Whether output past the cap of `EXEC_OUTPUT_CAP_BYTES` was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Whether the command was killed for exceeding its timeout.
    pub timed_out: bool,
    pub signal: Option<i32>,
}

/// A running command's output, read event by event. Dropping it closes the
/// connection, which kills the command if it is still running.
#[derive(Debug)]
pub struct ExecStream {
    conn: Connection,
    id: RequestId,
    sandbox: String,
    deadline: tokio::time::Instant,
    finished: bool,
}

impl Engine {
    /// Starts a command and returns its output stream.
    pub async fn exec_stream(&self, id: &str, spec: &ExecSpec) -> Result<ExecStream, EngineError> {
        let request = spec.to_request(OUTPUT_WINDOW)?;
        let record = self.reconcile(self.record(id)?);
        if !record.state.can_exec() {
            return Err(wrong_state(&record, "run commands in"));
        }

        let socket = self.sandbox_dir(&record.id).control_socket();
        let client_error = |e| EngineError::from_client(id, e);
        let mut conn = Connection::connect(&socket).await.map_err(client_error)?;
        let exec_id = conn.next_id();
        conn.send(Message::Exec {
            id: exec_id,
            request,
        })
        .await
        .map_err(client_error)?;

        let limit = Duration::from_secs(spec.timeout_secs()) + AGENT_GRACE;
        Ok(ExecStream {
            conn,
            id: exec_id,
            sandbox: id.to_owned(),
            deadline: tokio::time::Instant::now() + limit,
            finished: false,
        })
    }

    /// Runs a command and collects its output, up to the per-stream cap.
    pub async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecOutput, EngineError> {
        let mut stream = self.exec_stream(id, spec).await?;
        let mut stdout = Capped::default();
        let mut stderr = Capped::default();

        while let Some(event) = stream.next().await? {
            match event {
                ExecEvent::Stdout(bytes) => stdout.push(&bytes),
                ExecEvent::Stderr(bytes) => stderr.push(&bytes),
                ExecEvent::Exited {
                    exit_code,
                    signal,
                    timed_out,
                    duration_ms,
                } => {
                    return Ok(ExecOutput {
                        exit_code,
                        stdout: String::from_utf8_lossy(&stdout.bytes).into_owned(),
                        stderr: String::from_utf8_lossy(&stderr.bytes).into_owned(),
                        duration_ms,
                        stdout_truncated: stdout.truncated,
                        stderr_truncated: stderr.truncated,
                        timed_out,
                        signal,
                    });
                }
            }
        }
        Err(EngineError::from_client(id, ClientError::Closed))
    }
}

impl ExecStream {
    /// Returns the next event, or `None` after `Exited`. Each chunk handed
    /// out is credited back to the agent, so output flows only as fast as
    /// the caller reads it.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, EngineError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let frame = match tokio::time::timeout_at(self.deadline, self.conn.recv()).await {
                Ok(frame) => frame.map_err(|e| EngineError::from_client(&self.sandbox, e))?,
                Err(_) => {
                    let waited = AGENT_GRACE;
                    let error = ClientError::Timeout(waited);
                    return Err(EngineError::from_client(&self.sandbox, error));
                }
            };
            if frame.message.id() != Some(self.id) {
                continue;
            }
            match frame.message {
                Message::Started { .. } => continue,
                Message::Output { stream, .. } => {
                    let credit = Message::Credit {
                        id: self.id,
                        bytes: frame.data.len() as u64,
                    };
                    self.conn
                        .send(credit)
                        .await
                        .map_err(|e| EngineError::from_client(&self.sandbox, e))?;
                    return Ok(Some(match stream {
                        OutputStream::Stdout => ExecEvent::Stdout(frame.data),
                        OutputStream::Stderr => ExecEvent::Stderr(frame.data),
                    }));
                }
                Message::Exited {
                    exit_code,
                    signal,
                    timed_out,
                    duration_ms,
                    ..
                } => {
                    self.finished = true;
                    return Ok(Some(ExecEvent::Exited {
                        exit_code,
                        signal,
                        timed_out,
                        duration_ms,
                    }));
                }
                Message::Failed { kind, message, .. } => {
                    self.finished = true;
                    return Err(EngineError::Guest { kind, message });
                }
                other => return Err(EngineError::from_client(&self.sandbox, unexpected(&other))),
            }
        }
    }

    /// Kills the command and everything it started.
    pub async fn kill(&mut self) -> Result<(), EngineError> {
        let signal = Message::Signal {
            id: self.id,
            signal: libc::SIGKILL,
        };
        self.conn
            .send(signal)
            .await
            .map_err(|e| EngineError::from_client(&self.sandbox, e))
    }
}

/// Output kept up to the cap; the rest is counted as truncated.
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capped {
    fn push(&mut self, chunk: &[u8]) {
        let room = EXEC_OUTPUT_CAP_BYTES.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_marks_truncation_at_cap() {
        let mut capped = Capped::default();
        capped.push(&vec![b'a'; EXEC_OUTPUT_CAP_BYTES - 1]);
        assert!(!capped.truncated);
        capped.push(b"bc");
        assert!(capped.truncated);
        assert_eq!(capped.bytes.len(), EXEC_OUTPUT_CAP_BYTES);
        assert_eq!(capped.bytes.last(), Some(&b'b'));
    }
}
