//! One module per top-level command.

pub(crate) mod bench;
pub(crate) mod doctor;
pub(crate) mod image;
pub(crate) mod sandbox;
pub(crate) mod server;
pub(crate) mod supervise;

use smolvm_engine::Paths;
use smolvm_engine::sandbox::Engine;

/// Opens the engine on the paths from the environment, with this binary
/// as the sandbox supervisor.
pub(crate) fn open_engine() -> anyhow::Result<Engine> {
    let program = std::env::current_exe()?;
    Ok(Engine::open(Paths::from_env(), program)?)
}
