//! Routing between client connections and the one agent connection.
//!
//! Each client picks its own request ids. The router gives every request a
//! host-wide id before forwarding it to the agent and maps the agent's
//! frames back to the client's id. When a client disconnects, its
//! unfinished requests are cancelled in the guest (SIGKILL for execs), so
//! an abandoned command does not run on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use smolvm_protocol::{FailureKind, Frame, Message, PROTOCOL_VERSION, RequestId, SupervisorStatus};
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::{STOP_GRACE, StopRequest};
use crate::codec::{read_frame, write_frame};

type ConnId = u64;

/// Frames queued for the agent before client readers wait.
const AGENT_QUEUE_FRAMES: usize = 64;

/// Where the agent's frames for one request go.
struct Route {
    conn: ConnId,
    local_id: RequestId,
    client: mpsc::UnboundedSender<Frame>,
}

#[derive(Default)]
struct Tables {
    /// Host-wide id → the client that asked.
    routes: HashMap<RequestId, Route>,
    /// (client, client's id) → host-wide id, for follow-up frames.
    locals: HashMap<(ConnId, RequestId), RequestId>,
}

pub(super) struct Router {
    tables: Mutex<Tables>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    /// Bounded, so a client sending faster than the guest reads is slowed
    /// down instead of queuing without limit in the supervisor.
    agent_tx: mpsc::Sender<Frame>,
    status: SupervisorStatus,
}

impl Router {
    /// Starts the tasks that write to and read from the agent.
    pub(super) fn start(agent: UnixStream, status: SupervisorStatus) -> Arc<Self> {
        let (reader, mut writer) = agent.into_split();
        let (agent_tx, mut agent_rx) = mpsc::channel::<Frame>(AGENT_QUEUE_FRAMES);
        let router = Arc::new(Self {
            tables: Mutex::default(),
            next_id: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            agent_tx,
            status,
        });

        tokio::spawn(async move {
            while let Some(frame) = agent_rx.recv().await {
                if let Err(e) = write_frame(&mut writer, &frame).await {
                    tracing::error!(error = %e, "writing to the agent failed");
                    break;
                }
            }
        });

        let reading = router.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::with_capacity(256 * 1024, reader);
            loop {
                match read_frame(&mut reader).await {
                    Ok(frame) => reading.route_from_agent(frame),
                    Err(e) => {
                        tracing::warn!(error = %e, "agent connection ended");
                        reading.fail_all("the agent connection was lost");
                        break;
                    }
                }
            }
        });
        router
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame for the agent without waiting for room.
    pub(super) fn send_to_agent_detached(&self, frame: Frame) {
        let tx = self.agent_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(frame).await;
        });
    }

    async fn send_to_agent(&self, frame: Frame) {
        let _ = self.agent_tx.send(frame).await;
    }

    fn route_from_agent(&self, frame: Frame) {
        let Some(global) = frame.message.id() else { return };
        let is_final = frame.message.is_final();

        let mut tables = self.tables();
        let Some(route) = tables.routes.get(&global) else { return };
        let Frame { message, data } = frame;
        let _ = route.client.send(Frame::with_data(message.with_id(route.local_id), data));

        if is_final {
            let route = tables.routes.remove(&global).expect("route looked up above");
            tables.locals.remove(&(route.conn, route.local_id));
        }
    }

    /// Ends every open request with a `Failed` frame.
    pub(super) fn fail_all(&self, reason: &str) {
        let mut tables = self.tables();
        for (_, route) in tables.routes.drain() {
            let failed = Message::Failed {
                id: route.local_id,
                kind: FailureKind::Internal,
                message: reason.to_string(),
            };
            let _ = route.client.send(Frame::new(failed));
        }
        tables.locals.clear();
    }

    /// Registers a new request from a client and forwards it.
    async fn forward_new(&self, conn: ConnId, client: &mpsc::UnboundedSender<Frame>, frame: Frame) {
        let Some(local_id) = frame.message.id() else { return };
        let global = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        {
            let mut tables = self.tables();
            if tables.locals.contains_key(&(conn, local_id)) {
                drop(tables);
                let failed = Message::Failed {
                    id: local_id,
                    kind: FailureKind::InvalidRequest,
                    message: format!("request id {} is already in use on this connection", local_id.0),
                };
                let _ = client.send(Frame::new(failed));
                return;
            }
            tables.routes.insert(global, Route { conn, local_id, client: client.clone() });
            tables.locals.insert((conn, local_id), global);
        }
        let Frame { message, data } = frame;
        self.send_to_agent(Frame::with_data(message.with_id(global), data)).await;
    }

    /// Forwards a follow-up frame (stdin, credit, chunk, signal) for a
    /// request already in flight; frames for finished requests are dropped.
    async fn forward_follow_up(&self, conn: ConnId, frame: Frame) {
        let Some(local_id) = frame.message.id() else { return };
        let global = self.tables().locals.get(&(conn, local_id)).copied();
        if let Some(global) = global {
            let Frame { message, data } = frame;
            self.send_to_agent(Frame::with_data(message.with_id(global), data)).await;
        }
    }

    /// Cancels every request of a closed connection.
    fn disconnect(&self, conn: ConnId) {
        let mut tables = self.tables();
        let open: Vec<RequestId> = tables
            .routes
            .iter()
            .filter(|(_, route)| route.conn == conn)
            .map(|(global, _)| *global)
            .collect();
        for global in open {
            if let Some(route) = tables.routes.remove(&global) {
                tables.locals.remove(&(conn, route.local_id));
            }
            self.send_to_agent_detached(Frame::new(Message::Signal { id: global, signal: libc::SIGKILL }));
        }
    }
}

/// Serves one client connection until it closes.
pub(super) async fn serve_client(
    router: Arc<Router>,
    stream: UnixStream,
    stop: mpsc::UnboundedSender<StopRequest>,
) {
    let conn = router.next_conn.fetch_add(1, Ordering::Relaxed);
    let (reader, mut writer) = stream.into_split();
    let (client_tx, mut client_rx) = mpsc::unbounded_channel::<Frame>();

    let writing = tokio::spawn(async move {
        while let Some(frame) = client_rx.recv().await {
            if write_frame(&mut writer, &frame).await.is_err() {
                break;
            }
        }
    });

    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    while let Ok(frame) = read_frame(&mut reader).await {
        handle_client_frame(&router, conn, &client_tx, &stop, frame).await;
    }

    router.disconnect(conn);
    drop(client_tx);
    let _ = writing.await;
}

async fn handle_client_frame(
    router: &Arc<Router>,
    conn: ConnId,
    client: &mpsc::UnboundedSender<Frame>,
    stop: &mpsc::UnboundedSender<StopRequest>,
    frame: Frame,
) {
    match &frame.message {
        Message::Hello { .. } => {
            let hello = Message::HelloOk {
                version: PROTOCOL_VERSION,
                agent_version: router.status.agent_version.clone(),
                kernel: router.status.kernel.clone(),
            };
            let _ = client.send(Frame::new(hello));
        }
        Message::Status { id } => {
            let reply = Message::StatusOk { id: *id, status: router.status.clone() };
            let _ = client.send(Frame::new(reply));
        }
        Message::Stop { id, timeout_ms } => {
            let timeout = std::time::Duration::from_millis(*timeout_ms);
            request_stop(client.clone(), stop, *id, timeout);
        }
        Message::Shutdown { id } => request_stop(client.clone(), stop, *id, STOP_GRACE),
        Message::Exec { .. } | Message::WriteFile { .. } | Message::ReadFile { .. } | Message::Ping { .. } => {
            router.forward_new(conn, client, frame).await;
        }
        Message::Stdin { .. }
        | Message::Signal { .. }
        | Message::Credit { .. }
        | Message::FileChunk { .. }
        | Message::FileEnd { .. } => router.forward_follow_up(conn, frame).await,
        other => {
            let id = other.id().unwrap_or(RequestId(0));
            let failed = Message::Failed {
                id,
                kind: FailureKind::InvalidRequest,
                message: "this message is not a request a client may send".into(),
            };
            let _ = client.send(Frame::new(failed));
        }
    }
}

fn request_stop(
    client: mpsc::UnboundedSender<Frame>,
    stop: &mpsc::UnboundedSender<StopRequest>,
    id: RequestId,
    timeout: std::time::Duration,
) {
    let (done_tx, done_rx) = oneshot::channel();
    let _ = stop.send(StopRequest { timeout, done: done_tx });
    tokio::spawn(async move {
        let _ = done_rx.await;
        let _ = client.send(Frame::new(Message::ShuttingDown { id }));
    });
}
