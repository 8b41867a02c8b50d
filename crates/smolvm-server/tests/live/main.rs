//! Tests against a real server listening on a loopback port: the server
//! itself (binding, shutdown, the safety checks over a real socket), and
//! end-to-end runs against real sandboxes, which skip with a reason when
//! the host cannot boot them.

mod client;
mod sandboxes;
mod server;
