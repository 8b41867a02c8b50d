//! The byte stream to the host: the virtio-serial port in init mode, an
//! accepted Unix socket in socket mode.
//!
//! The descriptor is nonblocking. Reads wait in `poll`. Writes go through
//! one lock, one encoded frame at a time, and wait in `poll` for room.
//! When the host is gone (the port reports `POLLHUP` while no host is
//! connected) a write fails instead of blocking until some later host
//! connects.
//!
//! One port outlives many host connections, so each connection is a
//! *session* with its own generation number. A [`Writer`] only writes while
//! its generation is current; frames of an ended session are dropped rather
//! than sent to the next host.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use smolvm_protocol::{Frame, FrameError, RequestId, parse_prefix};

use crate::sys::{self, cvt_size};

/// One open descriptor to the host.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
    /// Generation of the current session; writers of older ones are stale.
    generation: Mutex<u64>,
}

/// Errors from sending a frame.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The session ended or the host disconnected.
    #[error("the host connection is closed")]
    Closed,
    #[error("failed to encode frame")]
    Encode(#[source] FrameError),
    #[error("failed to write frame")]
    Io(#[source] io::Error),
}

/// Errors from reading a frame.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    /// The frame was read whole but its header is not a valid message. The
    /// stream is still in step; `id` is the request id if one was readable.
    #[error("invalid frame header")]
    Invalid {
        id: Option<RequestId>,
        #[source]
        source: serde_json::Error,
    },
    /// The stream cannot be read further, or is out of step.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl Channel {
    /// Wraps a connected descriptor and makes it nonblocking.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Arc<Self>> {
        sys::set_nonblocking(fd.as_fd())?;
        Ok(Arc::new(Self {
            fd,
            generation: Mutex::new(0),
        }))
    }

    fn generation(&self) -> MutexGuard<'_, u64> {
        self.generation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a new session and returns its writer; writers of earlier
    /// sessions stop writing.
    pub(crate) fn begin_session(self: &Arc<Self>) -> Writer {
        let mut generation = self.generation();
        *generation += 1;
        Writer {
            channel: self.clone(),
            generation: *generation,
        }
    }

    /// Reads one frame, waiting for it as long as it takes.
    pub(crate) fn read_frame(&self) -> Result<Frame, ReceiveError> {
        let mut reader = ChannelReader(self);
        let mut prefix = [0u8; 8];
        let mut filled = 0;
        while filled < prefix.len() {
            match reader.read(&mut prefix[filled..]) {
                Ok(0) if filled == 0 => return Err(FrameError::Closed.into()),
                Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()).into()),
                Ok(n) => filled += n,
                Err(e) => return Err(FrameError::Io(e).into()),
            }
        }

        let (header_len, data_len) = parse_prefix(prefix)?;
        let mut header = vec![0u8; header_len as usize];
        reader.read_exact(&mut header).map_err(FrameError::Io)?;
        let mut data = vec![0u8; data_len as usize];
        reader.read_exact(&mut data).map_err(FrameError::Io)?;

        Frame::decode(&header, data).map_err(|e| match e {
            FrameError::Decode(source) => ReceiveError::Invalid {
                id: request_id(&header),
                source,
            },
            other => other.into(),
        })
    }

    /// Waits until the descriptor has input or reports a hang-up, and
    /// returns whether a host is connected. A virtio-serial port reports
    /// `POLLHUP` while no host is connected.
    pub(crate) fn wait_for_input(&self) -> bool {
        let mut fds = [sys::pollfd(self.fd.as_fd(), libc::POLLIN)];
        match sys::poll(&mut fds, None) {
            Ok(_) => fds[0].revents & libc::POLLHUP == 0,
            Err(_) => false,
        }
    }

    /// Reads and discards bytes until the host disconnects. Used after the
    /// stream went out of step, when no later byte can be trusted.
    pub(crate) fn discard_until_closed(&self) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut reader = ChannelReader(self);
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    }

    fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a valid slice for the length passed.
            let ret =
                unsafe { libc::write(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            match cvt_size(ret) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(libc::POLLOUT)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until the descriptor is ready for `events`. Fails when the
    /// host hung up while waiting to write.
    fn wait(&self, events: libc::c_short) -> io::Result<()> {
        let mut fds = [sys::pollfd(self.fd.as_fd(), events)];
        while sys::poll(&mut fds, None)? == 0 {}

        let revents = fds[0].revents;
        let hung_up = revents & (libc::POLLHUP | libc::POLLERR) != 0;
        if events == libc::POLLOUT && hung_up && revents & libc::POLLOUT == 0 {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
    }
}

/// Extracts `"id"` from a header that did not decode as a message, so the
/// agent can still reply to the request with `Failed`.
fn request_id(header: &[u8]) -> Option<RequestId> {
    let value: serde_json::Value = serde_json::from_slice(header).ok()?;
    value.get("id")?.as_u64().map(RequestId)
}

/// Blocking `Read` over the nonblocking descriptor.
struct ChannelReader<'a>(&'a Channel);

impl Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid writable slice for the length passed.
            let ret =
                unsafe { libc::read(self.0.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match cvt_size(ret) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.0.wait(libc::POLLIN)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Sends frames for one session.
#[derive(Debug)]
pub(crate) struct Writer {
    channel: Arc<Channel>,
    generation: u64,
}

impl Writer {
    /// Encodes and writes one frame while holding the channel's write lock.
    pub(crate) fn send(&self, frame: &Frame) -> Result<(), SendError> {
        let bytes = frame.encode().map_err(SendError::Encode)?;

        let mut generation = self.channel.generation();
        if *generation != self.generation {
            return Err(SendError::Closed);
        }
        if let Err(e) = self.channel.write_all(&bytes) {
            // A half-written frame must not be followed by more frames.
            *generation += 1;
            return Err(match e.kind() {
                io::ErrorKind::BrokenPipe => SendError::Closed,
                _ => SendError::Io(e),
            });
        }
        Ok(())
    }

    /// Ends the session: later sends fail with [`SendError::Closed`].
    pub(crate) fn close(&self) {
        let mut generation = self.channel.generation();
        if *generation == self.generation {
            *generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_read_from_invalid_message() {
        assert_eq!(
            request_id(br#"{"type":"nonsense","id":7}"#),
            Some(RequestId(7))
        );
        assert_eq!(request_id(br#"{"type":"nonsense"}"#), None);
        assert_eq!(request_id(b"not json"), None);
    }
}
