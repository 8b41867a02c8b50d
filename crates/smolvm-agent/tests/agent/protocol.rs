//! Handshake, ping, malformed frames, reconnection and shutdown.

use std::time::Duration;

use smolvm_protocol::{FailureKind, Message, PROTOCOL_VERSION, RequestId};

use crate::harness::{Agent, argv};

#[test]
fn hello_reports_versions() {
    let agent = Agent::start();
    let mut client = agent.connect();

    for _ in 0..2 {
        client.send(Message::Hello {
            version: PROTOCOL_VERSION,
        });
        let Message::HelloOk {
            version,
            agent_version,
            kernel,
        } = client.recv().message
        else {
            panic!("expected HelloOk");
        };
        assert_eq!(version, PROTOCOL_VERSION);
        assert_eq!(agent_version, env!("CARGO_PKG_VERSION"));
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(kernel, release.trim());
    }
}

#[test]
fn ping_answers_pong() {
    let agent = Agent::start();
    let mut client = agent.connect();

    client.send(Message::Ping { id: RequestId(4) });
    assert_eq!(client.recv().message, Message::Pong { id: RequestId(4) });
}

#[test]
fn invalid_header_answered_and_survived() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let header = br#"{"type":"no_such_message","id":9}"#;
    let mut frame = Vec::new();
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(&0u32.to_be_bytes());
    frame.extend_from_slice(header);

    client.send_raw(&frame);
    let reply = client.recv().message;
    assert!(
        matches!(
            reply,
            Message::Failed {
                id: RequestId(9),
                kind: FailureKind::InvalidRequest,
                ..
            }
        ),
        "{reply:?}"
    );

    client.send(Message::Ping { id: RequestId(10) });
    assert_eq!(client.recv().message, Message::Pong { id: RequestId(10) });
}

#[test]
fn agent_only_messages_rejected() {
    let agent = Agent::start();
    let mut client = agent.connect();

    client.send(Message::Pong { id: RequestId(3) });
    let reply = client.recv().message;
    assert!(
        matches!(
            reply,
            Message::Failed {
                kind: FailureKind::InvalidRequest,
                ..
            }
        ),
        "{reply:?}"
    );
}

#[test]
fn reconnect_after_disconnect() {
    let agent = Agent::start();
    let mut first = agent.connect();
    let id = first.next_id();
    first.start_exec(id, argv(&["sleep", "300"]));
    let Message::Started { pid, .. } = first.recv().message else {
        panic!("expected Started");
    };
    drop(first);

    let mut second = agent.connect();
    second.send(Message::Ping { id: RequestId(1) });
    assert_eq!(second.recv().message, Message::Pong { id: RequestId(1) });
    assert!(
        crate::harness::wait_for_exit(pid, Duration::from_secs(2)),
        "execs of a closed connection are killed"
    );
}

#[test]
fn shutdown_replies_and_exits() {
    let mut agent = Agent::start();
    let mut client = agent.connect();

    client.send(Message::Shutdown { id: RequestId(2) });
    assert_eq!(
        client.recv().message,
        Message::ShuttingDown { id: RequestId(2) }
    );
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent should exit");
    assert!(status.success());
}
