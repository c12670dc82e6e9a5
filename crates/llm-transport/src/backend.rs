//! The seam between the transport and whatever generates text.
//!
//! The server holds a [`Backend`]: in production the real [`Engine`]; in tests and benchmarks
//! of this layer a [`ScriptedEngine`](crate::ScriptedEngine) with exactly timed tokens and
//! injected faults.

use std::pin::Pin;

use futures_core::Stream;
use futures_util::future::BoxFuture;
use llm_engine::{Engine, EngineEvent, EngineStats, ModelInfo};
use llm_protocol::tokenize::TokenizeRequest;
use llm_protocol::GenerateRequest;

/// The events of one generation: deltas, then one finish or error, then the end. Dropping it
/// cancels the generation.
pub type EventStream = Pin<Box<dyn Stream<Item = EngineEvent> + Send>>;

/// What the transport needs from an engine.
pub trait Backend: Send + Sync + 'static {
    /// The served model.
    fn model(&self) -> &ModelInfo;

    /// Starts a generation. Fails at once for requests the engine refuses (invalid,
    /// unsupported, overloaded, shutting down).
    ///
    /// # Errors
    /// The engine's reason for refusing the request.
    fn submit(&self, request: &GenerateRequest) -> llm_engine::Result<EventStream>;

    /// The token ids of a prompt as the model reads it, without generating.
    ///
    /// # Errors
    /// The engine's reason for refusing the request.
    fn tokenize(
        &self,
        request: &TokenizeRequest,
    ) -> BoxFuture<'static, llm_engine::Result<Vec<u32>>>;

    /// The text of token ids.
    ///
    /// # Errors
    /// An id outside the vocabulary, or the engine shutting down.
    fn detokenize(&self, tokens: Vec<u32>) -> BoxFuture<'static, llm_engine::Result<String>>;

    /// Current counters, for `/metrics`.
    fn stats(&self) -> EngineStats;

    /// Stops admitting requests; later submissions fail with `ShuttingDown`.
    fn close(&self);
}

impl Backend for Engine {
    fn model(&self) -> &ModelInfo {
        Engine::model(self)
    }

    fn submit(&self, request: &GenerateRequest) -> llm_engine::Result<EventStream> {
        Ok(Box::pin(Engine::submit(self, request.clone())?))
    }

    fn tokenize(
        &self,
        request: &TokenizeRequest,
    ) -> BoxFuture<'static, llm_engine::Result<Vec<u32>>> {
        let engine = self.clone();
        let request = request.clone();
        Box::pin(async move { engine.tokenize(&request).await })
    }

    fn detokenize(&self, tokens: Vec<u32>) -> BoxFuture<'static, llm_engine::Result<String>> {
        let engine = self.clone();
        Box::pin(async move { engine.detokenize(&tokens).await })
    }

    fn stats(&self) -> EngineStats {
        Engine::stats(self)
    }

    fn close(&self) {
        Engine::close(self);
    }
}
