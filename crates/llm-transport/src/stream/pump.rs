//! The three tasks that move frames: [`pump`] (one generation to one client), [`produce`] (one
//! resumable generation into its replay log) and [`follow`] (a replay log to one client).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::encoder::Encoder;
use super::generation::Generation;
use super::keep_alive::KeepAlive;
use crate::replay::{Attached, ReplayLog, ReplayStore};

async fn send_all(body: &mpsc::Sender<Bytes>, frames: Vec<Bytes>) -> bool {
    for frame in frames {
        if body.send(frame).await.is_err() {
            return false;
        }
    }
    true
}

/// Writes one generation straight to one client, until its end, the client leaving (which
/// drops the generation and so cancels it at once), or the shutdown `deadline`.
pub(crate) async fn pump(
    mut generation: Generation,
    mut encoder: Box<dyn Encoder>,
    body: mpsc::Sender<Bytes>,
    keep_alive: Duration,
    deadline: CancellationToken,
) {
    if !send_all(&body, encoder.open()).await {
        return;
    }
    let mut keep_alive = KeepAlive::new(keep_alive);
    loop {
        tokio::select! {
            biased;
            () = body.closed() => {
                generation.cancel("client disconnected");
                return;
            }
            () = deadline.cancelled() => {
                let frames = generation.shutdown_frames(encoder.as_mut());
                send_all(&body, frames).await;
                return;
            }
            step = generation.next_frames(encoder.as_mut()) => {
                let Some((frames, end)) = step else { return };
                if !send_all(&body, frames).await {
                    generation.cancel("client disconnected");
                    return;
                }
                if end {
                    return;
                }
                keep_alive.sent();
            }
            () = keep_alive.due() => {
                if body.send(encoder.keep_alive()).await.is_err() {
                    generation.cancel("client disconnected");
                    return;
                }
                keep_alive.sent();
            }
        }
    }
}

/// Whether a client follows a stream from another replica (through the shared store).
pub(crate) type Watched = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// Runs one resumable generation into its replay log. With no client attached for `grace`
/// (here, or through `watched` on another replica), the generation is cancelled and the log
/// ends with the encoder's cancelled frames. When the
/// log would take the replay store past its memory budget, the stream ends with an error
/// event (`replay_budget_exhausted`) and the generation is cancelled.
pub(crate) async fn produce(
    mut generation: Generation,
    mut encoder: Box<dyn Encoder>,
    log: Arc<ReplayLog>,
    store: Arc<ReplayStore>,
    grace: Duration,
    watched: Option<Watched>,
    deadline: CancellationToken,
) {
    let mut attached = log.attached();
    let mut alone_since = (*attached.borrow_and_update() == 0).then(Instant::now);
    let mut next = Some(encoder.open());
    while let Some(frames) = next.take() {
        if let Err(error) = store.append(&log, frames) {
            generation.cancel("replay budget exhausted");
            tracing::warn!(%error, "a resumable stream outgrew the replay budget");
            log.append(encoder.error(&error));
            break;
        }
        next = tokio::select! {
            biased;
            () = deadline.cancelled() => {
                log.append(generation.shutdown_frames(encoder.as_mut()));
                None
            }
            changed = attached.changed() => {
                if changed.is_err() {
                    None
                } else {
                    let alone = *attached.borrow_and_update() == 0;
                    alone_since = match (alone, alone_since) {
                        (true, None) => Some(Instant::now()),
                        (true, since) => since,
                        (false, _) => None,
                    };
                    Some(Vec::new())
                }
            }
            () = sleep_until_some(alone_since.map(|since| since + grace)) => {
                let elsewhere = match &watched {
                    Some(watched) => watched().await,
                    None => false,
                };
                if elsewhere {
                    // A client on another replica follows: another grace period.
                    alone_since = Some(Instant::now());
                    Some(Vec::new())
                } else {
                    generation.cancel("no client within the resume grace period");
                    log.append(encoder.cancelled());
                    None
                }
            }
            step = generation.next_frames(encoder.as_mut()) => match step {
                Some((frames, false)) => Some(frames),
                Some((frames, true)) => {
                    log.append(frames);
                    None
                }
                None => None,
            },
        };
    }
    drop(generation);
    store.finish(&log);
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends a replay log to one client from event number `from`, then follows it live until its
/// end, with the log's keep-alive frame while it is silent. Leaving detaches the client; the
/// generation goes on for its grace period.
pub(crate) async fn follow(
    attached: Attached,
    from: usize,
    prelude: Option<Bytes>,
    body: mpsc::Sender<Bytes>,
    keep_alive: Duration,
) {
    let log = attached.log();
    if let Some(prelude) = prelude {
        if body.send(prelude).await.is_err() {
            return;
        }
    }
    let mut events = log.subscribe();
    let mut position = from;
    let mut keep_alive = KeepAlive::new(keep_alive);
    loop {
        let (frames, finished) = {
            let state = events.borrow_and_update();
            let frames = state.frames.get(position..).unwrap_or_default().to_vec();
            (frames, state.finished)
        };
        position += frames.len();
        if !frames.is_empty() {
            if !send_all(&body, frames).await {
                return;
            }
            keep_alive.sent();
        }
        if finished {
            return;
        }
        tokio::select! {
            biased;
            () = body.closed() => return,
            changed = events.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = keep_alive.due() => {
                if body.send(log.keep_alive()).await.is_err() {
                    return;
                }
                keep_alive.sent();
            }
        }
    }
}
