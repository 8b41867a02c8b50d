//! Request extractors that report bad input in the API's error format.
//!
//! [`ApiJson`] accepts only `application/json` bodies and rejects others
//! with 415, so a cross-site form post cannot reach a JSON endpoint. It
//! reads at most the router's body limit (413 past it), and turns a
//! malformed body or a bad field into a 422 that names the field. [`ApiQuery`] does the same for
//! query strings.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// A JSON request body, deserialized strictly.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the request body must be JSON with the header `content-type: application/json`",
            ));
        }

        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_error)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserializes `bytes` as `T`, naming the field at fault on failure.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde reads a JSON array into a struct field by field; every request
    // body here is an object with named fields.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::invalid(
            "body",
            "the body must be a JSON object, such as {\"command\": \"echo hello\"}",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(json_error)?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid("body", format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// Returns whether the content type is `application/json` or `application/*+json`,
/// with any parameters such as `charset`.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

fn json_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();

    // Syntax and end-of-input errors concern the body as a whole; data
    // errors concern one field.
    if inner.is_syntax() || inner.is_eof() || path == "." {
        return ApiError::invalid("body", format!("invalid JSON body: {inner}"));
    }
    ApiError::invalid(
        path.clone(),
        format!("invalid field `{path}`: {}", strip_position(&inner)),
    )
}

/// Returns serde_json's message without its " at line L column C" suffix,
/// which adds nothing once the field is named.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            ErrorCode::BodyTooLarge,
            format!(
                "the request body is larger than the limit of {} bytes",
                crate::security::JSON_BODY_LIMIT_BYTES
            ),
        );
    }
    ApiError::invalid(
        "body",
        format!("failed to read the request body: {}", rejection.body_text()),
    )
}

/// A query string, deserialized strictly.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_error(rejection)),
        }
    }
}

fn query_error(rejection: QueryRejection) -> ApiError {
    // axum's text is "Failed to deserialize query string: missing field `path`".
    let text = rejection.body_text();
    let reason = text
        .split_once(": ")
        .map(|(_, reason)| reason)
        .unwrap_or(&text);
    let field = reason
        .split('`')
        .nth(1)
        .filter(|_| reason.contains("field"))
        .unwrap_or("query")
        .to_owned();
    ApiError::invalid(field, format!("invalid query string: {reason}"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only deserialized")]
    struct Sample {
        memory: Option<u32>,
        network: Option<Network>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only deserialized")]
    struct Network {
        mode: String,
    }

    async fn extract(content_type: Option<&str>, body: &str) -> Result<Sample, ApiError> {
        let mut request = Request::builder().method("POST").uri("/");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        ApiJson::<Sample>::from_request(request, &())
            .await
            .map(|ApiJson(v)| v)
    }

    #[tokio::test]
    async fn array_body_is_422() {
        let error = extract(Some("application/json"), r#"["x", {"mode": "open"}]"#)
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(error.detail.contains("JSON object"), "{}", error.detail);
    }

    #[tokio::test]
    async fn json_accepted_with_charset() {
        let sample = extract(
            Some("application/json; charset=utf-8"),
            r#"{"memory": 256}"#,
        )
        .await;
        assert!(sample.is_ok(), "{sample:?}");
    }

    #[tokio::test]
    async fn non_json_content_type_is_415() {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let error = extract(content_type, "{}").await.unwrap_err();
            assert_eq!(
                error.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_json_is_422() {
        let error = extract(Some("application/json"), "{\"memory\": ")
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.field.as_deref(), Some("body"));
    }

    #[tokio::test]
    async fn trailing_data_is_422() {
        let error = extract(Some("application/json"), "{} {}")
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[tokio::test]
    async fn unknown_field_named() {
        let error = extract(Some("application/json"), r#"{"memroy": 256}"#)
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(error.detail.contains("memroy"), "{}", error.detail);
    }

    #[tokio::test]
    async fn wrong_type_names_nested_field() {
        let body = r#"{"network": {"mode": 5}}"#;
        let error = extract(Some("application/json"), body).await.unwrap_err();
        assert_eq!(error.field.as_deref(), Some("network.mode"));
        assert!(error.detail.contains("network.mode"), "{}", error.detail);
        assert!(!error.detail.contains("at line"), "{}", error.detail);
    }

    #[tokio::test]
    async fn wrong_type_names_top_field() {
        let error = extract(Some("application/json"), r#"{"memory": "lots"}"#)
            .await
            .unwrap_err();
        assert_eq!(error.field.as_deref(), Some("memory"));
    }
}
