//! Wiring: bind, load the model in the background, serve until a shutdown signal.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use llm_engine::Engine;
use llm_transport::{OnFailure, RateLimits, Server, SharedState, TransportConfig};
use tokio::net::TcpListener;

use crate::cli::{Args, StateFailure};

/// The chat page served at `/`, without its SSE parser.
const CHAT_PAGE: &str = include_str!("chat.html");
/// The SSE parser the page shares with the browser examples.
const SSE_PARSER: &str = include_str!("../../../examples/browser/sse.js");
/// The line of the page the parser replaces.
const SSE_PARSER_MARKER: &str = "// @include sse.js";

/// The chat page with its parser in place.
fn chat_page() -> String {
    let (before, after) = CHAT_PAGE
        .split_once(SSE_PARSER_MARKER)
        .expect("the chat page has the parser's marker");
    let after = after.split_once('\n').map_or("", |(_, rest)| rest);
    format!("{before}{SSE_PARSER}{after}")
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let address = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("could not listen on {address}"))?;
    let mut config = TransportConfig::default();
    config.body_limit = args.body_limit;
    config.keep_alive_interval = Duration::from_secs_f64(args.keep_alive_secs);
    config.header_read_timeout = Duration::from_secs_f64(args.header_timeout_secs);
    config.header_limit = args.header_limit as usize;
    config.stream_buffer = args.stream_buffer as usize;
    config.max_connections = args.max_connections as usize;
    config.request_timeout = Duration::from_secs_f64(args.request_timeout_secs);
    config.max_choices = args.max_choices;
    config.rate_limits = RateLimits {
        requests_per_minute: args.rate_limit_rpm,
        tokens_per_minute: args.rate_limit_tpm,
        concurrency: args.rate_limit_concurrency,
    };
    config.api_keys = args.api_keys.clone();
    config.api_keys_file = args.api_keys_file.clone();
    if let Some(url) = &args.state_url {
        let mut shared = SharedState::new(url.clone());
        shared.on_failure = match args.state_failure {
            StateFailure::Open => OnFailure::Open,
            StateFailure::Closed => OnFailure::Closed,
        };
        shared.timeout = Duration::from_millis(u64::from(args.state_timeout_ms));
        shared.key_prefix.clone_from(&args.state_prefix);
        shared.replay_max_events = args.state_replay_max_events as usize;
        config.shared_state = Some(shared);
    }
    config.cors_origins = args.cors_origins.clone();
    config.resume.grace = Duration::from_secs_f64(args.resume_grace_secs);
    config.resume.ttl = Duration::from_secs_f64(args.replay_ttl_secs);
    config.resume.budget = args.replay_budget_mb as usize * (1 << 20);
    config.index_html = Some(Bytes::from(chat_page()));
    let server = Server::try_new(config).context("the server could not start")?;
    reload_keys_on_hangup(&server);

    let mut builder = Engine::builder()
        .model(args.model.clone().unwrap_or_default())
        .weights(args.weights)
        .device(args.device)
        .prefix_cache_entries(args.prefix_cache_entries)
        .max_num_seqs(usize::from(args.max_num_seqs))
        .queue_limit(args.queue_limit)
        .event_buffer(args.event_buffer as usize);
    if let Some(name) = &args.served_model_name {
        builder = builder.served_name(name);
    }
    if let Some(dir) = &args.cache_dir {
        builder = builder.cache_dir(dir);
    }
    tracing::info!(
        auth = if args.api_keys.is_empty() && args.api_keys_file.is_none() {
            "off"
        } else {
            "api keys"
        },
        shared_state = if args.state_url.is_some() {
            "redis"
        } else {
            "local"
        },
        "listening on http://{address} (loading the model; /health answers 503 until it is ready)"
    );

    // The server answers /health (503) while the model loads; a failed load ends the process.
    let serving = server.serve(
        listener,
        llm_transport::shutdown_signal(),
        Duration::from_secs_f64(args.shutdown_grace_secs),
    );
    tokio::pin!(serving);
    let engine = tokio::select! {
        engine = builder.build() => engine.context("the model could not be loaded")?,
        result = &mut serving => return result.context("the server stopped"),
    };
    tracing::info!(
        model = %engine.model().name,
        "ready: OpenAI base URL http://{address}/v1, model `{}`, chat page http://{address}/",
        engine.model().name
    );
    server.set_engine(engine);
    serving.await.context("the server stopped")
}

/// Reads the API keys file again on each SIGHUP: streams running go on; a file that does not
/// read leaves the keys in force, and says why in the log.
fn reload_keys_on_hangup(server: &Server) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "SIGHUP cannot be caught: the keys file will not be reloaded");
                return;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match server.reload_keys() {
                    Ok(keys) => tracing::info!(keys, "API keys reloaded"),
                    Err(error) => {
                        tracing::error!(%error, "API keys not reloaded; the previous keys stay in force");
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = server;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_page_carries_the_shared_parser() {
        let page = chat_page();
        assert!(!page.contains(SSE_PARSER_MARKER));
        assert_eq!(page.matches("function createSseParser(onEvent)").count(), 1);
        assert!(
            page.contains("const KEY_STORAGE"),
            "the page's own script follows"
        );
    }
}
