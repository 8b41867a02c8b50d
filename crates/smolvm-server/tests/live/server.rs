//! The server over a real socket, with an engine on an empty data
//! directory: no sandbox is booted.

use std::time::{Duration, Instant};

use smolvm_engine::Paths;
use smolvm_engine::sandbox::Engine;
use smolvm_server::{ConfigError, Server, ServerConfig, ServerError};

use crate::client::RunningServer;

fn engine(data_dir: &tempfile::TempDir) -> Engine {
    Engine::open(Paths::new(data_dir.path()), "/nonexistent/smolvm".into()).unwrap()
}

#[tokio::test]
async fn port_in_use_names_port() {
    let data_dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();

    let config = ServerConfig {
        port,
        ..ServerConfig::default()
    };
    let error = Server::bind(config, engine(&data_dir)).await.unwrap_err();
    assert!(
        matches!(error, ServerError::PortInUse { port: p, .. } if p == port),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains(&port.to_string()), "{message}");
    assert!(message.contains("--port"), "{message}");
}

#[tokio::test]
async fn public_bind_without_token_refused() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        host: "0.0.0.0".into(),
        port: 0,
        ..ServerConfig::default()
    };
    let error = Server::bind(config, engine(&data_dir)).await.unwrap_err();
    assert!(
        matches!(
            error,
            ServerError::Config(ConfigError::TokenRequired { .. })
        ),
        "{error}"
    );
}

#[tokio::test]
async fn socket_requests_checked() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = RunningServer::start(engine(&data_dir), ServerConfig::default()).await;
    let client = server.client();

    let health = client.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["status"], "ok");

    // What a cross-site form or `fetch(..., {mode: "no-cors"})` can send.
    let form = client
        .send(
            "POST",
            "/sandboxes",
            &[("content-type", "text/plain")],
            Some(b"{}"),
        )
        .await;
    form.expect_error(415, "unsupported_media_type");

    // What a page on a rebinding name sends once it resolves to 127.0.0.1.
    let rebound = client
        .send(
            "GET",
            "/sandboxes",
            &[("Host", "attacker.example:8000")],
            None,
        )
        .await;
    rebound.expect_error(403, "host_not_allowed");

    let listed = client.get("/sandboxes").await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json(), serde_json::json!([]));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_event_streams() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = RunningServer::start(engine(&data_dir), ServerConfig::default()).await;
    let mut events = server
        .client()
        .open("GET", "/sdk/v1/events", &[], None)
        .await;
    assert_eq!(events.status().await, 200);

    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}
