//! HTTP handlers, one file per resource, and the value types they share.

pub mod events;
pub mod exec;
pub mod files;
pub mod model;
pub mod sandboxes;
pub mod system;
