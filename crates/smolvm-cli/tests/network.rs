//! End-to-end sandbox networking: outbound access works, host loopback
//! does not, and `network off` has no interface.

mod common;

use std::io::Write;
use std::net::TcpListener;

use common::{Sandbox, skip, stderr, stdout};

/// First `URIs:` entry of the host's apt sources: a registry this host
/// can reach, used as an outbound target without naming a host here.
fn apt_mirror() -> Option<String> {
    let text = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").ok()?;
    let line = text.lines().find(|l| l.starts_with("URIs:"))?;
    line.split_whitespace()
        .nth(1)
        .map(|uri| uri.trim_end_matches('/').to_owned())
}

#[test]
fn guest_cannot_reach_host_loopback() {
    if skip("guest_cannot_reach_host_loopback") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost-secret");
        }
    });

    let sandbox = Sandbox::create(&[]);
    for address in ["10.0.2.2", "127.0.0.1"] {
        let command = format!("curl -s -m 3 http://{address}:{port}/; echo \" exit=$?\"");
        let output = sandbox.sh(&command);
        assert!(
            !output.contains("host-secret"),
            "guest reached the host via {address}"
        );
        assert!(!output.contains("exit=0"), "{address}: {output}");
    }

    match apt_mirror() {
        Some(mirror) => {
            let command = format!(
                "curl -sS -o /dev/null -w '%{{http_code}}' -m 30 {mirror}/dists/bookworm/Release"
            );
            let output = sandbox.exec(&["--timeout", "60"], &[&command]);
            assert_eq!(
                stdout(&output),
                "200",
                "outbound HTTP failed: {}",
                stderr(&output)
            );
        }
        None => eprintln!("skipped outbound check: no apt sources file names a reachable registry"),
    }
}

#[test]
fn network_off_has_no_interface() {
    if skip("network_off_has_no_interface") {
        return;
    }
    let sandbox = Sandbox::create(&["--network", "off"]);
    let links = sandbox.sh("ls /sys/class/net");
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);
}
