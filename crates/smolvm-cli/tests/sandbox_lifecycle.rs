//! End-to-end lifecycle: files, stop/start, delete cleanup, a VMM killed
//! from outside, validation before anything is created.

mod common;

use std::time::{Duration, Instant};

use common::{Sandbox, pids_mentioning, run, run_in, skip, stderr, stdout};

#[test]
fn file_round_trip_and_stop_start() {
    if skip("file_round_trip_and_stop_start") {
        return;
    }
    let sandbox = Sandbox::create(&["--network", "off"]);
    let dir = tempfile::tempdir().unwrap();

    // Every byte value, pseudo-randomly spread over 3 MiB.
    let mut state = 0x2545_f491_u32;
    let bytes: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let source = dir.path().join("in.bin");
    std::fs::write(&source, &bytes).unwrap();

    let target = format!("{}:/root/data/in.bin", sandbox.id);
    let copy_in = run(&["sandbox", "cp", "-p", source.to_str().unwrap(), &target]);
    assert!(copy_in.status.success(), "{}", stderr(&copy_in));
    let sum = sandbox.sh("sha256sum /root/data/in.bin | cut -d' ' -f1");
    assert_eq!(sum.trim().len(), 64);

    let back = dir.path().join("out.bin");
    let copy_out = run(&["sandbox", "cp", &target, back.to_str().unwrap()]);
    assert!(copy_out.status.success(), "{}", stderr(&copy_out));
    assert!(
        std::fs::read(&back).unwrap() == bytes,
        "bytes differ after the round trip"
    );

    let missing = run(&["sandbox", "cp", &format!("{}:/nope", sandbox.id), "/tmp/x"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/nope"), "{}", stderr(&missing));

    let stop = run(&["sandbox", "stop", &sandbox.id]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_eq!(sandbox.info()["status"], "stopped");
    let refused = sandbox.exec(&[], &["true"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("stopped"), "{}", stderr(&refused));

    let start = run(&["sandbox", "start", &sandbox.id]);
    assert!(start.status.success(), "{}", stderr(&start));
    assert_eq!(sandbox.info()["status"], "running");
    let kept = sandbox.sh("sha256sum /root/data/in.bin | cut -d' ' -f1");
    assert_eq!(kept, sum, "the disk survives stop and start");
}

#[test]
fn delete_leaves_nothing_behind() {
    if skip("delete_leaves_nothing_behind") {
        return;
    }
    let sandbox = Sandbox::create(&[]);
    let id = sandbox.id.clone();
    assert!(
        !pids_mentioning(&id).is_empty(),
        "supervisor and VMM should be running"
    );
    assert!(sandbox.dir().join("disk.qcow2").exists());

    let delete = run(&["sandbox", "delete", &id]);
    assert!(delete.status.success(), "{}", stderr(&delete));

    assert_eq!(
        pids_mentioning(&id),
        Vec::<u32>::new(),
        "processes left behind"
    );
    assert!(!sandbox.dir().exists(), "directory left behind");
    let info = run(&["sandbox", "info", &id]);
    assert!(!info.status.success());
    assert!(stderr(&info).contains("not found"), "{}", stderr(&info));

    let again = run(&["sandbox", "delete", &id]);
    assert!(!again.status.success(), "deleting twice must fail");
    std::mem::forget(sandbox);
}

#[test]
fn killed_vmm_reported_not_running() {
    if skip("killed_vmm_reported_not_running") {
        return;
    }
    let sandbox = Sandbox::create(&["--network", "off"]);
    let qemu: Vec<u32> = pids_mentioning(&sandbox.id)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .starts_with("qemu")
        })
        .collect();
    assert_eq!(qemu.len(), 1, "expected one QEMU for the sandbox");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(qemu[0] as i32, libc::SIGKILL) };

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = sandbox.info()["status"].as_str().unwrap().to_owned();
        if status != "running" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, "error");
    let list = run(&["sandbox", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == sandbox.id.as_str())
        .unwrap();
    assert_eq!(entry["status"], "error");
    assert!(
        entry["error"].as_str().unwrap().contains("exited"),
        "{entry}"
    );
    assert!(
        !sandbox.dir().join("ctl.sock").exists(),
        "control socket left behind"
    );
}

#[test]
fn invalid_create_rejected_before_anything_exists() {
    // A data directory of its own: other tests create sandboxes meanwhile.
    let data = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--memory", "64"], "memory"),
        (&["--disk-size", "100"], "disk_size"),
        (&["--cpus", "100000"], "cpus"),
        (&["--image", "s3://bucket/key"], "S3"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["sandbox", "create"];
        full.extend_from_slice(args);
        let output = run_in(data.path(), &full);
        assert!(!output.status.success(), "{args:?} accepted");
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let sandboxes = data.path().join("sandboxes");
    let leftovers = std::fs::read_dir(&sandboxes)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "a rejected create left a directory");
    let list = run_in(data.path(), &["sandbox", "list", "--json"]);
    assert_eq!(stdout(&list).trim(), "[]");
}
