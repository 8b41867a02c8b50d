//! Client side of a supervisor's control socket.
//!
//! One [`Connection`] carries any number of requests. Callers that want an
//! operation cancelled when they go away (an HTTP client disconnecting
//! from a streaming exec) use a connection of their own and drop it: the
//! supervisor kills the unfinished requests of a closed connection.

use std::io;
use std::path::Path;
use std::time::Duration;

use smolvm_protocol::{FailureKind, Frame, FrameError, Message, RequestId, SupervisorStatus};
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::codec::{read_frame, write_frame};

/// Errors talking to a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to connect to the sandbox's supervisor at {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the connection to the sandbox's supervisor was lost")]
    Closed,
    #[error("protocol error talking to the sandbox's supervisor")]
    Frame(#[source] FrameError),
    /// The guest or the supervisor reported a failure for the request.
    #[error("{message}")]
    Failed { kind: FailureKind, message: String },
    #[error("unexpected {0} message from the sandbox's supervisor")]
    Unexpected(String),
    #[error(
        "the sandbox did not answer within {0:?}; the guest may be overloaded, and stopping and starting it recovers it"
    )]
    Timeout(Duration),
}

impl From<FrameError> for ClientError {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::Closed => ClientError::Closed,
            other => ClientError::Frame(other),
        }
    }
}

/// An open connection to one sandbox's supervisor.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Connection {
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let (reader, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, reader),
            writer,
            next_id: 1,
        })
    }

    /// Returns a request id not yet used on this connection.
    pub fn next_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    pub async fn send(&mut self, message: Message) -> Result<(), ClientError> {
        self.send_frame(&Frame::new(message)).await
    }

    pub async fn send_frame(&mut self, frame: &Frame) -> Result<(), ClientError> {
        write_frame(&mut self.writer, frame)
            .await
            .map_err(ClientError::from)
    }

    /// Receives the next frame, whichever request it belongs to.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        read_frame(&mut self.reader)
            .await
            .map_err(ClientError::from)
    }

    pub async fn status(&mut self) -> Result<SupervisorStatus, ClientError> {
        let id = self.next_id();
        self.send(Message::Status { id }).await?;
        match self.recv_for(id).await?.message {
            Message::StatusOk { status, .. } => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        let id = self.next_id();
        self.send(Message::Ping { id }).await?;
        match self.recv_for(id).await?.message {
            Message::Pong { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the supervisor to power the sandbox off and waits until it has.
    /// The socket closing counts as done: the supervisor exits right after.
    pub async fn stop(&mut self, grace: Duration) -> Result<(), ClientError> {
        let id = self.next_id();
        let timeout_ms = grace.as_millis() as u64;
        self.send(Message::Stop { id, timeout_ms }).await?;

        let wait = grace + Duration::from_secs(10);
        match tokio::time::timeout(wait, self.recv_for(id)).await {
            Ok(Ok(_)) | Ok(Err(ClientError::Closed)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Timeout(wait)),
        }
    }

    /// Receives frames until one for `id` arrives; a `Failed` becomes an error.
    async fn recv_for(&mut self, id: RequestId) -> Result<Frame, ClientError> {
        loop {
            let frame = self.recv().await?;
            if frame.message.id() != Some(id) {
                continue;
            }
            if let Message::Failed { kind, message, .. } = frame.message {
                return Err(ClientError::Failed { kind, message });
            }
            return Ok(frame);
        }
    }
}

pub(crate) fn unexpected(message: &Message) -> ClientError {
    let text = serde_json::to_value(message)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    ClientError::Unexpected(text)
}
