//! End-to-end: real sandboxes driven over HTTP. The test needs root, QEMU,
//! the built default image and the `smolvm` binary (found in `target/`, or
//! named by `SMOLVM_BIN`). Without them it prints `skipped: <reason>` and
//! passes. One sandbox is shared by all checks because each boot costs
//! seconds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use smolvm_engine::Paths;
use smolvm_engine::sandbox::Engine;
use smolvm_server::ServerConfig;

use crate::client::{Client, RunningServer, sse_events};

/// Upload limit of the test server: small enough to test 413 cheaply, and
/// above the 1 MiB JSON limit, which must not apply to uploads.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;

/// Returns why real sandboxes cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        return Some("not root; sandboxes with network need root".into());
    }
    let manifest = Paths::from_env().images_dir().join("default/manifest.json");
    if !manifest.exists() {
        return Some(format!(
            "no default image at {}; run `smolvm image build`",
            manifest.display()
        ));
    }
    if smolvm_program().is_none() {
        return Some(
            "no smolvm binary in target/ and SMOLVM_BIN is unset; run `cargo build`".into(),
        );
    }
    let qemu_on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| d.join("qemu-system-x86_64").is_file())
    });
    if !qemu_on_path {
        return Some("qemu-system-x86_64 is not on PATH; run scripts/install-deps.sh".into());
    }
    None
}

/// Returns the `smolvm` binary that supervises sandboxes.
fn smolvm_program() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SMOLVM_BIN") {
        return Some(PathBuf::from(path));
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    ["debug", "release"]
        .into_iter()
        .map(|profile| target.join(profile).join("smolvm"))
        .find(|p| p.is_file())
}

/// Opens an engine on a fresh data directory that boots the host's built images.
fn engine(data_dir: &tempfile::TempDir) -> Engine {
    let paths = Paths::new(data_dir.path()).with_images_dir(Paths::from_env().images_dir());
    Engine::open(paths, smolvm_program().unwrap()).unwrap()
}

/// Deletes the sandboxes a failed test left behind, so no VM outlives it.
struct Cleanup {
    engine: Engine,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let engine = self.engine.clone();
        // Drop may run inside the test's runtime, which cannot block, so
        // the deletes run on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                for sandbox in engine.list().await.unwrap_or_default() {
                    let _ = engine.delete(&sandbox.id).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_lifecycle_over_http() {
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        return;
    }
    let data_dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup {
        engine: engine(&data_dir),
    };
    let config = ServerConfig {
        max_file_bytes: MAX_FILE_BYTES,
        ..ServerConfig::default()
    };
    let server = RunningServer::start(engine(&data_dir), config.clone()).await;
    let client = server.client();

    let id = create(&client).await;
    exec_basics(&client, &id).await;
    exec_concurrent(&client, &id).await;
    exec_timeout(&client, &id).await;
    exec_stream(&client, &id).await;
    exec_stream_disconnect_kills(&client, &id).await;
    files(&client, &id).await;
    guest_cannot_reach_server(&client, &id, server.address.port()).await;
    metrics(&client).await;
    stop_and_start(&client, &id).await;

    server.stop().await;
    let server = RunningServer::start(engine(&data_dir), config).await;
    let client = server.client();
    survives_restart(&client, &id).await;
    delete_during_exec(&client, &id).await;
    server.stop().await;
}

async fn exec(client: &Client, id: &str, body: Value) -> Value {
    let response = client
        .post_json(&format!("/sandboxes/{id}/exec"), &body)
        .await;
    assert_eq!(response.status, 200, "{body}: {}", response.text());
    response.json()
}

async fn create(client: &Client) -> String {
    let started = Instant::now();
    let response = client
        .post_json(
            "/sandboxes",
            &json!({"memory": 512, "network": {"mode": "open"}}),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.text());
    let sandbox = response.json();
    let id = sandbox["id"].as_str().unwrap().to_owned();
    println!("create: {} ms", started.elapsed().as_millis());
    assert_eq!(
        response.header("location"),
        Some(format!("/sandboxes/{id}").as_str())
    );
    assert_eq!(sandbox["status"], "running");
    assert_eq!(sandbox["memory"], 512);
    assert_eq!(sandbox["network"], "open");
    for field in [
        "os",
        "image",
        "disk_size",
        "cpus",
        "backend",
        "accel",
        "created_at",
    ] {
        assert!(!sandbox[field].is_null(), "{field} missing: {sandbox}");
    }

    let got = client.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], id.as_str());
    let listed = client.get("/sandboxes").await.json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{listed}"
    );
    id
}

async fn exec_basics(client: &Client, id: &str) {
    let started = Instant::now();
    let output = exec(client, id, json!({"command": "echo hello"})).await;
    println!(
        "first exec round trip: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(output["exit_code"], 0);
    assert_eq!(output["stdout"], "hello\n");
    assert_eq!(output["stderr"], "");
    assert_eq!(output["stdout_truncated"], false);
    assert!(output["duration_ms"].is_u64());

    let failed = exec(client, id, json!({"command": "echo oops >&2; exit 3"})).await;
    assert_eq!(failed["exit_code"], 3);
    assert_eq!(failed["stderr"], "oops\n");

    let raw = exec(
        client,
        id,
        json!({"command": "printf %s '$HOME'", "shell": "raw"}),
    )
    .await;
    assert_eq!(raw["stdout"], "$HOME");

    let value = "it's \"$(id)\" `x`";
    let env = exec(
        client,
        id,
        json!({"command": "printf %s \"$GREETING\"", "env": {"GREETING": value}}),
    )
    .await;
    assert_eq!(env["stdout"], value);

    let mut round_trips: Vec<u128> = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        exec(client, id, json!({"command": "true", "shell": "raw"})).await;
        round_trips.push(started.elapsed().as_micros());
    }
    round_trips.sort_unstable();
    println!(
        "raw `true` exec round trip, median of 9: {} us",
        round_trips[4]
    );

    let cwd = exec(client, id, json!({"command": "pwd", "cwd": "/tmp"})).await;
    assert_eq!(cwd["stdout"], "/tmp\n");

    let response = client
        .post_json(
            &format!("/sandboxes/{id}/exec"),
            &json!({"command": "true", "cwd": "tmp"}),
        )
        .await;
    assert_eq!(
        response.expect_error(422, "invalid_request")["field"],
        "cwd"
    );
}

async fn exec_concurrent(client: &Client, id: &str) {
    let body = json!({"command": "sleep 2; echo done"});
    let started = Instant::now();
    let (first, second) = tokio::join!(exec(client, id, body.clone()), exec(client, id, body));
    assert_eq!(first["stdout"], "done\n");
    assert_eq!(second["stdout"], "done\n");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(3900),
        "two 2 s execs took {elapsed:?}: they did not overlap"
    );
}

async fn exec_timeout(client: &Client, id: &str) {
    let body = json!({"command": "echo partial; sleep 30", "timeout": 1});
    let response = client
        .post_json(&format!("/sandboxes/{id}/exec"), &body)
        .await;
    let error = response.expect_error(408, "command_timeout");
    assert_eq!(response.header("x-smolvm-sandbox-deleted"), Some("false"));
    assert_eq!(error["stdout"], "partial\n", "{error}");
    assert!(error["detail"].as_str().unwrap().contains("1 s"), "{error}");

    let after = exec(client, id, json!({"command": "echo still usable"})).await;
    assert_eq!(after["stdout"], "still usable\n");
}

async fn exec_stream(client: &Client, id: &str) {
    let body = serde_json::to_vec(
        &json!({"command": "for i in 1 2 3; do echo $i; done; echo err >&2; exit 4"}),
    )
    .unwrap();
    let headers = [("content-type", "application/json")];
    let mut stream = client
        .open(
            "POST",
            &format!("/sandboxes/{id}/exec/stream"),
            &headers,
            Some(&body),
        )
        .await;
    assert_eq!(stream.status().await, 200);
    let text = stream
        .read_until("event: exit", Duration::from_secs(60))
        .await;

    let events = sse_events(&text);
    let stdout: String = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| d["data"].as_str().unwrap())
        .collect();
    let stderr: String = events
        .iter()
        .filter(|(n, _)| n == "stderr")
        .map(|(_, d)| d["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "1\n2\n3\n", "{text}");
    assert_eq!(stderr, "err\n", "{text}");
    let (name, exit) = events.last().unwrap();
    assert_eq!(name, "exit", "{text}");
    assert_eq!(exit["exit_code"], 4, "{text}");
    assert_eq!(exit["timed_out"], false, "{text}");
}

async fn exec_stream_disconnect_kills(client: &Client, id: &str) {
    let body =
        serde_json::to_vec(&json!({"command": "echo started; sleep 300", "timeout": 600})).unwrap();
    let headers = [("content-type", "application/json")];
    let mut stream = client
        .open(
            "POST",
            &format!("/sandboxes/{id}/exec/stream"),
            &headers,
            Some(&body),
        )
        .await;
    let text = stream.read_until("started", Duration::from_secs(60)).await;
    assert!(text.contains("started"), "{text}");
    drop(stream);

    // The server notices the closed connection at its next keep-alive write.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let check = exec(
            client,
            id,
            json!({"command": "pgrep -x sleep || echo none"}),
        )
        .await;
        if check["stdout"] == "none\n" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sleep still runs after the client left: {check}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn files(client: &Client, id: &str) {
    let data: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let upload = format!("/sandboxes/{id}/files?path=/tmp/dir/up.bin&mode=600&create_parents=true");
    let written = client
        .send(
            "PUT",
            &upload,
            &[("content-type", "application/octet-stream")],
            Some(&data),
        )
        .await;
    assert_eq!(written.status, 200, "{}", written.text());
    assert_eq!(written.json()["bytes"], data.len());

    let stat = exec(client, id, json!({"command": "stat -c %a /tmp/dir/up.bin"})).await;
    assert_eq!(stat["stdout"], "600\n");
    let downloaded = client
        .get(&format!("/sandboxes/{id}/files?path=/tmp/dir/up.bin"))
        .await;
    assert_eq!(downloaded.status, 200);
    assert_eq!(
        downloaded.header("x-smolvm-file-size"),
        Some(data.len().to_string().as_str())
    );
    assert!(
        downloaded.body == data,
        "downloaded bytes differ from the upload"
    );
    assert_eq!(downloaded.header("x-content-type-options"), Some("nosniff"));

    let missing = client
        .get(&format!("/sandboxes/{id}/files?path=/no/such/file"))
        .await;
    missing.expect_error(404, "file_not_found");
    let directory = client
        .get(&format!("/sandboxes/{id}/files?path=/tmp"))
        .await;
    directory.expect_error(422, "invalid_request");

    let too_big = vec![0u8; MAX_FILE_BYTES as usize + 1];
    let refused = client
        .send(
            "PUT",
            &format!("/sandboxes/{id}/files?path=/tmp/big.bin"),
            &[],
            Some(&too_big),
        )
        .await;
    refused.expect_error(413, "file_too_large");
    let absent = exec(
        client,
        id,
        json!({"command": "test -e /tmp/big.bin && echo present || echo absent"}),
    )
    .await;
    assert_eq!(absent["stdout"], "absent\n");
}

async fn guest_cannot_reach_server(client: &Client, id: &str, port: u16) {
    // 10.0.2.2 is the host's loopback under plain slirp; sandboxes must
    // not reach it, nor the server through any other address.
    let command = format!(
        "for host in 10.0.2.2 10.0.2.3 127.0.0.1; do \
           curl -sS -m 3 http://$host:{port}/healthz && echo REACHED $host; \
         done; true"
    );
    let output = exec(client, id, json!({"command": command, "timeout": 30})).await;
    let stdout = output["stdout"].as_str().unwrap();
    assert!(
        !stdout.contains("REACHED"),
        "the guest reached the server: {output}"
    );
    assert!(
        !stdout.contains("\"ok\""),
        "the guest reached the server: {output}"
    );
}

async fn metrics(client: &Client) {
    let response = client.get("/metrics").await;
    assert_eq!(response.status, 200);
    let text = response.text();
    assert!(
        text.contains("smolvm_sandboxes{state=\"running\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("smolvm_create_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        !text.contains("smolvm_exec_duration_seconds_count 0"),
        "{text}"
    );
}

async fn stop_and_start(client: &Client, id: &str) {
    let mut events = client.open("GET", "/sdk/v1/events", &[], None).await;
    assert_eq!(events.status().await, 200);

    let stopped = client.post_empty(&format!("/sandboxes/{id}/stop")).await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    assert_eq!(stopped.json()["status"], "stopped");
    let text = events
        .read_until("sandbox.stopped", Duration::from_secs(10))
        .await;
    let seen = sse_events(&text);
    assert!(
        seen.iter()
            .any(|(n, d)| n == "sandbox.stopped" && d["sandbox_id"] == id),
        "{text}"
    );

    let response = client
        .post_json(
            &format!("/sandboxes/{id}/exec"),
            &json!({"command": "true"}),
        )
        .await;
    response.expect_error(409, "invalid_state");
    client
        .post_empty(&format!("/sandboxes/{id}/stop"))
        .await
        .expect_error(409, "invalid_state");

    let started = client.post_empty(&format!("/sandboxes/{id}/start")).await;
    assert_eq!(started.status, 200, "{}", started.text());
    assert_eq!(started.json()["status"], "running");
    let text = events
        .read_until("sandbox.running", Duration::from_secs(10))
        .await;
    assert!(text.contains("sandbox.running"), "{text}");
    let output = exec(client, id, json!({"command": "echo back"})).await;
    assert_eq!(output["stdout"], "back\n");
}

async fn survives_restart(client: &Client, id: &str) {
    let sandbox = client.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(sandbox.status, 200, "{}", sandbox.text());
    assert_eq!(sandbox.json()["status"], "running");
    let output = exec(client, id, json!({"command": "echo after restart"})).await;
    assert_eq!(output["stdout"], "after restart\n");
}

async fn delete_during_exec(client: &Client, id: &str) {
    let running = {
        let client = client.clone();
        let uri = format!("/sandboxes/{id}/exec");
        tokio::spawn(async move {
            client
                .post_json(&uri, &json!({"command": "sleep 60"}))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deleted = client.delete(&format!("/sandboxes/{id}")).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let ended = running.await.unwrap();
    let error = ended.expect_error(404, "sandbox_not_found");
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .contains("deleted while the command ran"),
        "{error}"
    );

    client
        .get(&format!("/sandboxes/{id}"))
        .await
        .expect_error(404, "sandbox_not_found");
    client
        .delete(&format!("/sandboxes/{id}"))
        .await
        .expect_error(404, "sandbox_not_found");
}
