//! Binding the listener, serving until a shutdown signal, and shutting
//! down gracefully. Sandboxes are owned by their supervisors, so they keep
//! running after the server stops and are listed again by the next one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use smolvm_engine::sandbox::Engine;
use tokio::net::TcpListener;

use crate::app::{AppState, router};
use crate::config::{ConfigError, ServerConfig};

/// How long a shutdown waits for requests in flight (a long exec, a
/// stream) before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Errors from starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error(
        "port {port} on {host} is already in use; stop the program using it, or pick another \
         port with --port"
    )]
    PortInUse { host: String, port: u16 },

    #[error("failed to listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("failed to install the SIGINT/SIGTERM handler")]
    Signal(#[source] io::Error),

    #[error("the server stopped with an I/O error")]
    Serve(#[source] io::Error),
}

/// A server bound to its address and ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    address: SocketAddr,
    state: AppState,
}

impl Server {
    /// Validates `config` and binds its address; fails at once when the
    /// port is taken.
    pub async fn bind(config: ServerConfig, engine: Engine) -> Result<Self, ServerError> {
        let address = config.validate()?;
        let host = config.host.clone();
        let state = AppState::new(engine, config)?;

        let listener = TcpListener::bind(address).await.map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                ServerError::PortInUse {
                    host,
                    port: address.port(),
                }
            } else {
                ServerError::Bind { address, source }
            }
        })?;
        let address = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { address, source })?;
        Ok(Self {
            listener,
            address,
            state,
        })
    }

    /// Returns the address the server listens on (with the real port when
    /// port 0 was requested).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Returns the base URL, such as `http://127.0.0.1:8000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Serves requests until `shutdown` completes, then lets requests in
    /// flight finish for up to 10 seconds.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Self {
            listener,
            address,
            state,
        } = self;
        let app = router(state.clone());
        // Small request/response exchanges must not wait on Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });

        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let graceful = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down; sandboxes keep running");
            state.begin_shutdown();
            let _ = fired_tx.send(());
        });
        tracing::info!(%address, "server listening");

        let grace_over = async {
            if fired_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = graceful => served.map_err(ServerError::Serve),
            () = grace_over => {
                tracing::warn!("requests still running {SHUTDOWN_GRACE:?} after shutdown began; closing them");
                Ok(())
            }
        }
    }
}

/// Runs the server for `smolvm server`: binds, prints the listen and
/// OpenAPI URLs, and serves until SIGINT or SIGTERM.
pub async fn serve(config: ServerConfig, engine: Engine) -> Result<(), ServerError> {
    let server = Server::bind(config, engine).await?;
    let url = server.url();
    println!("smolvm server listening on {url}");
    println!("OpenAPI document: {url}/openapi.json");
    println!("API docs: {url}/docs");

    let signal = shutdown_signal()?;
    server.run(signal).await
}

/// Returns a future that completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> Result<impl Future<Output = ()>, ServerError> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
