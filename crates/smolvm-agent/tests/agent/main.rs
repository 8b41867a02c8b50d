//! Integration tests: the agent in socket mode (`--listen`), driven over
//! the wire protocol. They need no sandbox, only a POSIX shell and the
//! usual coreutils on the host.

mod exec;
mod files;
mod harness;
mod kill;
mod protocol;
