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

/// The destination of the agent's frames for one request.
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
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let Some(global) = frame.message.id() else {
            return;
        };
        let is_final = frame.message.is_final();

        let mut tables = self.tables();
        let Some(route) = tables.routes.get(&global) else {
            return;
        };
        let Frame { message, data } = frame;
        let _ = route
            .client
            .send(Frame::with_data(message.with_id(route.local_id), data));

        if is_final {
            let route = tables
                .routes
                .remove(&global)
                .expect("route looked up above");
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
        let Some(local_id) = frame.message.id() else {
            return;
        };
        let global = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        {
            let mut tables = self.tables();
            if tables.locals.contains_key(&(conn, local_id)) {
                drop(tables);
                let failed = Message::Failed {
                    id: local_id,
                    kind: FailureKind::InvalidRequest,
                    message: format!(
                        "request id {} is already in use on this connection",
                        local_id.0
                    ),
                };
                let _ = client.send(Frame::new(failed));
                return;
            }
            tables.routes.insert(
                global,
                Route {
                    conn,
                    local_id,
                    client: client.clone(),
                },
            );
            tables.locals.insert((conn, local_id), global);
        }
        let Frame { message, data } = frame;
        self.send_to_agent(Frame::with_data(message.with_id(global), data))
            .await;
    }

    /// Forwards a follow-up frame (stdin, credit, chunk, signal) for a
    /// request already in flight; frames for finished requests are dropped.
    async fn forward_follow_up(&self, conn: ConnId, frame: Frame) {
        let Some(local_id) = frame.message.id() else {
            return;
        };
        let global = self.tables().locals.get(&(conn, local_id)).copied();
        if let Some(global) = global {
            let Frame { message, data } = frame;
            self.send_to_agent(Frame::with_data(message.with_id(global), data))
                .await;
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
            self.send_to_agent_detached(Frame::new(Message::Signal {
                id: global,
                signal: libc::SIGKILL,
            }));
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
            let reply = Message::StatusOk {
                id: *id,
                status: router.status.clone(),
            };
            let _ = client.send(Frame::new(reply));
        }
        Message::Stop { id, timeout_ms } => {
            let timeout = std::time::Duration::from_millis(*timeout_ms);
            request_stop(client.clone(), stop, *id, timeout);
        }
        Message::Shutdown { id } => request_stop(client.clone(), stop, *id, STOP_GRACE),
        Message::Exec { .. }
        | Message::WriteFile { .. }
        | Message::ReadFile { .. }
        | Message::Ping { .. } => {
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
    let _ = stop.send(StopRequest {
        timeout,
        done: done_tx,
    });
    tokio::spawn(async move {
        let _ = done_rx.await;
        let _ = client.send(Frame::new(Message::ShuttingDown { id }));
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use smolvm_protocol::{ExecCommand, ExecRequest};

    use super::*;

    fn status() -> SupervisorStatus {
        SupervisorStatus {
            sandbox_id: "sbx-test".into(),
            supervisor_pid: 1,
            vmm_pid: 2,
            agent_version: "0.0.0".into(),
            kernel: "6.1".into(),
            boot_ms: 3,
        }
    }

    fn exec(id: u64) -> Frame {
        let request = ExecRequest {
            command: ExecCommand::Argv {
                argv: vec!["true".into()],
            },
            env: vec![],
            cwd: None,
            timeout_ms: None,
            stdin: false,
            window: 1024,
        };
        Frame::new(Message::Exec {
            id: RequestId(id),
            request,
        })
    }

    /// Starts a router over a socket pair whose far end plays the agent,
    /// and serves clients on another pair per call to `client`.
    struct Harness {
        router: Arc<Router>,
        agent: UnixStream,
        stop: mpsc::UnboundedSender<StopRequest>,
        _stop_rx: mpsc::UnboundedReceiver<StopRequest>,
    }

    impl Harness {
        fn new() -> Self {
            let (ours, agent) = UnixStream::pair().unwrap();
            let router = Router::start(ours, status());
            let (stop, stop_rx) = mpsc::unbounded_channel();
            Self {
                router,
                agent,
                stop,
                _stop_rx: stop_rx,
            }
        }

        fn client(&self) -> UnixStream {
            let (client, served) = UnixStream::pair().unwrap();
            tokio::spawn(serve_client(self.router.clone(), served, self.stop.clone()));
            client
        }
    }

    async fn recv(stream: &mut UnixStream) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), read_frame(stream))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn same_client_ids_routed_apart() {
        let mut harness = Harness::new();
        let mut a = harness.client();
        let mut b = harness.client();

        write_frame(&mut a, &exec(1)).await.unwrap();
        let first = recv(&mut harness.agent).await;
        write_frame(&mut b, &exec(1)).await.unwrap();
        let second = recv(&mut harness.agent).await;
        let (first_id, second_id) = (first.message.id().unwrap(), second.message.id().unwrap());
        assert_ne!(first_id, second_id, "host-wide ids must differ");

        // Reply to b's request first; each reply must reach only its client,
        // carrying that client's own id.
        let exited = |id| Message::Exited {
            id,
            exit_code: 0,
            signal: None,
            timed_out: false,
            duration_ms: 1,
        };
        write_frame(&mut harness.agent, &Frame::new(exited(second_id)))
            .await
            .unwrap();
        write_frame(&mut harness.agent, &Frame::new(exited(first_id)))
            .await
            .unwrap();
        assert_eq!(recv(&mut b).await.message, exited(RequestId(1)));
        assert_eq!(recv(&mut a).await.message, exited(RequestId(1)));
    }

    #[tokio::test]
    async fn output_data_passes_through() {
        let mut harness = Harness::new();
        let mut client = harness.client();
        write_frame(&mut client, &exec(9)).await.unwrap();
        let global = recv(&mut harness.agent).await.message.id().unwrap();

        let output = Message::Output {
            id: global,
            stream: smolvm_protocol::OutputStream::Stdout,
        };
        let frame = Frame::with_data(output, b"hello\xff".to_vec());
        write_frame(&mut harness.agent, &frame).await.unwrap();

        let got = recv(&mut client).await;
        assert_eq!(got.message.id(), Some(RequestId(9)));
        assert_eq!(got.data, b"hello\xff");
    }

    #[tokio::test]
    async fn disconnect_kills_open_requests() {
        let mut harness = Harness::new();
        let mut client = harness.client();
        write_frame(&mut client, &exec(4)).await.unwrap();
        let global = recv(&mut harness.agent).await.message.id().unwrap();

        drop(client);
        let signal = recv(&mut harness.agent).await;
        assert_eq!(
            signal.message,
            Message::Signal {
                id: global,
                signal: libc::SIGKILL
            }
        );
    }

    #[tokio::test]
    async fn status_answered_without_agent() {
        let harness = Harness::new();
        let mut client = harness.client();
        write_frame(
            &mut client,
            &Frame::new(Message::Status { id: RequestId(2) }),
        )
        .await
        .unwrap();
        let reply = recv(&mut client).await;
        assert_eq!(
            reply.message,
            Message::StatusOk {
                id: RequestId(2),
                status: status()
            }
        );
    }

    #[tokio::test]
    async fn follow_up_for_unknown_request_dropped() {
        let mut harness = Harness::new();
        let mut client = harness.client();
        let credit = Frame::new(Message::Credit {
            id: RequestId(77),
            bytes: 10,
        });
        write_frame(&mut client, &credit).await.unwrap();
        write_frame(&mut client, &exec(1)).await.unwrap();

        // The first frame the agent receives is the exec, not the stray credit.
        let first = recv(&mut harness.agent).await;
        assert!(matches!(first.message, Message::Exec { .. }), "{first:?}");
    }

    #[tokio::test]
    async fn agent_loss_fails_open_requests() {
        let harness = Harness::new();
        let mut client = harness.client();
        write_frame(&mut client, &exec(5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        drop(harness.agent);
        let reply = recv(&mut client).await;
        assert!(
            matches!(
                reply.message,
                Message::Failed {
                    id: RequestId(5),
                    kind: FailureKind::Internal,
                    ..
                }
            ),
            "{reply:?}"
        );
    }
}
