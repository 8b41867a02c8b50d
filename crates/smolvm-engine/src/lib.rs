//! smolvm host engine: sandbox specs and states, the store, images,
//! backends, and the supervisors that own running sandboxes.

pub mod accel;
pub mod image;
pub mod paths;
