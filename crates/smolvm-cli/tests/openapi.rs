//! `smolvm openapi` prints the document the server serves.

mod common;

use common::run;

#[test]
fn openapi_command_matches_server_document() {
    let output = run(&["openapi"]);
    assert!(output.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let served: serde_json::Value = serde_json::from_str(&smolvm_server::openapi_json()).unwrap();
    assert_eq!(printed, served);
    assert_eq!(printed["openapi"], "3.1.0");
}
