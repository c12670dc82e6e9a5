//! What every handler shares: the configuration, the engine once loaded, keys, CORS, replay
//! logs, metrics, rate limits and shutdown. Read through accessors; only the server installs
//! the engine and reloads the keys.

use std::sync::{Arc, OnceLock, RwLock};

use crate::auth::{ApiKeys, KeysFileError};
use crate::backend::Backend;
use crate::config::TransportConfig;
use crate::cors::Cors;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::replay::ReplayStore;
use crate::shared::RedisStore;
use crate::shutdown::Shutdown;

/// One server's shared state.
pub(crate) struct State {
    config: TransportConfig,
    backend: OnceLock<Arc<dyn Backend>>,
    /// Swapped whole on a reload; a request keeps the table it was checked against.
    keys: RwLock<Arc<ApiKeys>>,
    cors: Cors,
    replay: Arc<ReplayStore>,
    metrics: Arc<Metrics>,
    limiter: Arc<Limiter>,
    shared: Option<Arc<RedisStore>>,
    shutdown: Shutdown,
}

impl State {
    /// The state `config` describes: its keys file read, its shared store set up (connected
    /// on first use).
    ///
    /// # Errors
    /// The keys file does not read, or the shared state's URL is not valid.
    pub(crate) fn new(config: TransportConfig) -> Result<Self, ConfigError> {
        let keys = load_keys(&config).map_err(ConfigError::Keys)?;
        let shared = match &config.shared_state {
            Some(shared) => Some(Arc::new(
                RedisStore::new(shared).map_err(|error| ConfigError::State(error.0))?,
            )),
            None => None,
        };
        let mut limiter = Limiter::new();
        if let (Some(store), Some(settings)) = (&shared, &config.shared_state) {
            limiter = limiter.shared(Arc::clone(store) as _, settings.on_failure);
        }
        Ok(Self {
            keys: RwLock::new(Arc::new(keys)),
            cors: Cors::new(&config.cors_origins),
            replay: Arc::new(ReplayStore::new(config.resume.clone())),
            metrics: Arc::new(Metrics::new()),
            limiter: Arc::new(limiter),
            shared,
            config,
            backend: OnceLock::new(),
            shutdown: Shutdown::default(),
        })
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

    /// The key table in force.
    pub(crate) fn keys(&self) -> Arc<ApiKeys> {
        Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Reads the keys file again and puts its table in force; a file that does not read
    /// leaves the table in force as it is. Running requests keep their admissions.
    ///
    /// # Errors
    /// Why the file was not taken.
    pub(crate) fn reload_keys(&self) -> Result<usize, KeysFileError> {
        let keys = load_keys(&self.config)?;
        let count = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
        Ok(count)
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

    /// The store replicas share, when there is one.
    pub(crate) fn shared(&self) -> Option<&Arc<RedisStore>> {
        self.shared.as_ref()
    }

    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

/// Why a server could not be made from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The API keys file was not taken.
    #[error(transparent)]
    Keys(#[from] KeysFileError),
    /// The shared state store's settings are not valid.
    #[error("{0}")]
    State(String),
}

/// The flags' keys and the keys file's.
fn load_keys(config: &TransportConfig) -> Result<ApiKeys, KeysFileError> {
    match &config.api_keys_file {
        Some(path) => ApiKeys::with_file(&config.api_keys, config.rate_limits, path),
        None => Ok(ApiKeys::new(&config.api_keys, config.rate_limits)),
    }
}
