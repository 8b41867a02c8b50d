//! `GET /sdk/v1/events`: lifecycle events as server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::app::AppState;
use crate::error::ErrorBody;

/// How often an idle event stream sends a comment line, so proxies keep
/// the connection open and a departed client is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Stream lifecycle events.
///
/// Server-sent events, one per change, from the moment of connecting:
/// `sandbox.created`, `sandbox.running`, `sandbox.stopping`,
/// `sandbox.stopped`, `sandbox.deleted`, `sandbox.error` and
/// `image.build`. Each event's `data` is an Event object; its `id` is a
/// sequence number. Sandboxes changed by the CLI or another server are
/// reported too, within about a second. A client that falls behind gets a
/// `lagged` event saying how many events it missed.
#[utoipa::path(
    get,
    path = "/sdk/v1/events",
    operation_id = "streamEvents",
    tag = "system",
    responses(
        (status = 200, description = "Server-sent events whose data is an Event", content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or wrong API token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Foreign `Host` or `Origin` (`host_not_allowed`, `origin_not_allowed`)", body = ErrorBody),
    ),
)]
pub(crate) async fn stream_events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = state.events.subscribe();
    let shutdown = state.shutdown_signal();
    let stream = futures_util::stream::unfold(
        (receiver, shutdown),
        |(mut receiver, mut shutdown)| async move {
            let received = tokio::select! {
                received = receiver.recv() => received,
                _ = shutdown.wait_for(|stopping| *stopping) => return None,
            };
            let event = match received {
                Ok(numbered) => SseEvent::default()
                    .event(numbered.event.kind.as_str())
                    .id(numbered.seq.to_string())
                    .json_data(&numbered.event)
                    .expect("events serialize to JSON"),
                Err(RecvError::Lagged(missed)) => SseEvent::default()
                    .event("lagged")
                    .data(format!("{{\"missed\":{missed}}}")),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), (receiver, shutdown)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
