//! Moving files into and out of a sandbox, in chunks.

use smolvm_protocol::{Frame, Message, RequestId};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::lifecycle::wrong_state;
use super::{Engine, EngineError};
use crate::client::{ClientError, Connection, unexpected};
use crate::spec::SpecError;

/// Size of each chunk sent to the agent.
const CHUNK_BYTES: usize = 256 * 1024;

/// File data the agent may send ahead of the reader.
const READ_WINDOW: u64 = 4 * 1024 * 1024;

impl Engine {
    /// Writes everything from `data` to `path` in the sandbox with file
    /// mode `mode`, creating parent directories when `create_parents`.
    /// The file appears whole or not at all. Returns the bytes written.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        mode: u32,
        create_parents: bool,
        data: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<u64, EngineError> {
        check_guest_path(path)?;
        let mut conn = self.connect_running(id, "copy files into").await?;
        let client_error = |e| EngineError::from_client(id, e);

        let file_id = conn.next_id();
        let start = Message::WriteFile {
            id: file_id,
            path: path.to_owned(),
            mode,
            create_parents,
        };
        conn.send(start).await.map_err(client_error)?;

        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let n = data
                .read(&mut buffer)
                .await
                .map_err(|e| EngineError::io("read the data to copy", e))?;
            if n == 0 {
                break;
            }
            let chunk = Frame::with_data(Message::FileChunk { id: file_id }, buffer[..n].to_vec());
            conn.send_frame(&chunk).await.map_err(client_error)?;
        }
        conn.send(Message::FileEnd { id: file_id })
            .await
            .map_err(client_error)?;

        loop {
            let frame = conn.recv().await.map_err(client_error)?;
            match frame.message {
                Message::FileWritten { id, bytes } if id == file_id => return Ok(bytes),
                Message::Failed { id, kind, message } if id == file_id => {
                    return Err(EngineError::Guest { kind, message });
                }
                _ => continue,
            }
        }
    }

    /// Opens `path` in the sandbox for reading.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<FileReader, EngineError> {
        check_guest_path(path)?;
        let mut conn = self.connect_running(id, "read files from").await?;
        let client_error = |e| EngineError::from_client(id, e);

        let file_id = conn.next_id();
        let request = Message::ReadFile {
            id: file_id,
            path: path.to_owned(),
            window: READ_WINDOW,
        };
        conn.send(request).await.map_err(client_error)?;

        loop {
            let frame = conn.recv().await.map_err(client_error)?;
            if frame.message.id() != Some(file_id) {
                continue;
            }
            return match frame.message {
                Message::FileInfo { size, mode, .. } => Ok(FileReader {
                    conn,
                    id: file_id,
                    sandbox: id.to_owned(),
                    size,
                    mode,
                    finished: false,
                }),
                Message::Failed { kind, message, .. } => Err(EngineError::Guest { kind, message }),
                other => Err(client_error(unexpected(&other))),
            };
        }
    }

    /// Connects to a sandbox that must be running for `action`.
    pub(super) async fn connect_running(
        &self,
        id: &str,
        action: &'static str,
    ) -> Result<Connection, EngineError> {
        let record = self.reconcile(self.record(id)?);
        if !record.state.can_exec() {
            return Err(wrong_state(&record, action));
        }
        let socket = self.sandbox_dir(&record.id).control_socket();
        Connection::connect(&socket)
            .await
            .map_err(|e| EngineError::from_client(id, e))
    }
}

fn check_guest_path(path: &str) -> Result<(), SpecError> {
    if !path.starts_with('/') {
        return Err(SpecError::new(
            "path",
            format!("{path:?} is not absolute; pass a path inside the sandbox starting with /"),
        ));
    }
    if path.contains('\0') {
        return Err(SpecError::new("path", "contains a NUL byte"));
    }
    Ok(())
}

/// A file being read from a sandbox, chunk by chunk.
#[derive(Debug)]
pub struct FileReader {
    conn: Connection,
    id: RequestId,
    sandbox: String,
    /// Size in bytes when the agent opened the file.
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    finished: bool,
}

impl FileReader {
    /// Returns the next chunk, or `None` at the end of the file.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, EngineError> {
        if self.finished {
            return Ok(None);
        }
        let client_error = |e| EngineError::from_client(&self.sandbox, e);
        loop {
            let frame = self.conn.recv().await.map_err(client_error)?;
            if frame.message.id() != Some(self.id) {
                continue;
            }
            match frame.message {
                Message::FileChunk { .. } => {
                    let credit = Message::Credit {
                        id: self.id,
                        bytes: frame.data.len() as u64,
                    };
                    self.conn.send(credit).await.map_err(client_error)?;
                    return Ok(Some(frame.data));
                }
                Message::FileEnd { .. } => {
                    self.finished = true;
                    return Ok(None);
                }
                Message::Failed { kind, message, .. } => {
                    self.finished = true;
                    return Err(EngineError::Guest { kind, message });
                }
                other => return Err(client_error(unexpected(&other))),
            }
        }
    }

    /// Reads the rest of the file into memory.
    pub async fn read_to_end(mut self) -> Result<Vec<u8>, EngineError> {
        let mut bytes = Vec::with_capacity(self.size as usize);
        while let Some(chunk) = self.next_chunk().await? {
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

impl From<ClientError> for EngineError {
    fn from(error: ClientError) -> Self {
        EngineError::from_client("", error)
    }
}
