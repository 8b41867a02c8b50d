//! Wire protocol between the smolvm host and the guest agent.
//!
//! The host and the agent exchange frames over one byte stream (a
//! virtio-serial port in the guest, a Unix socket on the host). The same
//! frames travel between a client and a sandbox's supervisor, which
//! forwards them to the agent and routes the replies back.
//!
//! ```text
//! +----------------+-----------------+----------------------+-----------------+
//! | u32 BE hdr_len | u32 BE data_len | header: JSON Message | data: raw bytes |
//! +----------------+-----------------+----------------------+-----------------+
//! ```
//!
//! The header says what the frame is; the data carries bulk bytes (command
//! output, file contents) without any encoding.

#![forbid(unsafe_code)]

mod frame;
mod message;

pub use frame::{
    Frame, FrameError, MAX_DATA_LEN, MAX_HEADER_LEN, parse_prefix, read_frame, write_frame,
};
pub use message::{
    ExecCommand, ExecRequest, FailureKind, Message, OutputStream, PROTOCOL_VERSION, RequestId,
    SupervisorStatus,
};
