//! smolvm HTTP API server.
