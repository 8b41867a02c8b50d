//! `smolvm doctor` reports the accel choice with its reason.

mod common;

use common::run;

#[test]
fn doctor_reports_accel_with_reason() {
    let output = run(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let accel = report["accel"]["accel"].as_str().unwrap();
    assert!(accel == "tcg" || accel == "kvm", "{accel}");
    let reason = report["accel"]["reason"].as_str().unwrap();
    assert!(!reason.is_empty());
    if !std::path::Path::new("/dev/kvm").exists() {
        assert_eq!(accel, "tcg");
        assert!(reason.contains("/dev/kvm"), "{reason}");
    }
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"qemu"), "{names:?}");
}
