//! Router tests: in-process requests through `tower::ServiceExt::oneshot`
//! against a real engine on an empty data directory, so no sandbox and no
//! VM is involved.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use smolvm_engine::Paths;
use smolvm_engine::sandbox::Engine;
use smolvm_server::{AppState, ServerConfig, router};
use tower::ServiceExt;

/// An id that is well formed but belongs to no sandbox.
const UNKNOWN_ID: &str = "sbx-2345678923";

struct TestApp {
    router: Router,
    _data_dir: tempfile::TempDir,
}

fn app_with(config: ServerConfig) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Paths::new(data_dir.path()), "/nonexistent/smolvm".into()).unwrap();
    let state = AppState::new(engine, config).unwrap();
    TestApp {
        router: router(state),
        _data_dir: data_dir,
    }
}

fn app() -> TestApp {
    app_with(ServerConfig::default())
}

fn request(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "127.0.0.1:8000")
}

fn json_request(method: &str, uri: &str, body: &str) -> Request<Body> {
    request(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn empty(method: &str, uri: &str) -> Request<Body> {
    request(method, uri).body(Body::empty()).unwrap()
}

impl TestApp {
    async fn send(&self, request: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(request).await.unwrap()
    }
}

async fn body_json(response: Response<Body>) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

async fn body_text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Checks that `response` is an error with `status` and `code`, in both
/// the body and the header, and returns the body.
async fn expect_error(response: Response<Body>, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["x-smolvm-error-code"], code);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body = body_json(response).await;
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test]
async fn list_empty_host() {
    let response = app().send(empty("GET", "/sandboxes")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await, serde_json::json!([]));
}

#[tokio::test]
async fn get_unknown_sandbox_is_404() {
    let app = app();
    for id in [UNKNOWN_ID, "not-an-id"] {
        let response = app.send(empty("GET", &format!("/sandboxes/{id}"))).await;
        let body = expect_error(response, StatusCode::NOT_FOUND, "sandbox_not_found").await;
        assert!(body["detail"].as_str().unwrap().contains(id), "{body}");
    }
}

#[tokio::test]
async fn delete_unknown_sandbox_is_404() {
    let response = app()
        .send(empty("DELETE", &format!("/sandboxes/{UNKNOWN_ID}")))
        .await;
    expect_error(response, StatusCode::NOT_FOUND, "sandbox_not_found").await;
}

#[tokio::test]
async fn stop_and_start_unknown_sandbox_are_404() {
    let app = app();
    for action in ["stop", "start"] {
        let response = app
            .send(empty("POST", &format!("/sandboxes/{UNKNOWN_ID}/{action}")))
            .await;
        expect_error(response, StatusCode::NOT_FOUND, "sandbox_not_found").await;
    }
}

#[tokio::test]
async fn exec_unknown_sandbox_is_404() {
    let app = app();
    for path in ["exec", "exec/stream"] {
        let uri = format!("/sandboxes/{UNKNOWN_ID}/{path}");
        let response = app
            .send(json_request("POST", &uri, r#"{"command": "true"}"#))
            .await;
        expect_error(response, StatusCode::NOT_FOUND, "sandbox_not_found").await;
    }
}

#[tokio::test]
async fn exec_invalid_env_names_field() {
    let uri = format!("/sandboxes/{UNKNOWN_ID}/exec");
    let body = r#"{"command": "env", "env": {"1BAD": "x"}}"#;
    let response = app().send(json_request("POST", &uri, body)).await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "env.1BAD", "{body}");
}

#[tokio::test]
async fn exec_timeout_out_of_range_names_field() {
    let uri = format!("/sandboxes/{UNKNOWN_ID}/exec");
    let response = app()
        .send(json_request(
            "POST",
            &uri,
            r#"{"command": "true", "timeout": 0}"#,
        ))
        .await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "timeout", "{body}");
}

#[tokio::test]
async fn create_text_plain_is_415() {
    let request = request("POST", "/sandboxes")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    expect_error(
        app().send(request).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn create_form_post_is_415() {
    let request = request("POST", "/sandboxes")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("memory=256"))
        .unwrap();
    expect_error(
        app().send(request).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn exec_without_content_type_is_415() {
    let request = request("POST", &format!("/sandboxes/{UNKNOWN_ID}/exec"))
        .body(Body::from(r#"{"command": "true"}"#))
        .unwrap();
    expect_error(
        app().send(request).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn create_malformed_json_is_422() {
    let response = app()
        .send(json_request("POST", "/sandboxes", "{\"memory\": 256,"))
        .await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "body", "{body}");
}

#[tokio::test]
async fn create_unknown_field_named() {
    let response = app()
        .send(json_request("POST", "/sandboxes", r#"{"memroy": 256}"#))
        .await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("memroy"),
        "{body}"
    );
}

#[tokio::test]
async fn create_wrong_type_names_field() {
    let response = app()
        .send(json_request(
            "POST",
            "/sandboxes",
            r#"{"disk_size": "big"}"#,
        ))
        .await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "disk_size", "{body}");
}

#[tokio::test]
async fn create_memory_out_of_range_quotes_limit() {
    let response = app()
        .send(json_request("POST", "/sandboxes", r#"{"memory": 1}"#))
        .await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "memory", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("128–16384"),
        "{body}"
    );
}

#[tokio::test]
async fn create_bad_network_mode_names_field() {
    let body = r#"{"network": {"mode": "closed"}}"#;
    let response = app().send(json_request("POST", "/sandboxes", body)).await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "network.mode", "{body}");
}

#[tokio::test]
async fn create_file_image_rejected_without_root() {
    let body = r#"{"image": "file:///etc/passwd"}"#;
    let response = app().send(json_request("POST", "/sandboxes", body)).await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "image", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("--image-root"),
        "{body}"
    );
}

#[tokio::test]
async fn create_file_image_outside_root_rejected() {
    let root = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        image_roots: vec![root.path().to_path_buf()],
        ..ServerConfig::default()
    };
    // A `..` that leaves the root is resolved before the check.
    let escape = format!(
        r#"{{"image": "file://{}/../../etc/passwd"}}"#,
        root.path().display()
    );
    let response = app_with(config)
        .send(json_request("POST", "/sandboxes", &escape))
        .await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "image", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("outside"),
        "{body}"
    );
}

#[tokio::test]
async fn oversized_json_body_is_413() {
    let padding = "x".repeat(2 * 1024 * 1024);
    let body = format!(r#"{{"command": "{padding}"}}"#);
    let uri = format!("/sandboxes/{UNKNOWN_ID}/exec");
    let response = app().send(json_request("POST", &uri, &body)).await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
}

#[tokio::test]
async fn foreign_host_rejected() {
    let app = app();
    for host in ["evil.example", "evil.example:8000", "192.0.2.1:8000"] {
        let request = Request::builder()
            .uri("/sandboxes")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        let body = expect_error(
            app.send(request).await,
            StatusCode::FORBIDDEN,
            "host_not_allowed",
        )
        .await;
        assert!(body["detail"].as_str().unwrap().contains(host), "{body}");
    }
}

#[tokio::test]
async fn loopback_hosts_accepted() {
    let app = app();
    for host in ["localhost:8000", "127.0.0.1", "[::1]:8000"] {
        let request = Request::builder()
            .uri("/sandboxes")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.send(request).await.status(), StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn cross_origin_post_rejected() {
    let request = request("POST", &format!("/sandboxes/{UNKNOWN_ID}/stop"))
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .unwrap();
    expect_error(
        app().send(request).await,
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn same_origin_request_accepted() {
    let request = request("GET", "/sandboxes")
        .header(header::ORIGIN, "http://127.0.0.1:8000")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app().send(request).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn no_cors_headers_by_default() {
    let app = app();
    let preflight = request("OPTIONS", "/sandboxes")
        .header(header::ORIGIN, "http://127.0.0.1:8000")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Body::empty())
        .unwrap();
    let response = app.send(preflight).await;
    assert!(
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );

    let response = app.send(empty("GET", "/sandboxes")).await;
    assert!(
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

#[tokio::test]
async fn configured_cors_origin_allowed() {
    let origin = "http://localhost:5173";
    let app = app_with(ServerConfig {
        cors_origin: Some(origin.into()),
        ..ServerConfig::default()
    });
    let preflight = request("OPTIONS", "/sandboxes")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Body::empty())
        .unwrap();
    let response = app.send(preflight).await;
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        origin
    );

    let get = request("GET", "/sandboxes")
        .header(header::ORIGIN, origin)
        .body(Body::empty())
        .unwrap();
    let response = app.send(get).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        origin
    );

    let other = request("GET", "/sandboxes")
        .header(header::ORIGIN, "http://localhost:9999")
        .body(Body::empty())
        .unwrap();
    expect_error(
        app.send(other).await,
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
    )
    .await;
}

fn token_app() -> TestApp {
    app_with(ServerConfig {
        token: Some("s3cret-token".into()),
        ..ServerConfig::default()
    })
}

#[tokio::test]
async fn token_missing_is_401() {
    let response = token_app().send(empty("GET", "/sandboxes")).await;
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn token_wrong_is_401() {
    let app = token_app();
    for value in [
        "Bearer wrong",
        "Bearer s3cret-token-and-more",
        "Bearer s3cret",
        "s3cret-token",
        "Basic s3cret-token",
    ] {
        let request = request("GET", "/sandboxes")
            .header(header::AUTHORIZATION, value)
            .body(Body::empty())
            .unwrap();
        expect_error(
            app.send(request).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
}

#[tokio::test]
async fn token_checked_before_body() {
    let request = request("POST", "/sandboxes")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("x"))
        .unwrap();
    expect_error(
        token_app().send(request).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn token_right_is_accepted() {
    let request = request("GET", "/sandboxes")
        .header(header::AUTHORIZATION, "Bearer s3cret-token")
        .body(Body::empty())
        .unwrap();
    assert_eq!(token_app().send(request).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn public_paths_need_no_token() {
    let app = token_app();
    for uri in ["/healthz", "/openapi.json", "/docs"] {
        assert_eq!(
            app.send(empty("GET", uri)).await.status(),
            StatusCode::OK,
            "{uri}"
        );
    }
    let response = app.send(empty("GET", "/sdk/v1/capabilities")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_route_is_json_404() {
    let response = app().send(empty("GET", "/nope")).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn wrong_method_is_json_405() {
    let response = app().send(empty("PATCH", "/sandboxes")).await;
    expect_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn responses_carry_request_id() {
    let app = app();
    let response = app.send(empty("GET", "/healthz")).await;
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("req-"), "{id}");

    let request = request("GET", "/healthz")
        .header("x-request-id", "client-7")
        .body(Body::empty())
        .unwrap();
    let response = app.send(request).await;
    assert_eq!(response.headers()["x-request-id"], "client-7");
}

#[tokio::test]
async fn healthz_reports_ok() {
    let response = app().send(empty("GET", "/healthz")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_json(response).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn capabilities_list_limits() {
    let config = ServerConfig {
        max_file_bytes: 4096,
        ..ServerConfig::default()
    };
    let response = app_with(config)
        .send(empty("GET", "/sdk/v1/capabilities"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_json(response).await;
    assert_eq!(body["limits"]["memory"]["min"], 128, "{body}");
    assert_eq!(body["limits"]["file_bytes"], 4096, "{body}");
    assert_eq!(
        body["shell_modes"],
        serde_json::json!(["login", "raw"]),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_list_states() {
    let response = app().send(empty("GET", "/metrics")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = body_text(response).await;
    assert!(
        text.contains("smolvm_sandboxes{state=\"running\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE smolvm_exec_duration_seconds histogram"),
        "{text}"
    );
}

#[tokio::test]
async fn openapi_served_as_printed() {
    let response = app().send(empty("GET", "/openapi.json")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, smolvm_server::openapi_json());
}

#[tokio::test]
async fn docs_page_served() {
    let response = app().send(empty("GET", "/docs")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = body_text(response).await;
    assert!(
        html.contains("/openapi.json"),
        "the page must load the local document"
    );
    assert!(
        !html.contains("https://"),
        "the page must not load anything from the internet"
    );
}

#[tokio::test]
async fn events_stream_opens() {
    let response = app().send(empty("GET", "/sdk/v1/events")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
}

#[tokio::test]
async fn read_file_requires_path() {
    let response = app()
        .send(empty("GET", &format!("/sandboxes/{UNKNOWN_ID}/files")))
        .await;
    let body = expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "path", "{body}");
}

#[tokio::test]
async fn read_file_relative_path_is_422() {
    let uri = format!("/sandboxes/{UNKNOWN_ID}/files?path=etc/passwd");
    let body = expect_error(
        app().send(empty("GET", &uri)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "path", "{body}");
}

#[tokio::test]
async fn read_file_unknown_sandbox_is_404() {
    let uri = format!("/sandboxes/{UNKNOWN_ID}/files?path=/etc/passwd");
    expect_error(
        app().send(empty("GET", &uri)).await,
        StatusCode::NOT_FOUND,
        "sandbox_not_found",
    )
    .await;
}

#[tokio::test]
async fn write_file_over_limit_is_413() {
    let app = app_with(ServerConfig {
        max_file_bytes: 10,
        ..ServerConfig::default()
    });
    let request = request("PUT", &format!("/sandboxes/{UNKNOWN_ID}/files?path=/tmp/x"))
        .header(header::CONTENT_LENGTH, "11")
        .body(Body::from("01234567890"))
        .unwrap();
    let body = expect_error(
        app.send(request).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("10 bytes"),
        "{body}"
    );
}

#[tokio::test]
async fn write_file_bad_mode_is_422() {
    let request = request(
        "PUT",
        &format!("/sandboxes/{UNKNOWN_ID}/files?path=/tmp/x&mode=999"),
    )
    .body(Body::from("x"))
    .unwrap();
    let body = expect_error(
        app().send(request).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_eq!(body["field"], "mode", "{body}");
}

#[tokio::test]
async fn write_file_unknown_query_field_is_422() {
    let request = request(
        "PUT",
        &format!("/sandboxes/{UNKNOWN_ID}/files?path=/tmp/x&owner=root"),
    )
    .body(Body::from("x"))
    .unwrap();
    let body = expect_error(
        app().send(request).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("owner"), "{body}");
}

#[tokio::test]
async fn write_file_unknown_sandbox_is_404() {
    let request = request("PUT", &format!("/sandboxes/{UNKNOWN_ID}/files?path=/tmp/x"))
        .body(Body::from("x"))
        .unwrap();
    expect_error(
        app().send(request).await,
        StatusCode::NOT_FOUND,
        "sandbox_not_found",
    )
    .await;
}
