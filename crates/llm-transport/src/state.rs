//! What every handler shares: the configuration, the engine once loaded, keys, CORS, replay
//! logs, metrics and shutdown. Read through accessors; only the server installs the engine.

use std::sync::{Arc, OnceLock};

use crate::auth::ApiKeys;
use crate::backend::Backend;
use crate::config::TransportConfig;
use crate::cors::Cors;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::replay::ReplayStore;
use crate::shutdown::Shutdown;

/// One server's shared state.
pub(crate) struct State {
    config: TransportConfig,
    backend: OnceLock<Arc<dyn Backend>>,
    keys: ApiKeys,
    cors: Cors,
    replay: Arc<ReplayStore>,
    metrics: Arc<Metrics>,
    limiter: Arc<Limiter>,
    shutdown: Shutdown,
}

impl State {
    pub(crate) fn new(config: TransportConfig) -> Self {
        Self {
            keys: ApiKeys::new(&config.api_keys),
            cors: Cors::new(&config.cors_origins),
            replay: Arc::new(ReplayStore::new(config.resume.clone())),
            metrics: Arc::new(Metrics::new()),
            limiter: Arc::new(Limiter::new(config.rate_limits)),
            config,
            backend: OnceLock::new(),
            shutdown: Shutdown::default(),
        }
    }

    pub(crate) fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// The engine.
    ///
    /// # Errors
    /// [`Error::Loading`] until the engine is installed.
    pub(crate) fn backend(&self) -> Result<&Arc<dyn Backend>> {
        self.backend.get().ok_or(Error::Loading)
    }

    /// The engine, if it is installed yet.
    pub(crate) fn loaded_backend(&self) -> Option<&Arc<dyn Backend>> {
        self.backend.get()
    }

    /// Installs the engine; later calls are ignored.
    pub(crate) fn set_backend(&self, backend: Arc<dyn Backend>) {
        let _ = self.backend.set(backend);
    }

    pub(crate) fn keys(&self) -> &ApiKeys {
        &self.keys
    }

    pub(crate) fn cors(&self) -> &Cors {
        &self.cors
    }

    pub(crate) fn replay(&self) -> &Arc<ReplayStore> {
        &self.replay
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The per-client rate limits.
    pub(crate) fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}
