//! Shutdown as the streaming code sees it: the tasks that outlive their request handler, the
//! moment draining begins, and the deadline after which open streams are ended.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One server's shutdown. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shutdown {
    /// Stream pumps, resumable generations and WebSocket sessions: what shutdown waits for.
    tasks: TaskTracker,
    /// Cancelled when shutdown begins: idle WebSockets close, busy ones after their turn.
    draining: CancellationToken,
    /// Cancelled once the shutdown grace has run out: every stream still open ends with an
    /// error event.
    deadline: CancellationToken,
}

impl Shutdown {
    /// Runs a task that shutdown waits for.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Cancelled when shutdown begins.
    pub(crate) fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Cancelled when the shutdown grace has run out.
    pub(crate) fn deadline(&self) -> CancellationToken {
        self.deadline.clone()
    }

    /// Starts draining. Tasks may still be spawned; [`idle`](Self::idle) waits for them too.
    pub(crate) fn begin(&self) {
        self.tasks.close();
        self.draining.cancel();
    }

    /// Resolves once shutdown has begun and no task is left. Cancel safe.
    pub(crate) async fn idle(&self) {
        self.tasks.wait().await;
    }

    /// The grace has run out: every open stream is ended now.
    pub(crate) fn end_streams(&self) {
        self.deadline.cancel();
    }
}

/// Resolves on ctrl-c or, on Unix, SIGTERM: the usual signal to pass to
/// [`Server::serve`](crate::Server::serve).
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
