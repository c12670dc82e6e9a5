//! The accept loop: connections and their limit, HTTP/1.1 and h2c, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::KeysFileError;
use crate::backend::Backend;
use crate::config::TransportConfig;
use crate::connection::{refuse, ConnectionSlot};
use crate::http::Peer;
use crate::router;
use crate::state::{ConfigError, State};

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
            .field("config", self.state.config())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with the given limits and no engine yet.
    ///
    /// # Panics
    /// When [`try_new`](Self::try_new) fails: a keys file that does not read, or a shared
    /// state URL that is not valid. Configurations with either should use `try_new`.
    pub fn new(config: TransportConfig) -> Self {
        Self::try_new(config)
            .unwrap_or_else(|error| panic!("invalid server configuration: {error}"))
    }

    /// A server with the given limits and no engine yet; its keys file is read now, and its
    /// shared state store is connected on first use.
    ///
    /// # Errors
    /// [`ConfigError`] when the keys file does not read or the shared state URL is not valid.
    pub fn try_new(config: TransportConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            state: Arc::new(State::new(config)?),
        })
    }

    /// Reads the API keys file again and puts it in force: new requests are checked against
    /// the new keys and limits, while running streams go on under the admission they got.
    /// A file that does not read leaves the keys in force as they are. Returns how many keys
    /// there are; without a keys file, nothing changes.
    ///
    /// # Errors
    /// Why the file was not taken.
    pub fn reload_keys(&self) -> Result<usize, KeysFileError> {
        self.state.reload_keys()
    }

    /// Installs the engine (the real [`llm_engine::Engine`], or any [`Backend`]) once it is
    /// loaded. Later calls are ignored.
    pub fn set_engine(&self, engine: impl Backend) {
        self.state.set_backend(Arc::new(engine));
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
        let config = self.state.config();
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
                refuse(stream, config.max_connections);
                continue;
            };
            // Every chunk goes out as soon as it is written.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            let slot = ConnectionSlot::new(permit, self.state.metrics().connection());
            let state = Arc::clone(&self.state);
            let service_slot = slot.clone();
            let service = service_fn(move |mut request: hyper::Request<_>| {
                request.extensions_mut().insert(service_slot.clone());
                request.extensions_mut().insert(Peer(peer));
                router::handle(Arc::clone(&state), request)
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
        if let Some(backend) = self.state.loaded_backend() {
            backend.close();
        }
        let shutdown = self.state.shutdown().clone();
        shutdown.begin();
        tracing::info!(?grace, "shutting down: letting open streams finish");
        let drained = async {
            graceful.shutdown().await;
            shutdown.idle().await;
        };
        tokio::pin!(drained);
        if tokio::time::timeout(grace, &mut drained).await.is_err() {
            tracing::warn!(
                ?grace,
                "streams still open after the grace period; ending them"
            );
            self.state.shutdown().end_streams();
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
