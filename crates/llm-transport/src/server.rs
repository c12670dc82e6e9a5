//! The accept loop: connections, HTTP/1.1 and h2c, and graceful shutdown.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use llm_engine::Engine;
use tokio::net::TcpListener;

use crate::config::TransportConfig;
use crate::routes::{self, State};

/// The OpenAI-compatible HTTP server.
///
/// It can listen before the model is loaded: `/health` answers 503 and the API answers
/// 503 `model_loading` until [`set_engine`](Self::set_engine) is called.
#[derive(Debug, Clone)]
pub struct Server {
    state: Arc<State>,
}

impl Server {
    /// A server with the given limits and no engine yet.
    pub fn new(config: TransportConfig) -> Self {
        Self {
            state: Arc::new(State {
                config,
                engine: OnceLock::new(),
            }),
        }
    }

    /// Installs the engine once it is loaded. Later calls are ignored.
    pub fn set_engine(&self, engine: Engine) {
        let _ = self.state.engine.set(engine);
    }

    /// Serves connections from `listener` until `shutdown` completes, then stops accepting,
    /// lets open connections finish for up to `grace`, and returns.
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.state.config.header_read_timeout);
        let graceful = GracefulShutdown::new();
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
            // Every chunk goes out as soon as it is written.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            let state = Arc::clone(&self.state);
            let service = service_fn(move |request| routes::handle(Arc::clone(&state), request));
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let connection = graceful.watch(connection.into_owned());
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if let Some(engine) = self.state.engine.get() {
            engine.close();
        }
        tracing::info!("shutting down: waiting for open connections");
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "connections still open after the grace period; closing"
            );
        }
        Ok(())
    }
}
