//! Frame encoding: two big-endian length prefixes, a JSON header, raw data.

use std::io::{self, Read, Write};

use crate::Message;

/// Largest header accepted, in bytes. Headers hold small control messages.
pub const MAX_HEADER_LEN: u32 = 1024 * 1024;

/// Largest data section accepted, in bytes. Senders split bulk data into
/// chunks no larger than this.
pub const MAX_DATA_LEN: u32 = 1024 * 1024;

/// One decoded frame: a message and the raw bytes that go with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub message: Message,
    pub data: Vec<u8>,
}

impl Frame {
    /// Creates a frame without data.
    pub fn new(message: Message) -> Self {
        Self {
            message,
            data: Vec::new(),
        }
    }

    /// Creates a frame that carries `data`.
    pub fn with_data(message: Message, data: Vec<u8>) -> Self {
        Self { message, data }
    }

    /// Encodes the frame into one buffer, so it can be written with a
    /// single call while other writers wait.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let header = serde_json::to_vec(&self.message).map_err(FrameError::Encode)?;
        let header_len = checked_len(header.len(), MAX_HEADER_LEN, "header")?;
        let data_len = checked_len(self.data.len(), MAX_DATA_LEN, "data")?;

        let mut out = Vec::with_capacity(8 + header.len() + self.data.len());
        out.extend_from_slice(&header_len.to_be_bytes());
        out.extend_from_slice(&data_len.to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.data);
        Ok(out)
    }

    /// Decodes a frame from its two length fields' contents.
    pub fn decode(header: &[u8], data: Vec<u8>) -> Result<Self, FrameError> {
        let message = serde_json::from_slice(header).map_err(FrameError::Decode)?;
        Ok(Self { message, data })
    }
}

/// Errors from reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream at a frame boundary.
    #[error("connection closed by peer")]
    Closed,
    #[error("frame I/O failed")]
    Io(#[from] io::Error),
    #[error("frame {part} is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        part: &'static str,
        len: u64,
        max: u32,
    },
    #[error("failed to encode frame header")]
    Encode(#[source] serde_json::Error),
    #[error("failed to decode frame header")]
    Decode(#[source] serde_json::Error),
}

/// Parses the 8-byte length prefix into (header length, data length),
/// rejecting lengths over the limits before any buffer is allocated.
pub fn parse_prefix(prefix: [u8; 8]) -> Result<(u32, u32), FrameError> {
    let header_len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let data_len = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    checked_len(header_len as usize, MAX_HEADER_LEN, "header")?;
    checked_len(data_len as usize, MAX_DATA_LEN, "data")?;
    Ok((header_len, data_len))
}

fn checked_len(len: usize, max: u32, part: &'static str) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(FrameError::TooLarge {
            part,
            len: len as u64,
            max,
        }),
    }
}

/// Reads one frame. Returns [`FrameError::Closed`] when the stream ends
/// before the first byte of a frame.
pub fn read_frame(reader: &mut impl Read) -> Result<Frame, FrameError> {
    let mut prefix = [0u8; 8];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }

    let (header_len, data_len) = parse_prefix(prefix)?;
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header)?;
    let mut data = vec![0u8; data_len as usize];
    reader.read_exact(&mut data)?;
    Frame::decode(&header, data)
}

/// Writes one frame with a single `write_all`.
pub fn write_frame(writer: &mut impl Write, frame: &Frame) -> Result<(), FrameError> {
    let bytes = frame.encode()?;
    writer.write_all(&bytes)?;
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OutputStream, RequestId};

    #[test]
    fn frame_round_trip_keeps_data() {
        let frame = Frame::with_data(
            Message::Output {
                id: RequestId(7),
                stream: OutputStream::Stderr,
            },
            vec![0, 159, 146, 150, 255],
        );
        let mut buf = Vec::new();
        write_frame(&mut buf, &frame).unwrap();

        let decoded = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(decoded, frame);
    }

    #[test]
    fn read_frame_reports_clean_close() {
        let empty: &[u8] = &[];
        assert!(matches!(read_frame(&mut &*empty), Err(FrameError::Closed)));
    }

    #[test]
    fn read_frame_rejects_truncated_frame() {
        let frame = Frame::new(Message::Ping { id: RequestId(1) });
        let bytes = frame.encode().unwrap();
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(read_frame(&mut &*cut), Err(FrameError::Io(_))));
    }

    #[test]
    fn oversized_lengths_rejected_before_allocation() {
        let mut prefix = [0u8; 8];
        prefix[..4].copy_from_slice(&(MAX_HEADER_LEN + 1).to_be_bytes());
        assert!(matches!(
            parse_prefix(prefix),
            Err(FrameError::TooLarge { part: "header", .. })
        ));

        let mut prefix = [0u8; 8];
        prefix[4..].copy_from_slice(&(MAX_DATA_LEN + 1).to_be_bytes());
        assert!(matches!(
            parse_prefix(prefix),
            Err(FrameError::TooLarge { part: "data", .. })
        ));
    }
}
