//! Small pieces of HTTP every handler uses: reading a bounded body, JSON and event-stream
//! responses, request and response ids, and `Last-Event-ID`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::auth::KeyEntry;
use crate::body::ResponseBody;
use crate::config::RateLimits;
use crate::error::{Error, Result};
use crate::ratelimit::Status;
use crate::replay;

/// What the log and metrics need to know about a request.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    pub(crate) id: String,
    /// The route's label in metrics and logs.
    pub(crate) endpoint: &'static str,
    pub(crate) received: Instant,
    /// Who asks, for rate limits: the API key's name, or the client's address when keys
    /// are off.
    pub(crate) client: String,
    /// The API key it presented, when keys are on.
    pub(crate) key: Option<Arc<KeyEntry>>,
    /// Its rate limits: its key's, or the server's defaults.
    pub(crate) limits: RateLimits,
    /// Its limits as its admission left them, for the answer's `x-ratelimit-*` headers.
    pub(crate) rate: OnceLock<Status>,
}

/// The address of a connection's client, in each request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) std::net::SocketAddr);

/// Marks a response whose log line is written by its generation (with its tokens), not by
/// the router.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Streamed;

/// Reads a request body of at most `limit` bytes.
///
/// # Errors
/// [`Error::BodyTooLarge`] past the limit (declared or sent), [`Error::BodyRead`] when the
/// connection fails.
pub(crate) async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::BodyTooLarge { limit });
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Error::BodyTooLarge { limit })
        }
        Err(_) => Err(Error::BodyRead),
    }
}

/// A JSON body with its status.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A `text/event-stream` answer fed by `receiver`, marked so that proxies do not buffer it.
pub(crate) fn event_stream_response(receiver: mpsc::Receiver<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Channel(receiver));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.extensions_mut().insert(Streamed);
    response
}

/// `retry: MILLIS` alone in a block, sent first on `GET /stream` so that browsers reconnect
/// quickly. With no `data:` field the block dispatches no event.
pub(crate) fn retry_prelude(millis: u64) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("req-{:016x}", random_u64()), str::to_owned)
}

fn random_u64() -> u64 {
    getrandom::u64().expect("the operating system's random generator works")
}

/// A fresh response id, `prefix` (with its separator: `chatcmpl-`, `resp_`) and 128 random
/// bits from the operating system: knowing a response id is what allows resuming its stream.
pub(crate) fn response_id(prefix: &str) -> String {
    format!("{prefix}{:016x}{:016x}", random_u64(), random_u64())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The response id and event number a `Last-Event-ID` names.
///
/// # Errors
/// [`Error::InvalidLastEventId`] when it is not `RESPONSE:N`.
pub(crate) fn event_position(text: &str) -> Result<(&str, usize)> {
    replay::parse_event_id(text).ok_or_else(|| Error::InvalidLastEventId(text.to_owned()))
}

/// The `Last-Event-ID` header, or the `last_event_id` query parameter for clients that
/// cannot set headers.
pub(crate) fn last_event_id<B>(request: &Request<B>) -> Option<String> {
    if let Some(value) = request.headers().get("last-event-id") {
        // A value that is not visible ASCII is passed on to fail parsing, not ignored.
        return Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "last_event_id")
        .map(|(_, value)| value.into_owned())
}

/// Milliseconds with two decimals, for log lines.
pub(crate) fn log_millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e5).round() / 100.0
}
