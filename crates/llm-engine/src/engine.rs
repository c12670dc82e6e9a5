//! The engine handle: building it, admitting requests, and driving each one.
//!
//! Every request gets a task that owns it from submission to its final event:
//! 1. It waits for a running slot (a semaphore of `max_num_seqs` permits). The queue in front
//!    of it is bounded; a consumer that leaves while waiting ends the task before anything
//!    reaches mistral.rs.
//! 2. It counts the prompt's tokens with mistral.rs's own chat template and tokenizer, rejects
//!    a prompt that leaves no room in the context, and caps `max_tokens` to what is left.
//! 3. It drains mistral.rs's per-request channel as fast as tokens arrive into a bounded
//!    buffer of deltas. mistral.rs awaits each send, so a task that stopped draining would
//!    stall every sequence in the batch; instead, a consumer that lets the buffer fill is
//!    cancelled with [`Error::SlowConsumer`].
//! 4. Dropping the consumer (or the buffer filling) drops mistral.rs's receiver, and mistral.rs
//!    stops that sequence at its next decode step.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use either::Either;
use indexmap::IndexMap;
use llm_protocol::format::{Grammar, OutputFormat};
use llm_protocol::tokenize::TokenizeRequest;
use llm_protocol::tools::ToolUse;
use llm_protocol::{FinishReason, GenerateRequest, Prompt, TokenLogprob, TopLogprob, Usage};
use mistralrs::core::llguidance::api::TopLevelGrammar;
use mistralrs::core::llguidance::ParserFactory;
use mistralrs::core::{DetokenizationRequest, MistralRsBuilder, TokenizationRequest};
use mistralrs::{
    Constraint, DefaultSchedulerMethod, MistralRs, NormalRequest, Request, RequestMessage,
    Response, SamplingParams, SchedulerConfig,
};
use tokio::sync::{mpsc, Semaphore};

use crate::decode::{Chunk, Decoded, ResponseDecoder};
use crate::error::{Error, Result};
use crate::model::{EngineDevice, ModelSource, Weights};
use crate::stats::{Counters, EngineStats, GaugeGuard};
use crate::stream::{ChatStream, EngineEvent, Finish, TerminalSlot, TextDelta, Timings};
use crate::tools::{self, Piece, ToolCallParser};

/// Capacity of each request's channel from mistral.rs. The request's task drains it at once,
/// so it only absorbs scheduling jitter.
const MISTRAL_CHANNEL: usize = 32;

/// Chat messages in the shape mistral.rs's chat template expects.
type MistralMessages = Vec<IndexMap<String, mistralrs::MessageContent>>;

/// A prompt in mistral.rs's terms.
#[derive(Clone)]
enum MistralPrompt {
    /// Rendered with the chat template.
    Chat(MistralMessages),
    /// Tokenized as it is.
    Text(String),
}

impl MistralPrompt {
    fn message(&self) -> RequestMessage {
        match self {
            Self::Chat(messages) => RequestMessage::Chat {
                messages: messages.clone(),
                enable_thinking: None,
                reasoning_effort: None,
            },
            Self::Text(text) => RequestMessage::Completion {
                text: text.clone(),
                echo_prompt: false,
                best_of: None,
            },
        }
    }

    /// The request that tokenizes this prompt as mistral.rs prefills it: `add_special_tokens`
    /// as the tokenizer defines them, `add_generation_prompt` after a conversation's template.
    fn tokenize(
        &self,
        add_special_tokens: bool,
        add_generation_prompt: bool,
        response: mpsc::Sender<anyhow::Result<Vec<u32>>>,
    ) -> Request {
        let text = match self {
            Self::Chat(messages) => Either::Left(messages.clone()),
            Self::Text(text) => Either::Right(text.clone()),
        };
        Request::Tokenize(TokenizationRequest {
            text,
            tools: None,
            add_generation_prompt: add_generation_prompt && matches!(self, Self::Chat(_)),
            add_special_tokens,
            enable_thinking: None,
            reasoning_effort: None,
            response,
        })
    }
}

/// Called with the timings of every request that finishes (`stop` or `length`): the place to
/// feed latency histograms (queue time, time to first token, inter-token latency, total).
pub type TimingsHook = Arc<dyn Fn(&Timings) + Send + Sync>;

/// Configures and loads an [`Engine`].
#[derive(Clone)]
pub struct EngineBuilder {
    model: ModelSource,
    weights: Weights,
    cache_dir: Option<PathBuf>,
    served_name: Option<String>,
    device: EngineDevice,
    max_num_seqs: usize,
    queue_limit: usize,
    event_buffer: usize,
    prefix_cache_entries: usize,
    on_finish: Option<TimingsHook>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("model", &self.model)
            .field("weights", &self.weights)
            .field("cache_dir", &self.cache_dir)
            .field("served_name", &self.served_name)
            .field("device", &self.device)
            .field("max_num_seqs", &self.max_num_seqs)
            .field("queue_limit", &self.queue_limit)
            .field("event_buffer", &self.event_buffer)
            .field("prefix_cache_entries", &self.prefix_cache_entries)
            .field("on_finish", &self.on_finish.is_some())
            .finish()
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self {
            model: ModelSource::Default,
            weights: Weights::Auto,
            cache_dir: None,
            served_name: None,
            device: EngineDevice::Cpu,
            max_num_seqs: 8,
            queue_limit: 64,
            event_buffer: 1024,
            prefix_cache_entries: 16,
            on_finish: None,
        }
    }
}

impl EngineBuilder {
    /// The model to load (default: SmolLM2-135M-Instruct, fetched on first use).
    #[must_use]
    pub fn model(mut self, model: ModelSource) -> Self {
        self.model = model;
        self
    }

    /// The weight format to run a GGUF model in (default [`Weights::Auto`]: the default model
    /// runs converted to Q8_0, a given file as it is).
    #[must_use]
    pub fn weights(mut self, weights: Weights) -> Self {
        self.weights = weights;
        self
    }

    /// Where the default model is cached (default: [`crate::default_cache_dir`]).
    #[must_use]
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The name the model is served under (default: derived from the model source).
    #[must_use]
    pub fn served_name(mut self, name: impl Into<String>) -> Self {
        self.served_name = Some(name.into());
        self
    }

    /// Where the model runs (default [`EngineDevice::Cpu`]). GPUs need this crate's `cuda` or
    /// `metal` feature; without it [`build`](Self::build) fails with [`Error::Device`].
    #[must_use]
    pub fn device(mut self, device: EngineDevice) -> Self {
        self.device = device;
        self
    }

    /// How many finished conversations the prefix cache keeps (default 16; 0 turns it off).
    /// A request whose prompt begins like a kept one (the same system prompt, or the next turn
    /// of the same chat) reuses its attention cache and computes only the rest of the prompt.
    /// Each entry holds the KV cache of one conversation (for the default model about 24 MB
    /// per 512 tokens).
    #[must_use]
    pub fn prefix_cache_entries(mut self, entries: usize) -> Self {
        self.prefix_cache_entries = entries;
        self
    }

    /// How many requests generate at once, in one batch (default 8, at least 1).
    #[must_use]
    pub fn max_num_seqs(mut self, max_num_seqs: usize) -> Self {
        self.max_num_seqs = max_num_seqs.max(1);
        self
    }

    /// How many requests may wait for a running slot before new ones are refused with
    /// [`Error::Overloaded`] (default 64).
    #[must_use]
    pub fn queue_limit(mut self, queue_limit: usize) -> Self {
        self.queue_limit = queue_limit;
        self
    }

    /// How many undelivered deltas one request may buffer before its consumer counts as too
    /// slow and the request is cancelled (default 1024, at least 1).
    #[must_use]
    pub fn event_buffer(mut self, event_buffer: usize) -> Self {
        self.event_buffer = event_buffer.max(1);
        self
    }

    /// Calls `hook` with the [`Timings`] of every request that finishes, on the request's own
    /// task, before its final event is delivered. Keep it cheap: observe into histograms or
    /// counters.
    #[must_use]
    pub fn on_finish(mut self, hook: impl Fn(&Timings) + Send + Sync + 'static) -> Self {
        self.on_finish = Some(Arc::new(hook));
        self
    }

    /// Fetches (if needed) and loads the model, and starts mistral.rs.
    ///
    /// # Errors
    /// [`Error::Device`], [`Error::ModelFetch`], [`Error::InvalidModel`] or
    /// [`Error::ModelLoad`].
    ///
    /// # Panics
    /// If called outside a Tokio runtime.
    pub async fn build(self) -> Result<Engine> {
        let cache_dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(crate::default_cache_dir);
        // Fail on a missing device before fetching or converting anything.
        let opened = self.device.open()?;
        let (model, weights, device) = (self.model.clone(), self.weights, self.device);
        let pipeline =
            tokio::task::spawn_blocking(move || model.load(&cache_dir, weights, device, &opened))
                .await
                .map_err(|error| Error::ModelLoad {
                    model: self.model.default_name(),
                    source: error.into(),
                })??;
        // Token ids at or past it are refused by `detokenize`: the tokenizer would drop them
        // without a word.
        let (vocab_size, grammars) = {
            let pipeline = pipeline.lock().await;
            let vocab_size = pipeline
                .tokenizer()
                .map_or(usize::MAX, |tokenizer| tokenizer.get_vocab_size(true));
            (vocab_size, pipeline.get_metadata().llg_factory.clone())
        };
        let max_num_seqs = NonZeroUsize::new(self.max_num_seqs).unwrap_or(NonZeroUsize::MIN);
        let scheduler = SchedulerConfig::DefaultScheduler {
            method: DefaultSchedulerMethod::Fixed(max_num_seqs),
        };
        let mistral = MistralRsBuilder::new(pipeline, scheduler, false, None)
            // mistral.rs turns the prefix cache off itself when it may keep no entry.
            .with_prefix_cache_n(self.prefix_cache_entries)
            .build()
            .await;
        let context_length = mistral
            .max_sequence_length(None)
            .ok()
            .flatten()
            .unwrap_or(2048);
        let name = self
            .served_name
            .clone()
            .unwrap_or_else(|| self.model.default_name());
        tracing::info!(model = %name, device = %self.device, context_length, max_num_seqs = self.max_num_seqs, prefix_cache_entries = self.prefix_cache_entries, "engine ready");
        Ok(Engine {
            inner: Arc::new(Inner {
                mistral,
                info: ModelInfo {
                    name,
                    context_length,
                    created: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |since| since.as_secs()),
                },
                runtime: tokio::runtime::Handle::current(),
                slots: Semaphore::new(self.max_num_seqs),
                max_num_seqs: self.max_num_seqs,
                vocab_size,
                grammars,
                admitted: AtomicUsize::new(0),
                queue_limit: self.queue_limit,
                event_buffer: self.event_buffer,
                counters: Counters::default(),
                closed: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                on_finish: self.on_finish.clone(),
            }),
        })
    }
}

/// Facts about the served model.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelInfo {
    /// The name clients use.
    pub name: String,
    /// Prompt plus answer, in tokens.
    pub context_length: usize,
    /// Unix seconds when the model was loaded.
    pub created: u64,
}

impl ModelInfo {
    /// Describes a served model; engines other than [`Engine`] (scripted ones in tests of the
    /// layers above) build theirs with this.
    pub fn new(name: impl Into<String>, context_length: usize, created: u64) -> Self {
        Self {
            name: name.into(),
            context_length,
            created,
        }
    }
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.inner.info)
            .field("stats", &self.stats())
            .finish()
    }
}

struct Inner {
    mistral: Arc<MistralRs>,
    info: ModelInfo,
    runtime: tokio::runtime::Handle,
    slots: Semaphore,
    max_num_seqs: usize,
    /// Token ids below it are the tokenizer's.
    vocab_size: usize,
    /// Compiles structured-output grammars over the model's vocabulary (mistral.rs's own
    /// factory): a grammar is compiled at submission, so that one that cannot be is refused
    /// before anything streams. `None` for a model without a tokenizer.
    grammars: Option<Arc<ParserFactory>>,
    /// Requests submitted and not yet ended, running or waiting: what admission bounds.
    admitted: AtomicUsize,
    queue_limit: usize,
    event_buffer: usize,
    counters: Counters,
    closed: AtomicBool,
    next_id: AtomicU64,
    on_finish: Option<TimingsHook>,
}

impl Inner {
    /// Hands a request to mistral.rs's engine (starting it again first if it has died).
    async fn send_to_mistral(&self, request: Request) -> Result<()> {
        let sender = self
            .mistral
            .get_sender(None)
            .map_err(|error| Error::Generation {
                source: error.into(),
            })?;
        sender.send(request).await.map_err(|_| Error::Generation {
            source: "the mistral.rs engine has stopped".into(),
        })
    }

    /// Called by a request that found mistral.rs's engine thread gone. mistral.rs starts a dead
    /// engine again only when a request next asks it for a sender; this does it as soon as the
    /// thread has ended, so that the next request finds an engine and the restart shows in the
    /// stats at once. The task ends within two seconds whatever happens.
    fn engine_failed(&self) {
        tracing::error!("the mistral.rs engine thread died; the requests it held failed");
        let mistral = Arc::clone(&self.mistral);
        self.runtime.spawn(async move {
            for _ in 0..200 {
                match mistral.restart_if_dead() {
                    Ok(true) => return,
                    Ok(false) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Err(error) => {
                        tracing::error!(%error, "could not restart the mistral.rs engine");
                        return;
                    }
                }
            }
        });
    }
}

impl Engine {
    /// A builder with the defaults: the default model, 8 running, 64 waiting.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The served model.
    pub fn model(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// Current counters. Also starts mistral.rs's engine thread again if it has died with no
    /// request running to notice (health checks and metrics scrapes call this), so that the
    /// restart shows at once rather than at the next request.
    pub fn stats(&self) -> EngineStats {
        if let Err(error) = self.inner.mistral.restart_if_dead() {
            tracing::error!(%error, "could not restart the mistral.rs engine");
        }
        EngineStats {
            engine_restarts: self.inner.mistral.engine_restarts(),
            ..self.inner.counters.snapshot()
        }
    }

    /// Makes mistral.rs's engine thread panic, as a bug in it would, for tests of what clients
    /// see when the engine fails (the vendored mistral.rs panics on `Request::InjectPanic`).
    ///
    /// # Errors
    /// [`Error::Generation`] if the engine cannot be reached.
    #[cfg(feature = "fault-injection")]
    pub async fn crash_model_engine(&self) -> Result<()> {
        self.inner.send_to_mistral(Request::InjectPanic).await
    }

    /// Stops admitting requests: [`submit`](Self::submit) fails with
    /// [`Error::ShuttingDown`] from now on, and requests still waiting for a slot end with it.
    /// Running requests go on; drop their streams to stop them.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.slots.close();
    }

    /// Submits a chat request and returns its event stream at once; generation starts when a
    /// running slot is free.
    ///
    /// # Errors
    /// Fails immediately, before anything is queued, with:
    /// - [`Error::InvalidRequest`] for a request that does not validate;
    /// - [`Error::InvalidRequest`] naming the format's field for a structured-output schema
    ///   that cannot be compiled into a grammar;
    /// - [`Error::Unsupported`] for parameters this engine cannot honour (`n` above 1);
    /// - [`Error::Overloaded`] when the waiting queue is full;
    /// - [`Error::ShuttingDown`] after [`close`](Self::close).
    ///
    /// A prompt too long for the context is reported as the stream's error event, since the
    /// prompt is measured with the model's tokenizer once the request runs.
    pub fn submit(&self, request: impl Into<GenerateRequest>) -> Result<ChatStream> {
        let request = request.into();
        request.validate()?;
        let inner = &self.inner;
        let job = Job::from_request(&request, inner.grammars.as_deref())?;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        // Admitted requests (running or waiting) are bounded by the slots plus the queue.
        let admitted = inner.admitted.fetch_add(1, Ordering::AcqRel);
        if admitted >= inner.max_num_seqs + inner.queue_limit {
            inner.admitted.fetch_sub(1, Ordering::AcqRel);
            Counters::add(&inner.counters.rejected, 1);
            return Err(Error::Overloaded {
                waiting: admitted - inner.max_num_seqs,
                limit: inner.queue_limit,
            });
        }
        inner.counters.waiting.fetch_add(1, Ordering::AcqRel);
        let (deltas, receiver) = mpsc::channel(inner.event_buffer);
        let terminal = TerminalSlot::default();
        let task = RequestTask {
            inner: Arc::clone(inner),
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            job,
            deltas,
            terminal: Arc::clone(&terminal),
            submitted: Instant::now(),
        };
        inner.runtime.spawn(task.run());
        Ok(ChatStream::new(receiver, terminal))
    }

    /// Counts the tokens of `request`'s prompt as the model reads it (after the chat template
    /// for a conversation), without generating: what `usage.prompt_tokens` of the same
    /// request reports. It takes no running slot.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a request that does not validate,
    /// [`Error::ShuttingDown`] after [`close`](Self::close), [`Error::Generation`] when
    /// mistral.rs cannot tokenize it.
    pub async fn count_tokens(&self, request: impl Into<GenerateRequest>) -> Result<usize> {
        let request = request.into();
        request.validate()?;
        Ok(self
            .tokenize(&TokenizeRequest::of_prefill(&request))
            .await?
            .len())
    }

    /// A prompt's token ids, as `POST /tokenize` returns them: with
    /// [`TokenizeRequest::of_prefill`], exactly the tokens a generation prefills.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] after [`Engine::close`], [`Error::Generation`] when the chat
    /// template or the tokenizer fails.
    pub async fn tokenize(&self, request: &TokenizeRequest) -> Result<Vec<u32>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let (sender, mut receiver) = mpsc::channel(1);
        let tokenize = mistral_prompt(&request.prompt, None).tokenize(
            request.add_special_tokens,
            request.add_generation_prompt,
            sender,
        );
        self.inner.send_to_mistral(tokenize).await?;
        answer_of(receiver.recv().await, "tokenization")
    }

    /// The text of token ids, special tokens included, as `POST /detokenize` returns it.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming `tokens[i]` for an id outside the vocabulary,
    /// [`Error::ShuttingDown`] after [`Engine::close`].
    pub async fn detokenize(&self, tokens: &[u32]) -> Result<String> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        if let Some(at) = tokens
            .iter()
            .position(|&id| id as usize >= self.inner.vocab_size)
        {
            return Err(Error::InvalidRequest {
                param: Some(format!("tokens[{at}]")),
                message: format!(
                    "token {} is outside the vocabulary of {} tokens",
                    tokens[at], self.inner.vocab_size
                ),
            });
        }
        let (sender, mut receiver) = mpsc::channel(1);
        let detokenize = Request::Detokenize(DetokenizationRequest {
            tokens: tokens.to_vec(),
            skip_special_tokens: false,
            response: sender,
        });
        self.inner.send_to_mistral(detokenize).await?;
        answer_of(receiver.recv().await, "detokenization")
    }
}

/// What a request asks mistral.rs to do, converted once at submission.
struct Job {
    prompt: MistralPrompt,
    sampling: SamplingParams,
    max_tokens: Option<usize>,
    stops: Vec<String>,
    constraint: Constraint,
    /// Report log probabilities, with this many alternatives.
    logprobs: Option<u8>,
    /// Read tool calls out of the answer: `Some(forced)` when the model may call tools.
    tool_calls: Option<bool>,
}

impl Job {
    fn from_request(request: &GenerateRequest, grammars: Option<&ParserFactory>) -> Result<Self> {
        if request.n.is_some_and(|n| n != 1) {
            return Err(Error::Unsupported {
                param: "n",
                reason: "only one choice per request is generated; send several requests instead",
            });
        }
        let prompt = mistral_prompt(&request.prompt, request.tools.as_ref());
        // `validate` refused a forced call together with a format.
        let format = match &request.tools {
            Some(tools) if tools.forced() => Some(tools::call_format(tools)),
            _ => request.format.clone(),
        };
        let sampling = SamplingParams {
            // OpenAI's default temperature is 1; 0 means greedy, which mistral.rs maps to argmax.
            temperature: Some(request.temperature.unwrap_or(1.0)),
            top_p: request.top_p,
            top_k: request.top_k.map(|k| k as usize),
            frequency_penalty: request.frequency_penalty.map(|value| value as f32),
            presence_penalty: request.presence_penalty.map(|value| value as f32),
            stop_toks: None,
            n_choices: 1,
            // Its own RNG for a seeded request (negative seeds as their two's complement).
            seed: request.seed.map(|seed| seed as u64),
            top_n_logprobs: request.logprobs.map_or(0, usize::from),
            ..SamplingParams::neutral()
        };
        Ok(Self {
            prompt,
            sampling,
            max_tokens: request.max_tokens.map(|max| max as usize),
            stops: request.stop.clone(),
            constraint: match &format {
                Some(format) => compile_format(format, grammars)?,
                None => Constraint::None,
            },
            logprobs: request.logprobs,
            tool_calls: request.tools.as_ref().map(ToolUse::forced),
        })
    }
}

/// How structured JSON is laid out: one space after `,` and `:`, as most JSON a model has read
/// is written, and no other whitespace. Left flexible, a small model can emit whitespace
/// between tokens until `max_tokens` runs out, and the JSON never closes. A schema that sets
/// its own `x-guidance` options (llguidance's) keeps them.
fn json_layout() -> serde_json::Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

/// The mistral.rs constraint for `format`, compiled once here so that a schema that cannot be
/// compiled is the request's error before it is queued.
fn compile_format(format: &OutputFormat, grammars: Option<&ParserFactory>) -> Result<Constraint> {
    let field = format.field;
    let mut schema = match &format.grammar {
        Grammar::JsonObject => serde_json::json!({"type": "object"}),
        Grammar::JsonSchema(schema) => schema.clone(),
    };
    if let serde_json::Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(json_layout);
    }
    let Some(grammars) = grammars else {
        return Err(Error::Unsupported {
            param: field,
            reason: "this model has no tokenizer to constrain its output with",
        });
    };
    grammars
        .create_parser(TopLevelGrammar::from_json_schema(schema.clone()))
        .map_err(|error| Error::InvalidRequest {
            param: Some(field.to_owned()),
            message: format!("the schema of `{field}` cannot be used: {error}"),
        })?;
    Ok(Constraint::JsonSchema(schema))
}

fn mistral_prompt(prompt: &Prompt, tools: Option<&ToolUse>) -> MistralPrompt {
    let message = |role: &str, content: String| {
        IndexMap::from([
            ("role".to_owned(), Either::Left(role.to_owned())),
            ("content".to_owned(), Either::Left(content)),
        ])
    };
    match prompt {
        Prompt::Chat(messages) if tools::needs_render(messages, tools) => MistralPrompt::Chat(
            tools::render(messages, tools)
                .into_iter()
                .map(|(role, content)| message(role, content))
                .collect(),
        ),
        Prompt::Chat(messages) => MistralPrompt::Chat(
            messages
                .iter()
                .map(|chat| message(tools::template_role(chat.role), chat.text()))
                .collect(),
        ),
        Prompt::Text(text) => MistralPrompt::Text(text.clone()),
    }
}

/// A streamed chunk of one sequence: a chat chunk, or a completion chunk for a text prompt.
enum MistralChunk {
    Chat(mistralrs::ChatCompletionChunkResponse),
    Text(mistralrs::core::CompletionChunkResponse),
}

impl MistralChunk {
    /// Feeds the chunk's one choice to `decoder`; `None` for a chunk without a choice. With
    /// the decoded text comes the chunk's token log probability, if it carries one.
    fn decode(
        self,
        decoder: &mut ResponseDecoder,
    ) -> Option<(Decoded, Option<mistralrs::core::ResponseLogprob>)> {
        match self {
            Self::Chat(chunk) => {
                let usage = chunk
                    .usage
                    .as_ref()
                    .map(|usage| (usage.prompt_tokens, usage.completion_tokens));
                let choice = chunk.choices.into_iter().next()?;
                let decoded = decoder.push(Chunk {
                    text: choice.delta.content.as_deref().unwrap_or_default(),
                    finish_reason: choice.finish_reason.as_deref(),
                    usage,
                });
                Some((decoded, choice.logprobs))
            }
            // Completion chunks carry no token counts: the decoder's own are used.
            Self::Text(chunk) => {
                let choice = chunk.choices.into_iter().next()?;
                let decoded = decoder.push(Chunk {
                    text: &choice.text,
                    finish_reason: choice.finish_reason.as_deref(),
                    usage: None,
                });
                Some((decoded, choice.logprobs))
            }
        }
    }
}

/// A token's text and bytes as the model's vocabulary holds them (a special token by its
/// name). Without a token table, the id alone.
fn token_text(grammars: Option<&ParserFactory>, id: u32) -> (String, Vec<u8>) {
    let bytes = grammars.map_or_else(
        || format!("<token {id}>").into_bytes(),
        |grammars| grammars.tok_env().tok_trie().decode_ext(&[id], true),
    );
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// mistral.rs's log probability of one token (natural logs, from the vendored sampler), in
/// OpenAI's shape.
fn token_logprob(
    grammars: Option<&ParserFactory>,
    logprob: &mistralrs::core::ResponseLogprob,
) -> TokenLogprob {
    let (token, bytes) = token_text(grammars, logprob.token_id);
    TokenLogprob {
        token,
        logprob: logprob.logprob,
        bytes: Some(bytes),
        top_logprobs: logprob
            .top_logprobs
            .iter()
            .map(|top| {
                let (token, bytes) = token_text(grammars, top.token);
                TopLogprob {
                    token,
                    logprob: top.logprob,
                    bytes: Some(bytes),
                }
            })
            .collect(),
    }
}

/// One request's task: see the module docs.
struct RequestTask {
    inner: Arc<Inner>,
    id: u64,
    job: Job,
    deltas: mpsc::Sender<TextDelta>,
    terminal: TerminalSlot,
    submitted: Instant,
}

/// How a request's generation phase ended.
enum Outcome {
    Finished(Box<Finish>),
    Failed(Error),
    Cancelled,
}

impl RequestTask {
    async fn run(self) {
        let inner = Arc::clone(&self.inner);
        let _admitted = GaugeGuard::adopt(&inner.admitted);
        let waiting = GaugeGuard::adopt(&inner.counters.waiting);
        let permit = tokio::select! {
            permit = inner.slots.acquire() => permit,
            () = self.deltas.closed() => {
                drop(waiting);
                Counters::add(&inner.counters.cancelled, 1);
                tracing::debug!(request = self.id, "cancelled while queued");
                return;
            }
        };
        drop(waiting);
        let Ok(_permit) = permit else {
            self.end(Outcome::Failed(Error::ShuttingDown));
            return;
        };
        let _running = GaugeGuard::enter(&inner.counters.running);
        let queue = self.submitted.elapsed();
        let outcome = self.generate(queue).await;
        self.end(outcome);
    }

    fn end(&self, outcome: Outcome) {
        let counters = &self.inner.counters;
        let event = match outcome {
            Outcome::Finished(finish) => {
                Counters::add(&counters.finished, 1);
                if let Some(hook) = &self.inner.on_finish {
                    hook(&finish.timings);
                }
                EngineEvent::Finished(*finish)
            }
            Outcome::Failed(error) => {
                if matches!(error, Error::SlowConsumer { .. }) {
                    Counters::add(&counters.cancelled, 1);
                } else {
                    Counters::add(&counters.failed, 1);
                }
                tracing::debug!(request = self.id, %error, "request failed");
                EngineEvent::Error(error)
            }
            Outcome::Cancelled => {
                Counters::add(&counters.cancelled, 1);
                tracing::debug!(request = self.id, "cancelled while running");
                return;
            }
        };
        *self
            .terminal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(event);
        // Dropping `self.deltas` (with the task) then tells the stream the terminal is set.
    }

    async fn generate(&self, queue: Duration) -> Outcome {
        let prompt_tokens = match self.count_prompt_tokens().await {
            Ok(Some(count)) => count,
            Ok(None) => return Outcome::Cancelled,
            Err(error) => return Outcome::Failed(error),
        };
        let context = self.inner.info.context_length;
        if prompt_tokens >= context {
            return Outcome::Failed(Error::ContextOverflow {
                prompt_tokens,
                context,
            });
        }
        let room = context - prompt_tokens;
        let max_len = self.job.max_tokens.map_or(room, |max| max.min(room));
        Counters::add(&self.inner.counters.prompt_tokens, prompt_tokens as u64);

        let (sender, mut responses) = mpsc::channel(MISTRAL_CHANNEL);
        let request = Request::Normal(Box::new(NormalRequest {
            messages: self.job.prompt.message(),
            sampling_params: SamplingParams {
                max_len: Some(max_len),
                ..self.job.sampling.clone()
            },
            response: sender,
            return_logprobs: self.job.logprobs.is_some(),
            // Always streaming: mistral.rs notices a dropped receiver only on a send, and a
            // non-streaming request sends nothing until it is complete.
            is_streaming: true,
            id: usize::try_from(self.id).unwrap_or_default(),
            constraint: self.job.constraint.clone(),
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: None,
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        if let Err(error) = self.inner.send_to_mistral(request).await {
            return Outcome::Failed(error);
        }
        Counters::add(&self.inner.counters.started, 1);

        let mut decoder = ResponseDecoder::new(self.job.stops.clone(), prompt_tokens);
        let mut timings = Timings {
            queue,
            ..Timings::default()
        };
        // Log probabilities of tokens whose text the decoder has not released yet.
        let mut pending = Vec::new();
        let mut calls = self.job.tool_calls.map(ToolCallParser::new);
        loop {
            let response = tokio::select! {
                biased;
                () = self.deltas.closed() => return Outcome::Cancelled,
                response = responses.recv() => response,
            };
            let chunk = match response {
                Some(Response::Chunk(chunk)) => MistralChunk::Chat(chunk),
                Some(Response::CompletionChunk(chunk)) => MistralChunk::Text(chunk),
                Some(
                    Response::ModelError(message, _) | Response::CompletionModelError(message, _),
                ) => {
                    return Outcome::Failed(Error::Generation {
                        source: message.into(),
                    })
                }
                Some(Response::InternalError(source) | Response::ValidationError(source)) => {
                    return Outcome::Failed(Error::Generation { source })
                }
                // Whole (non-streamed) responses, images, speech, raw logits and embeddings:
                // never asked for by a streaming request.
                Some(_) => continue,
                // Every sequence that ends sends a final chunk with its finish reason (the
                // vendored mistral.rs does so even when the last token leaves a character
                // unfinished). A channel that closes without one was dropped by an engine
                // thread that died (a panic): the answer is cut, and must not pass for complete.
                None => {
                    self.inner.engine_failed();
                    return Outcome::Failed(Error::EngineFailed {
                        generated: decoder.tokens(),
                    });
                }
            };
            let Some((decoded, logprob)) = chunk.decode(&mut decoder) else {
                continue;
            };
            if let Some(logprob) = logprob.filter(|_| self.job.logprobs.is_some()) {
                pending.push(token_logprob(self.inner.grammars.as_deref(), &logprob));
            }
            Counters::add(&self.inner.counters.generated_tokens, 1);
            match decoded {
                Decoded::Text(text) => {
                    let usage = decoder.usage();
                    let deltas = split_calls(text, calls.as_mut(), false, &mut pending);
                    if let Err(outcome) = self.emit(deltas, &mut pending, usage, &mut timings) {
                        return outcome;
                    }
                }
                Decoded::Finished {
                    text,
                    mut reason,
                    stop_sequence,
                    usage,
                } => {
                    let deltas = split_calls(text, calls.as_mut(), true, &mut pending);
                    if let Err(outcome) = self.emit(deltas, &mut pending, usage, &mut timings) {
                        return outcome;
                    }
                    if reason == FinishReason::Stop && calls.as_ref().is_some_and(|c| c.calls() > 0)
                    {
                        reason = FinishReason::ToolCalls;
                    }
                    timings.total = self.submitted.elapsed();
                    return Outcome::Finished(Box::new(Finish {
                        reason,
                        stop_sequence,
                        usage,
                        timings,
                    }));
                }
                Decoded::Failed(error) => return Outcome::Failed(error),
            }
        }
    }

    /// Hands deltas to the consumer without ever waiting for it, the first with the log
    /// probabilities of the tokens its text completes. Log probabilities without text (a stop
    /// sequence's tokens, the end-of-answer token) are dropped, as OpenAI reports none for them.
    fn emit(
        &self,
        deltas: Vec<TextDelta>,
        pending: &mut Vec<TokenLogprob>,
        usage: Usage,
        timings: &mut Timings,
    ) -> Result<(), Outcome> {
        for mut delta in deltas {
            if delta.text.is_empty() && delta.tool_calls.is_empty() {
                continue;
            }
            let at = self.submitted.elapsed();
            match self.deltas.try_reserve() {
                Ok(slot) => {
                    timings.time_to_first_token.get_or_insert(at);
                    timings.token_times.push(at);
                    delta.logprobs = std::mem::take(pending);
                    delta.usage = usage;
                    slot.send(delta);
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    return Err(Outcome::Failed(Error::SlowConsumer {
                        buffered: self.inner.event_buffer,
                    }))
                }
                Err(mpsc::error::TrySendError::Closed(())) => return Err(Outcome::Cancelled),
            }
        }
        Ok(())
    }

    /// Counts the prompt's tokens after the chat template, exactly as mistral.rs will prefill
    /// it. `Ok(None)` when the consumer left meanwhile.
    async fn count_prompt_tokens(&self) -> Result<Option<usize>> {
        let (sender, mut receiver) = mpsc::channel(1);
        self.inner
            .send_to_mistral(self.job.prompt.tokenize(true, true, sender))
            .await?;
        // The vendored mistral.rs answers a receiver that is gone with a warning (upstream
        // panicked), so the receiver may simply be dropped when the consumer leaves.
        tokio::select! {
            () = self.deltas.closed() => Ok(None),
            answer = receiver.recv() => answer_of(answer, "tokenization").map(|tokens| Some(tokens.len())),
        }
    }
}

/// `text` as deltas: as it is, or, when the model may call tools, split into answer text and
/// call pieces (`last` ends the answer, releasing what the parser held back). A call's tokens
/// carry no log probabilities, as OpenAI reports them for content only.
fn split_calls(
    text: String,
    parser: Option<&mut ToolCallParser>,
    last: bool,
    pending: &mut Vec<TokenLogprob>,
) -> Vec<TextDelta> {
    let Some(parser) = parser else {
        return vec![TextDelta::from(text)];
    };
    let mut pieces = parser.push(&text);
    if last {
        pieces.extend(parser.finish());
    }
    let mut deltas: Vec<TextDelta> = Vec::new();
    for piece in pieces {
        match (piece, deltas.last_mut()) {
            (Piece::Text(text), Some(delta)) if delta.tool_calls.is_empty() => {
                delta.text.push_str(&text);
            }
            (Piece::Text(text), _) => deltas.push(TextDelta::from(text)),
            (Piece::Call(call), Some(delta)) => delta.tool_calls.push(call),
            (Piece::Call(call), None) => deltas.push(TextDelta {
                tool_calls: vec![call],
                ..TextDelta::default()
            }),
        }
    }
    if deltas.first().is_some_and(|delta| delta.text.is_empty()) {
        pending.clear();
    }
    deltas
}

/// mistral.rs's answer to a tokenization or detokenization request.
fn answer_of<T>(answer: Option<anyhow::Result<T>>, what: &str) -> Result<T> {
    match answer {
        Some(Ok(answer)) => Ok(answer),
        Some(Err(error)) => Err(Error::Generation {
            source: error.into(),
        }),
        None => Err(Error::Generation {
            source: format!("mistral.rs dropped the {what} request").into(),
        }),
    }
}
