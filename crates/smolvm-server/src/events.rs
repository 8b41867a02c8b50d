//! Lifecycle events for `GET /sdk/v1/events`.
//!
//! Sandbox events come from one watcher that compares successive listings
//! of the store, so sandboxes created or changed by the CLI or another
//! server show up too, and each change it detects is reported once. A state
//! that lasts less than one poll interval (1 s) can be missed. Handlers
//! that change a sandbox nudge the watcher so it looks at once instead of
//! at its next tick. Image build progress is published directly by the
//! create handler. The watcher runs only while someone is subscribed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use smolvm_engine::sandbox::Engine;
use tokio::sync::{Notify, broadcast};
use utoipa::ToSchema;

use crate::api::model::{Sandbox, SandboxStatus};

/// How often the watcher lists sandboxes while someone is subscribed.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Events buffered per subscriber. A subscriber that falls further behind
/// receives a `lagged` event with the number it missed.
const CHANNEL_CAPACITY: usize = 256;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) enum EventKind {
    /// A sandbox appeared on the host.
    #[serde(rename = "sandbox.created")]
    SandboxCreated,
    /// A sandbox finished booting and accepts commands.
    #[serde(rename = "sandbox.running")]
    SandboxRunning,
    /// A sandbox is shutting down.
    #[serde(rename = "sandbox.stopping")]
    SandboxStopping,
    /// A sandbox powered off; its disk is kept.
    #[serde(rename = "sandbox.stopped")]
    SandboxStopped,
    /// A sandbox was deleted.
    #[serde(rename = "sandbox.deleted")]
    SandboxDeleted,
    /// A sandbox failed to boot or died.
    #[serde(rename = "sandbox.error")]
    SandboxError,
    /// A step of building the default image, which the first create on a
    /// host triggers.
    #[serde(rename = "image.build")]
    ImageBuild,
}

impl EventKind {
    /// Returns the name sent as the server-sent event's `event` field.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::SandboxCreated => "sandbox.created",
            Self::SandboxRunning => "sandbox.running",
            Self::SandboxStopping => "sandbox.stopping",
            Self::SandboxStopped => "sandbox.stopped",
            Self::SandboxDeleted => "sandbox.deleted",
            Self::SandboxError => "sandbox.error",
            Self::ImageBuild => "image.build",
        }
    }

    /// Returns the event announcing that a sandbox entered `status`, if any.
    fn for_status(status: SandboxStatus) -> Option<Self> {
        match status {
            SandboxStatus::Creating => None,
            SandboxStatus::Running => Some(Self::SandboxRunning),
            SandboxStatus::Stopping => Some(Self::SandboxStopping),
            SandboxStatus::Stopped => Some(Self::SandboxStopped),
            SandboxStatus::Error => Some(Self::SandboxError),
        }
    }
}

/// One event, the JSON `data` of a server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When the server noticed it, RFC 3339 in UTC.
    pub time: String,
    /// The sandbox concerned, for sandbox events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The sandbox as it is now; absent for `sandbox.deleted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    /// Progress text, for `image.build`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// 1-based build step and the number of steps, for `image.build`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
}

impl Event {
    fn new(kind: EventKind) -> Self {
        Self {
            kind,
            time: now_rfc3339(),
            sandbox_id: None,
            sandbox: None,
            message: None,
            step: None,
            steps: None,
        }
    }

    fn sandbox(kind: EventKind, sandbox: &Sandbox) -> Self {
        Self {
            sandbox_id: Some(sandbox.id.clone()),
            sandbox: Some(sandbox.clone()),
            ..Self::new(kind)
        }
    }

    /// Creates an `image.build` event.
    pub(crate) fn image_build(step: usize, steps: usize, message: String) -> Self {
        Self {
            message: Some(message),
            step: Some(step),
            steps: Some(steps),
            ..Self::new(EventKind::ImageBuild)
        }
    }
}

/// An event with its sequence number, as subscribers receive it.
#[derive(Debug, Clone)]
pub(crate) struct Numbered {
    pub seq: u64,
    pub event: Event,
}

/// Publishes events to subscribers; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct EventHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    engine: Engine,
    sender: broadcast::Sender<Numbered>,
    next_seq: AtomicU64,
    nudge: Notify,
    watching: AtomicBool,
}

impl EventHub {
    pub(crate) fn new(engine: Engine) -> Self {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        let inner = HubInner {
            engine,
            sender,
            next_seq: AtomicU64::new(1),
            nudge: Notify::new(),
            watching: AtomicBool::new(false),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Subscribes to events from now on, starting the watcher if needed.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Numbered> {
        let receiver = self.inner.sender.subscribe();
        if !self.inner.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch(Arc::downgrade(&self.inner)));
        }
        receiver
    }

    /// Publishes `event` to current subscribers, if any.
    pub(crate) fn publish(&self, event: Event) {
        self.inner.publish(event);
    }

    /// Asks the watcher to look for changes now rather than at its next tick.
    pub(crate) fn nudge(&self) {
        self.inner.nudge.notify_one();
    }
}

impl HubInner {
    fn publish(&self, event: Event) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        // An error only means that no one is subscribed.
        let _ = self.sender.send(Numbered { seq, event });
    }
}

/// Lists sandboxes while anyone is subscribed and publishes each change.
/// Exits when the last subscriber leaves or the hub is dropped; the next
/// subscription starts a new watcher with a fresh baseline.
async fn watch(hub: Weak<HubInner>) {
    let mut known: Option<HashMap<String, SandboxStatus>> = None;
    loop {
        let Some(inner) = hub.upgrade() else { return };
        if inner.sender.receiver_count() == 0 {
            inner.watching.store(false, Ordering::Release);
            // A subscriber may have arrived since the count. Go on only if
            // it found `watching` still set and so started no watcher.
            if inner.sender.receiver_count() == 0 || inner.watching.swap(true, Ordering::AcqRel) {
                return;
            }
        }

        match inner.engine.list().await {
            Ok(list) => {
                let current: Vec<Sandbox> = list.into_iter().map(Sandbox::from).collect();
                if let Some(previous) = &known {
                    for event in diff(previous, &current) {
                        inner.publish(event);
                    }
                }
                known = Some(current.iter().map(|s| (s.id.clone(), s.status)).collect());
            }
            Err(error) => tracing::warn!(%error, "listing sandboxes for events failed"),
        }

        // A nudge sent while no one waited is stored, so none is lost.
        let _ = tokio::time::timeout(POLL_INTERVAL, inner.nudge.notified()).await;
    }
}

/// Returns the events that turn `previous` into `current`.
fn diff(previous: &HashMap<String, SandboxStatus>, current: &[Sandbox]) -> Vec<Event> {
    let mut events = Vec::new();
    for sandbox in current {
        match previous.get(&sandbox.id) {
            None => {
                events.push(Event::sandbox(EventKind::SandboxCreated, sandbox));
                if let Some(kind) = EventKind::for_status(sandbox.status) {
                    events.push(Event::sandbox(kind, sandbox));
                }
            }
            Some(status) if *status != sandbox.status => {
                if let Some(kind) = EventKind::for_status(sandbox.status) {
                    events.push(Event::sandbox(kind, sandbox));
                }
            }
            Some(_) => {}
        }
    }

    let mut gone: Vec<&String> = previous
        .keys()
        .filter(|id| !current.iter().any(|s| &s.id == *id))
        .collect();
    gone.sort();
    for id in gone {
        events.push(Event {
            sandbox_id: Some(id.clone()),
            ..Event::new(EventKind::SandboxDeleted)
        });
    }
    events
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::{AccelName, Backend, NetworkMode, Os};

    fn sandbox(id: &str, status: SandboxStatus) -> Sandbox {
        Sandbox {
            id: id.into(),
            status,
            os: Os::Linux,
            image: "default".into(),
            memory: 512,
            disk_size: 2048,
            cpus: 1,
            backend: Backend::Qemu,
            accel: AccelName::Tcg,
            network: NetworkMode::Off,
            created_at: "2026-12-01T10:00:00.000Z".into(),
            boot_ms: None,
            error: None,
        }
    }

    fn kinds(events: &[Event]) -> Vec<(&str, Option<&str>)> {
        events
            .iter()
            .map(|e| (e.kind.as_str(), e.sandbox_id.as_deref()))
            .collect()
    }

    #[test]
    fn new_running_sandbox_is_created_then_running() {
        let events = diff(&HashMap::new(), &[sandbox("sbx-a", SandboxStatus::Running)]);
        assert_eq!(
            kinds(&events),
            [
                ("sandbox.created", Some("sbx-a")),
                ("sandbox.running", Some("sbx-a"))
            ]
        );
    }

    #[test]
    fn new_creating_sandbox_is_created_only() {
        let events = diff(
            &HashMap::new(),
            &[sandbox("sbx-a", SandboxStatus::Creating)],
        );
        assert_eq!(kinds(&events), [("sandbox.created", Some("sbx-a"))]);
    }

    #[test]
    fn status_change_and_removal_reported() {
        let previous = HashMap::from([
            ("sbx-a".to_owned(), SandboxStatus::Running),
            ("sbx-b".to_owned(), SandboxStatus::Running),
            ("sbx-c".to_owned(), SandboxStatus::Running),
        ]);
        let current = [
            sandbox("sbx-a", SandboxStatus::Stopped),
            sandbox("sbx-c", SandboxStatus::Running),
        ];
        let events = diff(&previous, &current);
        assert_eq!(
            kinds(&events),
            [
                ("sandbox.stopped", Some("sbx-a")),
                ("sandbox.deleted", Some("sbx-b"))
            ]
        );
        assert!(events[1].sandbox.is_none());
    }

    #[test]
    fn event_json_uses_type_field() {
        let json = serde_json::to_value(Event::image_build(1, 4, "kernel".into())).unwrap();
        assert_eq!(json["type"], "image.build");
        assert_eq!(json["step"], 1);
        assert!(json.get("sandbox_id").is_none());
    }
}
