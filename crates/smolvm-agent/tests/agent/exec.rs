//! The exec contract: login versus raw commands, environment, working
//! directory, exit codes, output bytes, stdin and concurrency.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use smolvm_protocol::{FailureKind, Message};

use crate::harness::{Agent, argv, login};

/// Home directory of uid 0 as /etc/passwd lists it, which is what the
/// agent uses for HOME.
fn root_home() -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 7 && fields[2] == "0")
        .map_or("/".to_string(), |fields| fields[5].to_string())
}

#[test]
fn login_expands_home() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let result = client.exec(login("echo $HOME"));
    assert_eq!(
        result.exit_code,
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(result.stdout_text(), format!("{}\n", root_home()));
}

#[test]
fn raw_does_not_expand() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let result = client.exec(argv(&["echo", "$HOME"]));
    assert_eq!(result.stdout_text(), "$HOME\n");
}

#[test]
fn raw_keeps_words_intact() {
    let agent = Agent::start();
    let mut client = agent.connect();

    // The host splits `printf '%s\n' 'a b' c` into these words.
    let result = client.exec(argv(&["printf", "%s\\n", "a b", "c"]));
    assert_eq!(result.stdout_text(), "a b\nc\n");
}

#[test]
fn env_values_arrive_untouched() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let value = r#"it's "quoted" $(echo injected) `id` $HOME \n ; exit 1"#;

    let mut raw = argv(&["printenv", "SMOLVM_VALUE"]);
    raw.env = vec![("SMOLVM_VALUE".into(), value.into())];
    assert_eq!(client.exec(raw).stdout_text(), format!("{value}\n"));

    let mut shell = login(r#"printf '%s' "$SMOLVM_VALUE""#);
    shell.env = vec![("SMOLVM_VALUE".into(), value.into())];
    assert_eq!(client.exec(shell).stdout_text(), value);
}

#[test]
fn env_base_is_clean() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let result = client.exec(argv(&["printenv", "PATH", "LANG", "TERM"]));
    let expected =
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nC.UTF-8\nxterm-256color\n";
    assert_eq!(result.stdout_text(), expected);
}

#[test]
fn env_name_with_equals_rejected() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let mut request = argv(&["true"]);
    request.env = vec![("A=B".into(), "x".into())];
    let (kind, _) = client.exec(request).failure.expect("request should fail");
    assert_eq!(kind, FailureKind::InvalidRequest);
}

#[test]
fn cwd_is_applied() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let mut request = argv(&["pwd"]);
    request.cwd = Some(agent.dir.path().to_str().unwrap().to_string());
    let result = client.exec(request);
    assert_eq!(
        result.stdout_text(),
        format!("{}\n", agent.dir.path().display())
    );
}

#[test]
fn cwd_missing_fails_before_start() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let mut request = argv(&["pwd"]);
    request.cwd = Some("/x/smolvm-missing".into());
    let result = client.exec(request);
    assert_eq!(result.pid, None, "nothing may start");
    let (kind, message) = result.failure.expect("request should fail");
    assert_eq!(kind, FailureKind::NotFound);
    assert_eq!(
        message,
        "working directory /x/smolvm-missing does not exist"
    );
}

#[test]
fn exit_codes_follow_shell_rules() {
    let agent = Agent::start();
    let mut client = agent.connect();

    assert_eq!(client.exec(argv(&["true"])).exit_code, Some(0));
    assert_eq!(client.exec(login("exit 3")).exit_code, Some(3));

    let missing = client.exec(argv(&["smolvm-no-such-command"]));
    assert_eq!(missing.exit_code, Some(127));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(
        stderr,
        "smolvm: smolvm-no-such-command: command not found\n"
    );

    let killed = client.exec(login("kill -9 $$"));
    assert_eq!(killed.exit_code, Some(137));
    assert_eq!(killed.signal, Some(9));
    assert!(!killed.timed_out);
}

#[test]
fn non_executable_file_exits_126() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let script = agent.dir.path().join("not-executable");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();

    let result = client.exec(argv(&[script.to_str().unwrap()]));
    assert_eq!(result.exit_code, Some(126));
    assert!(String::from_utf8_lossy(&result.stderr).contains("Permission denied"));
}

#[test]
fn empty_argv_rejected() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let (kind, _) = client.exec(argv(&[])).failure.expect("request should fail");
    assert_eq!(kind, FailureKind::InvalidRequest);
}

#[test]
fn non_utf8_bytes_pass_through() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let result = client.exec(argv(&["printf", "\\377\\376\\000x\\200"]));
    assert_eq!(result.stdout, [0xff, 0xfe, 0x00, b'x', 0x80]);
}

#[test]
fn stderr_kept_separate() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let result = client.exec(login("echo out; echo err >&2"));
    assert_eq!(result.stdout_text(), "out\n");
    assert_eq!(String::from_utf8_lossy(&result.stderr), "err\n");
}

#[test]
fn stdin_reaches_command() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let id = client.next_id();
    let mut request = argv(&["cat"]);
    request.stdin = true;

    client.start_exec(id, request);
    client.send_data(Message::Stdin { id }, b"hello ".to_vec());
    client.send_data(Message::Stdin { id }, b"world".to_vec());
    client.send(Message::Stdin { id });
    let result = client.collect(&[id]).remove(&id).unwrap();

    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.stdout_text(), "hello world");
}

#[test]
fn background_child_does_not_hold_exec() {
    let agent = Agent::start();
    let mut client = agent.connect();

    let seconds = crate::harness::unique_seconds(30, 1);
    let script = format!("sleep {seconds} & echo started");
    let result = client.exec(argv(&["sh", "-c", &script]));
    assert_eq!(result.stdout_text(), "started\n");
    assert_eq!(result.exit_code, Some(0));
    // Far below the 30 s sleep, with room for a loaded machine.
    assert!(
        result.elapsed < Duration::from_secs(5),
        "took {:?}",
        result.elapsed
    );

    let sleepers = crate::harness::wait_until_running(&["sleep", &seconds], Duration::from_secs(2));
    assert_eq!(sleepers.len(), 1, "the background sleep keeps running");
    for pid in sleepers {
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status();
    }
}

#[test]
fn two_execs_run_at_once() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let slow = client.next_id();
    let fast = client.next_id();

    client.start_exec(slow, argv(&["sh", "-c", "sleep 2; echo slow"]));
    client.start_exec(fast, argv(&["sh", "-c", "echo fast"]));
    let results = client.collect(&[slow, fast]);

    assert_eq!(results[&slow].stdout_text(), "slow\n");
    assert_eq!(results[&fast].stdout_text(), "fast\n");
    assert!(
        results[&fast].elapsed < results[&slow].elapsed,
        "the fast exec finished first"
    );
    assert!(
        results[&slow].elapsed < Duration::from_secs(6),
        "took {:?}",
        results[&slow].elapsed
    );
}

#[test]
fn duplicate_request_id_rejected() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let id = client.next_id();

    client.start_exec(id, argv(&["sleep", "1"]));
    client.start_exec(id, argv(&["true"]));
    let frame = client.recv();
    let frame = match frame.message {
        Message::Started { .. } => client.recv(),
        _ => frame,
    };
    assert!(
        matches!(
            frame.message,
            Message::Failed {
                kind: FailureKind::InvalidRequest,
                ..
            }
        ),
        "got {:?}",
        frame.message
    );
}

#[test]
fn flooding_background_child_bounded() {
    let agent = Agent::start();
    let mut client = agent.connect();

    // `yes` keeps the pipes busy after the shell exits; the drain window
    // still ends the exec, and closing the pipe stops `yes` with SIGPIPE.
    let marker = format!("smolvm-flood-{}", std::process::id());
    let result = client.exec(login(&format!("yes {marker} & sleep 0.2")));
    assert_eq!(result.exit_code, Some(0));
    assert!(
        result.elapsed < Duration::from_secs(3),
        "took {:?}",
        result.elapsed
    );
    assert!(!result.stdout.is_empty());

    let left = crate::harness::wait_until_gone(&["yes", &marker], Duration::from_secs(2));
    assert!(left.is_empty(), "yes still running: {left:?}");
}
