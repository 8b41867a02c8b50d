//! Dispatch of each frame from the host to its handler.
//!
//! This runs on the session's frame reader thread, so nothing here may
//! wait for long: execs and file reads get their own threads, and upload
//! chunks only touch the local disk.

use std::sync::Arc;

use smolvm_protocol::{FailureKind, Frame, Message, PROTOCOL_VERSION, RequestId};

use crate::exec;
use crate::files::{Uploads, start_read};
use crate::session::Session;
use crate::shutdown;
use crate::sys;

/// Handles one frame.
pub(crate) fn dispatch(session: &Arc<Session>, uploads: &mut Uploads, frame: Frame) {
    let Frame { message, data } = frame;
    let new_id = message.id().filter(|_| starts_request(&message));
    if let Some(id) = new_id.filter(|&id| session.is_active(id) || uploads.contains(id)) {
        let text = format!(
            "request id {} is already in use by a request in flight",
            id.0
        );
        return session.fail(id, FailureKind::InvalidRequest, text);
    }

    match message {
        Message::Hello { .. } => hello(session),
        Message::Ping { id } => {
            let _ = session.send(&Frame::new(Message::Pong { id }));
        }
        Message::Exec { id, request } => exec::start(session, id, request),
        Message::Stdin { id } => {
            // Stdin for an exec that just ended is dropped, like a write
            // to a closed pipe.
            if let Some(handle) = session.exec(id) {
                handle.push_stdin(data);
            }
        }
        Message::Signal { id, signal } => {
            // The supervisor sends SIGKILL for every open request of a
            // client that went away, file transfers included.
            if uploads.contains(id) {
                uploads.cancel(id);
            } else if let Some(handle) = session.read(id) {
                handle.abort();
            } else {
                exec::signal(session, id, signal);
            }
        }
        Message::Credit { id, bytes } => credit(session, id, bytes),
        Message::WriteFile {
            id,
            path,
            mode,
            create_parents,
        } => {
            uploads.begin(session, id, &path, mode, create_parents);
        }
        Message::FileChunk { id } => uploads.write(session, id, &data),
        Message::FileEnd { id } => uploads.finish(session, id),
        Message::ReadFile { id, path, window } => start_read(session, id, path, window),
        Message::Shutdown { id } => shutdown::shutdown(session, id),
        other => reject(session, &other),
    }
}

fn starts_request(message: &Message) -> bool {
    matches!(
        message,
        Message::Exec { .. } | Message::WriteFile { .. } | Message::ReadFile { .. }
    )
}

fn hello(session: &Session) {
    let reply = Message::HelloOk {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: sys::kernel_release(),
    };
    let _ = session.send(&Frame::new(reply));
}

/// Credit for a request that already ended is dropped: the host may grant
/// it while the last frames are on their way.
fn credit(session: &Session, id: RequestId, bytes: u64) {
    if let Some(handle) = session.exec(id) {
        handle.add_credit(bytes);
    } else if let Some(handle) = session.read(id) {
        handle.add_credit(bytes);
    }
}

/// Rejects a message that only the agent or the supervisor sends.
fn reject(session: &Session, message: &Message) {
    let Some(id) = message.id() else { return };
    let text = "the agent does not handle this message; it is not a request to the agent";
    session.fail(id, FailureKind::InvalidRequest, text);
}
