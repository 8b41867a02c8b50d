//! End-to-end exec semantics on one real sandbox.

mod common;

use std::time::{Duration, Instant};

use common::{Sandbox, skip, stderr, stdout};

#[test]
fn exec_contract_on_real_sandbox() {
    if skip("exec_contract_on_real_sandbox") {
        return;
    }
    let sandbox = Sandbox::create(&["--network", "off"]);

    login_expands_raw_does_not(&sandbox);
    env_reaches_program_untouched(&sandbox);
    cwd_applies(&sandbox);
    exit_codes_pass_through(&sandbox);
    non_utf8_output_replaced_in_json(&sandbox);
    large_stdout_arrives_whole(&sandbox);
    timeout_kills_every_descendant(&sandbox);
    background_child_does_not_block(&sandbox);
    two_execs_run_at_once(&sandbox);
    debian_userland_present(&sandbox);
}

fn login_expands_raw_does_not(sandbox: &Sandbox) {
    assert_eq!(sandbox.sh("echo $HOME"), "/root\n");

    let raw = sandbox.exec(&["--shell", "raw"], &["echo", "$HOME"]);
    assert!(raw.status.success(), "{}", stderr(&raw));
    assert_eq!(stdout(&raw), "$HOME\n");

    let words = sandbox.exec(&["--shell", "raw"], &["printf", "%s\\n", "a b", "c"]);
    assert_eq!(stdout(&words), "a b\nc\n");
}

fn env_reaches_program_untouched(sandbox: &Sandbox) {
    let value = r#"it's "quoted" $(touch /tmp/pwned) `id` $HOME"#;
    let env = format!("SMOLVM_TEST={value}");
    let output = sandbox.exec(
        &["--shell", "raw", "--env", &env],
        &["printenv", "SMOLVM_TEST"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{value}\n"));

    let login = sandbox.exec(&["--env", &env], &["printenv SMOLVM_TEST"]);
    assert_eq!(stdout(&login), format!("{value}\n"));
    assert_eq!(
        sandbox.sh("test -e /tmp/pwned && echo yes || echo no"),
        "no\n"
    );
}

fn cwd_applies(sandbox: &Sandbox) {
    let output = sandbox.exec(&["--cwd", "/usr/share"], &["pwd"]);
    assert_eq!(stdout(&output), "/usr/share\n");

    let missing = sandbox.exec(&["--cwd", "/does/not/exist"], &["pwd"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("/does/not/exist"),
        "{}",
        stderr(&missing)
    );
}

fn exit_codes_pass_through(sandbox: &Sandbox) {
    let cases: [(&str, i32); 4] = [
        ("true", 0),
        ("exit 3", 3),
        ("no-such-command-xyz", 127),
        ("kill -9 $$", 137),
    ];
    for (command, expected) in cases {
        let output = sandbox.exec(&[], &[command]);
        assert_eq!(
            output.status.code(),
            Some(expected),
            "{command}: {}",
            stderr(&output)
        );
    }

    let raw_missing = sandbox.exec(&["--shell", "raw"], &["no-such-program-xyz"]);
    assert_eq!(raw_missing.status.code(), Some(127));
}

fn non_utf8_output_replaced_in_json(sandbox: &Sandbox) {
    let raw = sandbox.exec(&[], &[r"printf 'a\377b'"]);
    assert_eq!(
        raw.stdout, b"a\xffb",
        "the streaming CLI passes bytes through"
    );

    let json = sandbox.exec(&["--json"], &[r"printf 'a\377b'"]);
    let result: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(result["stdout"], "a\u{FFFD}b");
    assert_eq!(result["exit_code"], 0);
}

fn large_stdout_arrives_whole(sandbox: &Sandbox) {
    const SIZE: usize = 20 * 1024 * 1024;
    let command = format!("head -c {SIZE} /dev/zero | tr '\\0' x");

    let streamed = sandbox.exec(&["--timeout", "120"], &[&command]);
    assert!(streamed.status.success(), "{}", stderr(&streamed));
    assert_eq!(streamed.stdout.len(), SIZE);
    assert!(streamed.stdout.iter().all(|&b| b == b'x'));

    let json = sandbox.exec(&["--json", "--timeout", "120"], &[&command]);
    let result: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(result["stdout"].as_str().unwrap().len(), SIZE);
    assert_eq!(result["stdout_truncated"], false);

    assert_eq!(sandbox.sh("echo still-works"), "still-works\n");
}

fn timeout_kills_every_descendant(sandbox: &Sandbox) {
    let started = Instant::now();
    let output = sandbox.exec(&["--timeout", "2"], &["echo before; sleep 300 & sleep 300"]);
    let elapsed = started.elapsed();

    assert_eq!(output.status.code(), Some(124), "{}", stderr(&output));
    assert_eq!(stdout(&output), "before\n", "partial output kept");
    // The contract: the call returns within timeout + 2 s. CLI start-up
    // and the host round trip are included, so allow a little more.
    assert!(elapsed < Duration::from_secs(6), "timeout took {elapsed:?}");

    let leftover = sandbox.exec(&[], &["pgrep -x sleep"]);
    assert_eq!(
        leftover.status.code(),
        Some(1),
        "sleep survived: {}",
        stdout(&leftover)
    );
}

fn background_child_does_not_block(sandbox: &Sandbox) {
    let started = Instant::now();
    let output = sandbox.exec(&["--timeout", "20"], &["sleep 300 & echo started"]);
    assert_eq!(stdout(&output), "started\n");
    assert!(output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    sandbox.sh("pkill -x sleep; true");
}

fn two_execs_run_at_once(sandbox: &Sandbox) {
    // The first exec waits for a file only the second creates: run one
    // after the other, the first would time out.
    sandbox.sh("rm -f /tmp/go");
    let waiter = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            sandbox.exec(
                &["--timeout", "30"],
                &["while [ ! -e /tmp/go ]; do sleep 0.05; done; echo released"],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        sandbox.sh("touch /tmp/go");
        waiter.join().unwrap()
    });
    assert_eq!(stdout(&waiter), "released\n", "{}", stderr(&waiter));
}

fn debian_userland_present(sandbox: &Sandbox) {
    let uname = sandbox.sh("uname -a");
    assert!(uname.contains("Linux"), "{uname}");
    let python = sandbox.sh("python3 --version");
    assert!(python.starts_with("Python 3.11"), "{python}");
    let release = sandbox.sh("cat /etc/debian_version");
    assert!(release.starts_with("12"), "{release}");
}
