//! `GET /ws/chat`: chat over a WebSocket. Several turns share one socket; `cancel` stops the
//! current generation; a bad message gets an `error` message and the socket stays usable;
//! closing the socket cancels. The server pings a quiet socket every keep-alive interval and
//! answers the client's pings.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use llm_engine::EngineEvent;
use llm_protocol::ws::{ClientMessage, ServerMessage};
use llm_protocol::{FinishReason, GenerateRequest};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::generate::start_generation;
use crate::body::ResponseBody;
use crate::connection::ConnectionSlot;
use crate::error::{Error, Result};
use crate::http::{response_id, RequestInfo};
use crate::state::State;
use crate::stream::{Generation, KeepAlive};

/// Checks the handshake and answers 101; the session runs once hyper hands over the socket.
pub(crate) fn upgrade<B: Send + 'static>(
    state: &Arc<State>,
    mut request: Request<B>,
    info: &RequestInfo,
) -> Result<Response<ResponseBody>> {
    let headers = request.headers();
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(Error::InvalidUpgrade("`Upgrade: websocket` is required"));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Error::InvalidUpgrade("`Connection: upgrade` is required"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|version| version != "13")
    {
        return Err(Error::InvalidUpgrade(
            "`Sec-WebSocket-Version: 13` is required",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Error::InvalidUpgrade("`Sec-WebSocket-Key` is required"));
    };
    let accept = derive_accept_key(key.as_bytes());
    check_origin(state, headers)?;
    // Fail now rather than after the 101 when the model is not loaded yet.
    state.backend()?;
    // hyper lets go of the connection once it is upgraded: the session keeps its place under
    // the connection limit.
    let place = request
        .extensions()
        .get::<ConnectionSlot>()
        .and_then(ConnectionSlot::take);
    let upgrade = hyper::upgrade::on(&mut request);
    let session_state = Arc::clone(state);
    let info = info.clone();
    state.shutdown().spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let limit = session_state.config().body_limit;
                let config = WebSocketConfig::default()
                    .max_message_size(Some(limit))
                    .max_frame_size(Some(limit));
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                Session::new(session_state, info, socket).run().await;
                drop(place);
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(ResponseBody::full(Vec::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = response.headers_mut();
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

/// Browsers send `Origin` with every WebSocket handshake and, unlike `fetch`, enforce no CORS
/// on the answer: a page may open a socket only from the server's own origin or an origin
/// allowed by `--cors-origin`. Clients that are not browsers send no `Origin`.
fn check_origin(state: &State, headers: &HeaderMap) -> Result<()> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    if state.cors().allowed_origin(headers).is_some() {
        return Ok(());
    }
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let origin_host = origin.split_once("://").map(|(_, host)| host);
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    match (origin_host, host) {
        (Some(origin_host), Some(host)) if origin_host.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(Error::OriginNotAllowed(origin)),
    }
}

/// Whether a comma-separated header holds `token`, ignoring case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// One socket's conversation.
struct Session {
    state: Arc<State>,
    info: RequestInfo,
    socket: WebSocketStream<TokioIo<Upgraded>>,
    current: Option<Generation>,
    turns: u64,
}

/// What the loop does next.
enum Step {
    Continue,
    Close,
}

impl Session {
    fn new(
        state: Arc<State>,
        info: RequestInfo,
        socket: WebSocketStream<TokioIo<Upgraded>>,
    ) -> Self {
        Self {
            state,
            info,
            socket,
            current: None,
            turns: 0,
        }
    }

    async fn run(mut self) {
        let mut keep_alive = KeepAlive::new(self.state.config().keep_alive_interval);
        let deadline = self.state.shutdown().deadline();
        let draining = self.state.shutdown().draining();
        loop {
            // Shutting down: an idle socket closes now, a busy one after its turn.
            if draining.is_cancelled() && self.current.is_none() {
                self.close_going_away().await;
                return;
            }
            let step = tokio::select! {
                biased;
                () = draining.cancelled(), if self.current.is_none() => Step::Continue,
                () = deadline.cancelled() => {
                    if let Some(mut generation) = self.current.take() {
                        generation.cancel("server shutting down");
                        drop(generation);
                        let error = Error::ShuttingDown;
                        let _ = self.send(&ServerMessage::Error { error: error.to_api_error() }).await;
                    }
                    self.close_going_away().await;
                    Step::Close
                }
                message = self.socket.next() => match message {
                    Some(Ok(message)) => self.on_message(message).await,
                    // Closed or broken: dropping the generation cancels it.
                    Some(Err(_)) | None => Step::Close,
                },
                event = next_event(&mut self.current) => self.on_event(event).await,
                () = keep_alive.due() => {
                    match self.socket.send(Message::Ping(Default::default())).await {
                        Ok(()) => Step::Continue,
                        Err(_) => Step::Close,
                    }
                }
            };
            keep_alive.sent();
            if matches!(step, Step::Close) {
                if let Some(generation) = &mut self.current {
                    generation.cancel("socket closed");
                }
                return;
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Step {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => return self.error(&Error::BinaryMessage).await,
            Message::Close(_) => return Step::Close,
            // Pongs are written by the protocol layer on the next read or write.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Step::Continue,
        };
        match ClientMessage::from_json(&text) {
            Err(error) => self.error(&Error::InvalidRequest(error)).await,
            Ok(ClientMessage::Cancel) => match self.current.take() {
                Some(mut generation) => {
                    generation.cancel("cancelled by the client");
                    drop(generation);
                    self.send(&ServerMessage::Done {
                        finish_reason: FinishReason::Cancelled,
                        usage: None,
                    })
                    .await
                }
                // Cancelling nothing is harmless: the generation may have just ended.
                None => Step::Continue,
            },
            Ok(ClientMessage::Chat(request)) => {
                if self.current.is_some() {
                    return self.error(&Error::Busy).await;
                }
                if request.n.is_some_and(|n| n > 1) {
                    let error = llm_engine::Error::Unsupported {
                        param: "n",
                        reason: "a WebSocket turn streams one choice; send several turns",
                    };
                    return self.error(&error.into()).await;
                }
                self.turns += 1;
                let info = RequestInfo {
                    id: format!("{}.{}", self.info.id, self.turns),
                    endpoint: self.info.endpoint,
                    received: std::time::Instant::now(),
                    client: self.info.client.clone(),
                    key: self.info.key.clone(),
                    limits: self.info.limits,
                    rate: std::sync::OnceLock::new(),
                };
                match start_generation(&self.state, &GenerateRequest::from(&*request), &info).await
                {
                    Ok((generation, _)) => {
                        self.current = Some(generation);
                        Step::Continue
                    }
                    Err(error) => self.error(&error).await,
                }
            }
        }
    }

    async fn on_event(&mut self, event: Option<EngineEvent>) -> Step {
        let message = match event {
            Some(EngineEvent::Delta(delta)) => {
                let token = (!delta.text.is_empty()).then_some(ServerMessage::Token {
                    content: delta.text,
                });
                let calls = delta
                    .tool_calls
                    .into_iter()
                    .map(|piece| ServerMessage::ToolCall {
                        index: piece.index,
                        id: piece.name.is_some().then(|| response_id("call_")),
                        name: piece.name,
                        arguments: piece.arguments,
                    });
                for message in token.into_iter().chain(calls) {
                    if let Step::Close = self.send(&message).await {
                        return Step::Close;
                    }
                }
                return Step::Continue;
            }
            Some(EngineEvent::Finished(finish)) => {
                self.current = None;
                ServerMessage::Done {
                    finish_reason: finish.reason,
                    usage: Some(finish.usage),
                }
            }
            Some(EngineEvent::Error(error)) => {
                self.current = None;
                ServerMessage::Error {
                    error: Error::Engine(error).to_api_error(),
                }
            }
            None => {
                self.current = None;
                return Step::Continue;
            }
        };
        self.send(&message).await
    }

    /// Closes the socket with 1001: the server is shutting down.
    async fn close_going_away(&mut self) {
        let close = CloseFrame {
            code: CloseCode::Away,
            reason: "server shutting down".into(),
        };
        let _ = self.socket.send(Message::Close(Some(close))).await;
    }

    async fn error(&mut self, error: &Error) -> Step {
        self.send(&ServerMessage::Error {
            error: error.to_api_error(),
        })
        .await
    }

    async fn send(&mut self, message: &ServerMessage) -> Step {
        let text = serde_json::to_string(message).expect("server messages serialize");
        match self.socket.send(Message::text(text)).await {
            Ok(()) => Step::Continue,
            Err(_) => Step::Close,
        }
    }
}

async fn next_event(current: &mut Option<Generation>) -> Option<EngineEvent> {
    match current {
        Some(generation) => generation.next_event().await,
        None => std::future::pending().await,
    }
}
