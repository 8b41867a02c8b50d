//! The OpenAPI document: pinned by a snapshot, valid OpenAPI 3.1, with the
//! seed operation ids and every error response documented.
//!
//! After an intended API change, rewrite the snapshot with
//! `SMOLVM_UPDATE_SNAPSHOTS=1 cargo test -p smolvm-server --test openapi`
//! and review the diff.

use std::path::PathBuf;

use serde_json::Value;

fn snapshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/openapi.json")
}

fn document() -> Value {
    serde_json::from_str(&smolvm_server::openapi_json()).unwrap()
}

/// Every (path, method, operation) in the document.
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            found.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    found
}

#[test]
fn openapi_matches_snapshot() {
    let actual = smolvm_server::openapi_json();
    let path = snapshot_path();
    if std::env::var_os("SMOLVM_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "the OpenAPI document differs from {}; if the change is intended, rerun with \
         SMOLVM_UPDATE_SNAPSHOTS=1 and review the diff",
        path.display()
    );
}

#[test]
fn openapi_parses_as_3_1() {
    let text = smolvm_server::openapi_json();
    let spec = oas3::from_json(&text).expect("the document parses as OpenAPI 3.1");
    assert!(
        spec.openapi.starts_with("3.1."),
        "openapi version {}",
        spec.openapi
    );
    assert_eq!(spec.info.title, "smolvm");
    assert!(spec.operations().count() >= 15);
}

#[test]
fn seed_operation_ids_present() {
    let expected = [
        ("/sandboxes", "post", "createSandbox"),
        ("/sandboxes", "get", "listSandboxes"),
        ("/sandboxes/{id}", "get", "getSandbox"),
        ("/sandboxes/{id}/exec", "post", "execCommand"),
        ("/sandboxes/{id}", "delete", "deleteSandbox"),
    ];
    let document = document();
    for (path, method, id) in expected {
        let operation = &document["paths"][path][method];
        assert_eq!(operation["operationId"], id, "{method} {path}");
    }
}

#[test]
fn operation_ids_unique() {
    let mut ids: Vec<String> = operations(&document())
        .iter()
        .map(|(_, _, op)| {
            op["operationId"]
                .as_str()
                .expect("every operation has an id")
                .to_owned()
        })
        .collect();
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operation ids: {ids:?}");
}

#[test]
fn error_responses_documented() {
    for (path, method, operation) in operations(&document()) {
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.contains_key("403"),
            "{method} {path} lacks 403 (Host/Origin check)"
        );
        if path != "/healthz" {
            assert!(
                responses.contains_key("401"),
                "{method} {path} lacks 401 (token)"
            );
        }
        if path.contains("{id}") {
            assert!(responses.contains_key("404"), "{method} {path} lacks 404");
            assert!(responses.contains_key("500"), "{method} {path} lacks 500");
        }
        let takes_json = operation["requestBody"]["content"]
            .get("application/json")
            .is_some();
        if takes_json {
            for status in ["413", "415", "422"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lacks {status}"
                );
            }
        }
        for (status, response) in responses {
            if !status.starts_with('4') && !status.starts_with('5') {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            let reference = schema.as_str().unwrap_or_default();
            assert!(
                reference.ends_with("/ErrorBody") || reference.ends_with("/CommandTimeoutBody"),
                "{method} {path} {status} has no error body schema: {response}"
            );
        }
    }
}

#[test]
fn exec_timeout_documented() {
    let document = document();
    let response = &document["paths"]["/sandboxes/{id}/exec"]["post"]["responses"]["408"];
    assert!(
        response["headers"]
            .get("X-SmolVM-Sandbox-Deleted")
            .is_some(),
        "{response}"
    );
}

#[test]
fn seed_field_names_documented() {
    let document = document();
    let schemas = &document["components"]["schemas"];
    let create = schemas["CreateSandboxRequest"]["properties"]
        .as_object()
        .unwrap();
    for field in [
        "os",
        "image",
        "memory",
        "disk_size",
        "backend",
        "cpus",
        "network",
        "accel",
    ] {
        assert!(create.contains_key(field), "create request lacks {field}");
    }
    let exec = schemas["ExecRequest"]["properties"].as_object().unwrap();
    for field in ["command", "timeout", "shell", "cwd", "env"] {
        assert!(exec.contains_key(field), "exec request lacks {field}");
    }
    assert_eq!(
        schemas["ExecRequest"]["required"],
        serde_json::json!(["command"])
    );
    let output = schemas["ExecResponse"]["properties"].as_object().unwrap();
    for field in [
        "exit_code",
        "stdout",
        "stderr",
        "duration_ms",
        "stdout_truncated",
        "stderr_truncated",
    ] {
        assert!(output.contains_key(field), "exec response lacks {field}");
    }
    let sandbox = schemas["Sandbox"]["properties"].as_object().unwrap();
    for field in [
        "id",
        "status",
        "os",
        "image",
        "memory",
        "disk_size",
        "cpus",
        "backend",
        "accel",
        "created_at",
    ] {
        assert!(sandbox.contains_key(field), "sandbox lacks {field}");
    }
}
