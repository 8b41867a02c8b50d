//! Errors from sandbox operations.

use std::io;

use smolvm_protocol::FailureKind;

use crate::accel::AccelError;
use crate::client::ClientError;
use crate::image::ImageError;
use crate::spec::SpecError;
use crate::state::SandboxState;
use crate::store::StoreError;

/// Errors from [`super::Engine`] operations. The HTTP layer maps each
/// variant to a status and a stable code in one place.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("sandbox {id} not found; `smolvm sandbox list` shows the sandboxes on this host")]
    NotFound { id: String },
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error("cannot {action} sandbox {id} in state {state}{hint}")]
    WrongState {
        id: String,
        state: SandboxState,
        action: &'static str,
        hint: &'static str,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Accel(#[from] AccelError),
    /// A host program or capability that sandboxes need is missing.
    #[error("{what}; {fix}")]
    HostUnavailable { what: String, fix: String },
    #[error("sandbox {id} failed to boot: {reason}")]
    Boot { id: String, reason: String },
    /// The guest reported a failure for the request (missing file, ...).
    #[error("{message}")]
    Guest { kind: FailureKind, message: String },
    #[error("lost contact with sandbox {id}")]
    Agent {
        id: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to {context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl EngineError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a client error for sandbox `id`, keeping guest failures as such.
    pub(crate) fn from_client(id: &str, source: ClientError) -> Self {
        match source {
            ClientError::Failed { kind, message } => Self::Guest { kind, message },
            source => Self::Agent {
                id: id.to_owned(),
                source,
            },
        }
    }
}
