//! Timeouts, signals, flow control and killing every descendant.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smolvm_protocol::{FailureKind, Message, OutputStream, RequestId};

use crate::harness::{
    Agent, Client, TempDir, argv, pseudo_random_bytes, unique_seconds, wait_until_gone,
};

#[test]
fn timeout_kills_every_process() {
    let agent = Agent::start();
    let mut client = agent.connect();

    // `sh -c` rather than a login shell: it reaches `echo` well before the
    // timeout even on a loaded machine, and a kill cannot interrupt the
    // host's login profile halfway (which can leave its lock files behind).
    let (first, second) = (unique_seconds(300, 1), unique_seconds(300, 2));
    let script = format!("echo before; sleep {first} & sleep {second}");
    let mut request = argv(&["sh", "-c", &script]);
    request.timeout_ms = Some(1500);
    let result = client.exec(request);

    assert!(result.timed_out);
    assert_eq!(result.exit_code, Some(137));
    assert_eq!(result.signal, Some(9));
    assert_eq!(
        result.stdout_text(),
        "before\n",
        "output before the timeout is kept"
    );
    assert!(
        result.elapsed < Duration::from_millis(3500),
        "took {:?}",
        result.elapsed
    );
    for args in [["sleep", first.as_str()], ["sleep", second.as_str()]] {
        assert_eq!(
            wait_until_gone(&args, Duration::from_secs(1)),
            Vec::<u32>::new(),
            "{args:?} survived"
        );
    }

    let after = client.exec(argv(&["echo", "still usable"]));
    assert_eq!(after.stdout_text(), "still usable\n");
}

#[test]
fn signal_reaches_process_group() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let id = client.next_id();

    client.start_exec(
        id,
        argv(&[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 5' TERM; echo ready; while :; do sleep 0.05; done",
        ]),
    );
    wait_for_stdout(&mut client, id, "ready\n");
    client.send(Message::Signal {
        id,
        signal: libc::SIGTERM,
    });
    let result = client.collect(&[id]).remove(&id).unwrap();

    assert_eq!(result.stdout_text(), "got TERM\n");
    assert_eq!(result.exit_code, Some(5));
}

#[test]
fn signal_for_unknown_exec_fails() {
    let agent = Agent::start();
    let mut client = agent.connect();

    client.send(Message::Signal {
        id: RequestId(999),
        signal: libc::SIGKILL,
    });
    let frame = client.recv();
    assert!(
        matches!(
            frame.message,
            Message::Failed {
                kind: FailureKind::UnknownRequest,
                ..
            }
        ),
        "got {:?}",
        frame.message
    );
}

#[test]
fn large_output_arrives_whole_within_window() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let data = pseudo_random_bytes(20 * 1024 * 1024, 7);
    let path = agent.dir.path().join("big");
    fs::write(&path, &data).unwrap();

    let id = client.next_id();
    let mut request = argv(&["cat", path.to_str().unwrap()]);
    let window = 256 * 1024;
    request.window = window;
    client.start_exec(id, request);

    let mut stdout = Vec::with_capacity(data.len());
    let mut granted = window;
    loop {
        let frame = client.recv();
        match frame.message {
            Message::Started { .. } => {}
            Message::Output {
                stream: OutputStream::Stdout,
                ..
            } => {
                stdout.extend_from_slice(&frame.data);
                assert!(stdout.len() as u64 <= granted, "agent sent past its window");
                assert!(
                    frame.data.len() <= 128 * 1024,
                    "chunk of {} bytes",
                    frame.data.len()
                );
                // Grant in batches, as a host reading in large blocks does.
                if granted - stdout.len() as u64 <= window / 2 {
                    client.send(Message::Credit {
                        id,
                        bytes: window / 2,
                    });
                    granted += window / 2;
                }
            }
            Message::Exited { exit_code, .. } => {
                assert_eq!(exit_code, 0);
                break;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(stdout.len(), data.len());
    assert!(stdout == data, "output differs from the file");
}

#[test]
fn spent_window_stalls_output() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let id = client.next_id();
    let mut request = argv(&["head", "-c", "1000000", "/dev/zero"]);
    request.window = 1000;
    client.start_exec(id, request);

    let received = read_output_for(&mut client, id, Duration::from_millis(500));
    assert_eq!(received, 1000, "exactly the window is sent, then nothing");

    client.send(Message::Signal {
        id,
        signal: libc::SIGKILL,
    });
    let start = Instant::now();
    match client.recv().message {
        Message::Exited {
            exit_code, signal, ..
        } => assert_eq!((exit_code, signal), (137, Some(9))),
        other => panic!("expected Exited and no output past the window, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "a killed exec ends without credit"
    );
}

#[test]
fn cgroup_catches_new_sessions() {
    let Some(cgroup) = TestCgroup::create() else {
        eprintln!("skipped: no writable cgroup v2 hierarchy on this host (needs root)");
        return;
    };
    let agent = Agent::start_with(&[OsStr::new("--cgroup-root"), cgroup.path.as_os_str()]);
    let mut client = agent.connect();

    let (first, second) = (unique_seconds(300, 3), unique_seconds(300, 4));
    let script = format!("setsid sleep {first} & sleep {second}");
    let mut request = argv(&["sh", "-c", &script]);
    request.timeout_ms = Some(500);
    let result = client.exec(request);

    assert!(result.timed_out);
    for args in [["sleep", first.as_str()], ["sleep", second.as_str()]] {
        assert_eq!(
            wait_until_gone(&args, Duration::from_secs(1)),
            Vec::<u32>::new(),
            "{args:?} survived"
        );
    }
}

/// Reads output frames for `id` for `period`, returning the byte count.
fn read_output_for(client: &mut Client, id: RequestId, period: Duration) -> usize {
    let start = Instant::now();
    let mut received = 0;
    while start.elapsed() < period {
        let Some(frame) = client.try_recv(Duration::from_millis(50)) else {
            continue;
        };
        match frame.message {
            Message::Started { .. } => {}
            Message::Output { id: frame_id, .. } if frame_id == id => received += frame.data.len(),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    received
}

/// Reads frames until `expected` has arrived on stdout of `id`.
fn wait_for_stdout(client: &mut Client, id: RequestId, expected: &str) {
    let mut stdout = Vec::new();
    while stdout != expected.as_bytes() {
        let frame = client.recv();
        match frame.message {
            Message::Started { .. } => {}
            Message::Output {
                id: frame_id,
                stream: OutputStream::Stdout,
            } if frame_id == id => {
                stdout.extend_from_slice(&frame.data);
                client.send(Message::Credit {
                    id,
                    bytes: frame.data.len() as u64,
                });
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// A cgroup v2 directory for one test, removed (with the agent's exec
/// groups inside) on drop.
struct TestCgroup {
    path: PathBuf,
    _scratch: TempDir,
}

impl TestCgroup {
    fn create() -> Option<Self> {
        let mount = cgroup2_mount()?;
        let path = mount.join(format!("smolvm-agent-test-{}", std::process::id()));
        fs::create_dir(&path).ok()?;
        Some(Self {
            path,
            _scratch: TempDir::new(),
        })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let start = Instant::now();
        while fs::remove_dir(&self.path).is_err() && start.elapsed() < Duration::from_secs(2) {
            for entry in fs::read_dir(&self.path).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    let _ = fs::remove_dir(entry.path());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Finds where the cgroup v2 hierarchy is mounted.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| Path::new(fields[1]).to_path_buf())
    })
}
