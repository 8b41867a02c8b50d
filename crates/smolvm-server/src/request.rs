//! Request ids: each request gets one, in a tracing span around its
//! handling and in the `X-Request-Id` response header.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Header carrying the request id, both ways.
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Maximum length of a client-supplied request id that is kept; longer
/// ones are replaced.
const MAX_CLIENT_ID_LEN: usize = 64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Wraps the request in a span carrying its id and logs its outcome.
pub(crate) async fn trace_request(mut request: Request, next: Next) -> Response {
    let id = client_id(&request)
        .unwrap_or_else(|| format!("req-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)));
    let value = HeaderValue::from_str(&id).expect("request ids are visible ASCII");
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER, value.clone());

    let span = tracing::info_span!(
        "request",
        request.id = %id,
        http.method = %request.method(),
        http.path = %request.uri().path(),
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;

    span.in_scope(|| {
        tracing::debug!(
            http.status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request finished"
        );
    });
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    response
}

/// Returns the client's request id when it is short and plain enough to
/// log and echo safely.
fn client_id(request: &Request) -> Option<String> {
    let id = request.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    (plain && !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN).then(|| id.to_owned())
}
