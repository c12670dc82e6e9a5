//! The accept loop: connections and their limit, HTTP/1.1 and h2c, and graceful shutdown.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::auth::ApiKeys;
use crate::backend::Backend;
use crate::config::TransportConfig;
use crate::cors::Cors;
use crate::error::Error;
use crate::metrics::{ConnectionGuard, Metrics};
use crate::replay::ReplayStore;
use crate::routes::{self, State};

/// How long streams get to write their last event once the shutdown deadline has passed.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// The OpenAI-compatible HTTP server.
///
/// It can listen before the model is loaded: `/health` answers 503 and the API answers
/// 503 `model_loading` until [`set_engine`](Self::set_engine) is called.
#[derive(Clone)]
pub struct Server {
    state: Arc<State>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.state.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with the given limits and no engine yet.
    pub fn new(config: TransportConfig) -> Self {
        let (deadline, _) = watch::channel(false);
        let (draining, _) = watch::channel(false);
        Self {
            state: Arc::new(State {
                keys: ApiKeys::new(&config.api_keys),
                cors: Cors::new(&config.cors_origins),
                replay: Arc::new(ReplayStore::new(config.resume.clone())),
                metrics: Arc::new(Metrics::new()),
                config,
                backend: OnceLock::new(),
                deadline,
                draining,
                tasks: Tasks::default(),
            }),
        }
    }

    /// Installs the engine (the real [`llm_engine::Engine`], or any [`Backend`]) once it is
    /// loaded. Later calls are ignored.
    pub fn set_engine(&self, engine: impl Backend) {
        let _ = self.state.backend.set(Arc::new(engine));
    }

    /// Serves connections from `listener` until `shutdown` completes. Then it stops accepting,
    /// refuses new generations, and lets open streams finish for up to `grace`; streams still
    /// open then end with an error event and `[DONE]` (WebSockets with an error message and a
    /// close frame), and it returns.
    ///
    /// # Errors
    /// Never fails on a single connection's error (those are logged); only an accept loop that
    /// cannot continue would return, which does not happen with a valid listener.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> std::io::Result<()> {
        let config = &self.state.config;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's read buffer bounds the request head; it cannot be below 8 KiB.
        let header_limit = config.header_limit.max(8192);
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(header_limit);
        builder
            .http2()
            .max_header_list_size(u32::try_from(header_limit).unwrap_or(u32::MAX));
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(config.max_connections));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Running out of file descriptors and the like: wait, then go on.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                tokio::spawn(refuse(stream, config.max_connections));
                continue;
            };
            // Every chunk goes out as soon as it is written.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            let slot = ConnectionSlot::new(permit, self.state.metrics.connection());
            let state = Arc::clone(&self.state);
            let service_slot = slot.clone();
            let service = service_fn(move |mut request: hyper::Request<_>| {
                request.extensions_mut().insert(service_slot.clone());
                routes::handle(Arc::clone(&state), request)
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let connection = graceful.watch(connection.into_owned());
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        if let Some(backend) = self.state.backend.get() {
            backend.close();
        }
        self.state.draining.send_replace(true);
        tracing::info!(?grace, "shutting down: letting open streams finish");
        let tasks = self.state.tasks.clone();
        let drained = async move {
            graceful.shutdown().await;
            tasks.idle().await;
        };
        tokio::pin!(drained);
        if tokio::time::timeout(grace, &mut drained).await.is_err() {
            tracing::warn!(
                ?grace,
                "streams still open after the grace period; ending them"
            );
            self.state.deadline.send_replace(true);
            if tokio::time::timeout(FINAL_FLUSH, &mut drained)
                .await
                .is_err()
            {
                tracing::warn!("connections still open after their final events; closing");
            }
        }
        Ok(())
    }
}

/// Resolves on ctrl-c or, on Unix, SIGTERM: the usual signal to pass to
/// [`Server::serve`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Answers a connection over the limit with 503 in OpenAI's shape, then closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let body = Error::TooManyConnections { limit }.body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(1), write)
        .await
        .is_err()
    {
        tracing::debug!("a refused connection did not take its 503");
    }
}

/// A connection's place under the connection limit, and its count in the open-connection
/// gauge. hyper lets go of a connection once it is upgraded to a WebSocket; the session then
/// takes the place over, so that WebSockets count against the limit for as long as they live.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSlot(
    Arc<std::sync::Mutex<Option<(OwnedSemaphorePermit, ConnectionGuard)>>>,
);

impl ConnectionSlot {
    fn new(permit: OwnedSemaphorePermit, open: ConnectionGuard) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some((permit, open)))))
    }

    /// Takes the place over; the connection no longer releases it when it ends.
    pub(crate) fn take(&self) -> Option<impl Send + 'static> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Resolves once the shutdown deadline has passed: streams then end with an error event.
#[derive(Debug, Clone)]
pub(crate) struct Deadline(watch::Receiver<bool>);

impl Deadline {
    pub(crate) fn new(sender: &watch::Sender<bool>) -> Self {
        Self(sender.subscribe())
    }

    /// Cancel safe.
    pub(crate) async fn reached(&mut self) {
        if self.0.wait_for(|reached| *reached).await.is_err() {
            // The server is gone: nothing will ever announce the deadline.
            std::future::pending::<()>().await;
        }
    }
}

/// Tasks that outlive a request handler (stream pumps, resumable generations, WebSocket
/// sessions), counted so that shutdown can wait for them.
#[derive(Debug, Clone)]
pub(crate) struct Tasks(Arc<watch::Sender<usize>>);

impl Default for Tasks {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl Tasks {
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let count = Arc::clone(&self.0);
        count.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            struct Done(Arc<watch::Sender<usize>>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.send_modify(|n| *n -= 1);
                }
            }
            let _done = Done(count);
            task.await;
        });
    }

    async fn idle(&self) {
        let mut count = self.0.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }
}
