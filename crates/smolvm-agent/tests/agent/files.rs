//! File transfers: `WriteFile` and `ReadFile`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use smolvm_protocol::{FailureKind, Message, RequestId};

use crate::harness::{Agent, Client, pseudo_random_bytes};

/// Chunk size the test host uses for uploads.
const UPLOAD_CHUNK: usize = 100_000;

/// Uploads `data` to `path`; returns the final reply.
fn write_file(
    client: &mut Client,
    path: &str,
    mode: u32,
    create_parents: bool,
    data: &[u8],
) -> Message {
    let id = client.next_id();
    client.send(Message::WriteFile {
        id,
        path: path.to_string(),
        mode,
        create_parents,
    });
    for chunk in data.chunks(UPLOAD_CHUNK) {
        client.send_data(Message::FileChunk { id }, chunk.to_vec());
    }
    client.send(Message::FileEnd { id });
    client.recv().message
}

/// What a `ReadFile` returned.
#[derive(Debug, Default)]
struct Download {
    size: u64,
    mode: u32,
    data: Vec<u8>,
    failure: Option<(FailureKind, String)>,
}

/// Downloads `path`, granting `window` bytes and more as chunks arrive
/// only when `credit` is set.
fn read_file(client: &mut Client, path: &str, window: u64, credit: bool) -> Download {
    let id = client.next_id();
    client.send(Message::ReadFile {
        id,
        path: path.to_string(),
        window,
    });
    let mut download = Download::default();
    loop {
        let frame = client.recv();
        assert_eq!(frame.message.id(), Some(id));
        match frame.message {
            Message::FileInfo { size, mode, .. } => (download.size, download.mode) = (size, mode),
            Message::FileChunk { .. } => {
                assert!(
                    frame.data.len() <= 128 * 1024,
                    "chunk of {} bytes",
                    frame.data.len()
                );
                download.data.extend_from_slice(&frame.data);
                assert!(
                    credit || download.data.len() as u64 <= window,
                    "read past the window"
                );
                if credit {
                    client.send(Message::Credit {
                        id,
                        bytes: frame.data.len() as u64,
                    });
                }
            }
            Message::FileEnd { .. } => return download,
            Message::Failed { kind, message, .. } => {
                download.failure = Some((kind, message));
                return download;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[test]
fn write_then_read_round_trip() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let data = pseudo_random_bytes(3 * 1024 * 1024 + 17, 3);
    let path = agent.dir.path().join("new/dir/file.bin");
    let path = path.to_str().unwrap();

    let reply = write_file(&mut client, path, 0o640, true, &data);
    assert!(
        matches!(reply, Message::FileWritten { bytes, .. } if bytes == data.len() as u64),
        "{reply:?}"
    );
    assert!(fs::read(path).unwrap() == data, "file on disk differs");
    assert_eq!(
        fs::metadata(path).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    let download = read_file(&mut client, path, 64 * 1024, true);
    assert_eq!(download.failure, None);
    assert_eq!(download.size, data.len() as u64);
    assert_eq!(download.mode, 0o640);
    assert!(download.data == data, "downloaded bytes differ");
}

#[test]
fn write_replaces_existing_file() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let path = agent.dir.path().join("existing");
    fs::write(&path, "old contents that are longer").unwrap();

    let reply = write_file(&mut client, path.to_str().unwrap(), 0o600, false, b"new");
    assert!(
        matches!(reply, Message::FileWritten { bytes: 3, .. }),
        "{reply:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"new");
    let leftovers: Vec<_> = fs::read_dir(agent.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn write_without_parent_fails() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let path = agent.dir.path().join("missing/file");

    let reply = write_file(&mut client, path.to_str().unwrap(), 0o644, false, b"data");
    let Message::Failed { kind, message, .. } = reply else {
        panic!("expected Failed, got {reply:?}")
    };
    assert_eq!(kind, FailureKind::NotFound);
    assert!(message.contains("does not exist"), "{message}");
    assert!(!path.exists());
}

#[test]
fn write_to_directory_fails() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let reply = write_file(
        &mut client,
        agent.dir.path().to_str().unwrap(),
        0o644,
        false,
        b"x",
    );
    assert!(
        matches!(
            reply,
            Message::Failed {
                kind: FailureKind::InvalidPath,
                ..
            }
        ),
        "{reply:?}"
    );
}

#[test]
fn relative_path_rejected() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let reply = write_file(&mut client, "relative/file", 0o644, true, b"x");
    assert!(
        matches!(
            reply,
            Message::Failed {
                kind: FailureKind::InvalidPath,
                ..
            }
        ),
        "{reply:?}"
    );
    let download = read_file(&mut client, "etc/passwd", 1024, true);
    assert_eq!(
        download.failure.map(|f| f.0),
        Some(FailureKind::InvalidPath)
    );
}

#[test]
fn read_missing_file_fails() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let path = agent.dir.path().join("nope");

    let download = read_file(&mut client, path.to_str().unwrap(), 1024, true);
    let (kind, message) = download.failure.expect("read should fail");
    assert_eq!(kind, FailureKind::NotFound);
    assert!(message.contains("nope"), "{message}");
}

#[test]
fn read_directory_fails() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let download = read_file(&mut client, agent.dir.path().to_str().unwrap(), 1024, true);
    assert_eq!(
        download.failure.map(|f| f.0),
        Some(FailureKind::InvalidPath)
    );
}

#[test]
fn read_window_of_exact_size_ends() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let data = pseudo_random_bytes(300_000, 5);
    let path = agent.dir.path().join("exact");
    fs::write(&path, &data).unwrap();

    let download = read_file(
        &mut client,
        path.to_str().unwrap(),
        data.len() as u64,
        false,
    );
    assert_eq!(download.failure, None);
    assert!(download.data == data);
}

#[test]
fn chunk_for_unknown_upload_fails() {
    let agent = Agent::start();
    let mut client = agent.connect();

    client.send_data(Message::FileChunk { id: RequestId(77) }, b"x".to_vec());
    let reply = client.recv().message;
    assert!(
        matches!(
            reply,
            Message::Failed {
                kind: FailureKind::UnknownRequest,
                ..
            }
        ),
        "{reply:?}"
    );
}

#[test]
fn signal_cancels_upload() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let dir = agent.dir.path().join("cancelled");
    fs::create_dir(&dir).unwrap();
    let path = dir.join("file.bin");

    let id = client.next_id();
    client.send(Message::WriteFile {
        id,
        path: path.to_str().unwrap().to_string(),
        mode: 0o644,
        create_parents: false,
    });
    client.send_data(Message::FileChunk { id }, vec![7; 1000]);
    client.send(Message::Signal {
        id,
        signal: libc::SIGKILL,
    });

    // The agent replies in order, so a reply to this ping means the
    // signal was handled.
    let ping = client.next_id();
    client.send(Message::Ping { id: ping });
    assert_eq!(client.recv().message, Message::Pong { id: ping });

    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "files left after a cancelled upload: {left:?}"
    );

    // The agent still takes uploads into that directory.
    let reply = write_file(&mut client, path.to_str().unwrap(), 0o644, false, b"ok");
    assert!(
        matches!(reply, Message::FileWritten { bytes: 2, .. }),
        "{reply:?}"
    );
}
