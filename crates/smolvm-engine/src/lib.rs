//! smolvm host engine: sandbox specs and states, the store, images,
//! backends, and the supervisors that own running sandboxes.

pub mod accel;
pub mod client;
mod codec;
pub mod doctor;
pub mod host;
pub mod id;
pub mod image;
pub mod layout;
pub mod limits;
pub mod netns;
pub mod paths;
pub mod qemu;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod store;
pub mod supervisor;

pub use id::SandboxId;
pub use paths::Paths;
pub use state::SandboxState;
