//! The HTTP part of `smolvm bench`: create and exec latency through a real
//! `smolvm server` on a loopback port, with a plain HTTP/1.1 client so the
//! numbers include only the server's own cost and the loopback hop.

use std::time::Instant;

use anyhow::Context;
use smolvm_engine::sandbox::Engine;
use smolvm_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Args, Samples};

pub(super) async fn bench_http(
    engine: &Engine,
    args: &Args,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let config = ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        token: None,
        cors_origin: None,
        max_file_bytes: smolvm_server::DEFAULT_MAX_FILE_BYTES,
        image_roots: Vec::new(),
    };
    let server = Server::bind(config, engine.clone()).await?;
    let address = server.local_addr().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let result = measure(&address, args, samples).await;
    let _ = stop_tx.send(());
    let _ = serving.await;
    result
}

async fn measure(address: &str, args: &Args, samples: &mut Samples) -> anyhow::Result<()> {
    let network = args.network.to_string();
    let body = format!(r#"{{"network":{{"mode":"{network}"}}}}"#);
    let started = Instant::now();
    let (status, created) = request(address, "POST", "/sandboxes", Some(&body)).await?;
    anyhow::ensure!(status == 201, "create returned HTTP {status}: {created}");
    let info: serde_json::Value = serde_json::from_str(&created)?;
    let id = info["id"]
        .as_str()
        .context("create response has no id")?
        .to_owned();
    let exec_path = format!("/sandboxes/{id}/exec");
    let exec_body = r#"{"command":"true","shell":"raw"}"#;

    let outcome = async {
        let (status, text) = request(address, "POST", &exec_path, Some(exec_body)).await?;
        anyhow::ensure!(status == 200, "exec returned HTTP {status}: {text}");
        samples.time("HTTP create to first command", started);

        for _ in 0..super::WARMUP_EXECS {
            request(address, "POST", &exec_path, Some(exec_body)).await?;
        }
        for _ in 0..args.execs {
            let started = Instant::now();
            let (status, text) = request(address, "POST", &exec_path, Some(exec_body)).await?;
            anyhow::ensure!(status == 200, "exec returned HTTP {status}: {text}");
            samples.time("HTTP exec round trip (true, raw)", started);
        }
        Ok(())
    }
    .await;

    let (status, text) = request(address, "DELETE", &format!("/sandboxes/{id}"), None).await?;
    anyhow::ensure!(status == 204, "delete returned HTTP {status}: {text}");
    outcome
}

/// Sends one request on a new connection and returns the status and body.
async fn request(
    address: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;

    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("malformed HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
