//! Async frame I/O over tokio streams, the counterpart of the protocol
//! crate's blocking `read_frame`/`write_frame`.

use smolvm_protocol::{Frame, FrameError, parse_prefix};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame; [`FrameError::Closed`] when the stream ends cleanly
/// between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Frame, FrameError> {
    let mut prefix = [0u8; 8];
    let first = reader.read(&mut prefix).await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    reader.read_exact(&mut prefix[first..]).await?;

    let (header_len, data_len) = parse_prefix(prefix)?;
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header).await?;
    let mut data = vec![0u8; data_len as usize];
    reader.read_exact(&mut data).await?;
    Frame::decode(&header, data)
}

/// Writes one frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let bytes = frame.encode()?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}
