//! Replay logs of resumable streams: every event of a response, kept so that a client that
//! reconnects with `Last-Event-ID` gets exactly the events after it, then the live rest.
//!
//! Logs live in a [`ReplayStore`] with a time to live after their stream ends and one memory
//! budget for all of them. An id that was known but has expired is remembered for a while so
//! that it gets 410 rather than 404.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::ResumeConfig;
use crate::error::{Error, Result};

/// How long, at least, an expired id is remembered as expired.
const TOMBSTONE_MIN: Duration = Duration::from_secs(3600);
/// The most expired ids remembered.
const TOMBSTONE_LIMIT: usize = 100_000;
/// A new resumable stream needs this fraction of the budget free (after finished logs are
/// forgotten), so that it is refused up front rather than cut after a few tokens.
const ADMISSION_ROOM: usize = 16;

/// The events of one response so far.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    /// Encoded SSE events; event `n` has id `RESPONSE:n`.
    pub(crate) frames: Vec<Bytes>,
    /// Whether the last event is in.
    pub(crate) finished: bool,
    bytes: usize,
}

/// One resumable response.
#[derive(Debug)]
pub(crate) struct ReplayLog {
    id: String,
    /// What a follower sends while the stream is silent: the keep-alive of its dialect.
    keep_alive: Bytes,
    state: watch::Sender<LogState>,
    attached: watch::Sender<usize>,
    total: Arc<AtomicUsize>,
}

impl ReplayLog {
    /// Appends events and wakes every follower, whatever the budget: for the frames that end
    /// a stream. Everything before them goes through [`ReplayStore::append`].
    pub(crate) fn append(&self, frames: Vec<Bytes>) {
        let added: usize = frames.iter().map(Bytes::len).sum();
        self.total.fetch_add(added, Ordering::AcqRel);
        self.state.send_modify(|state| {
            state.bytes += added;
            state.frames.extend(frames);
        });
    }

    fn mark_finished(&self) {
        self.state.send_modify(|state| state.finished = true);
    }

    /// The response id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LogState> {
        self.state.subscribe()
    }

    /// The number of clients attached, as it changes.
    pub(crate) fn attached(&self) -> watch::Receiver<usize> {
        self.attached.subscribe()
    }

    /// Counts a client as attached until the guard is dropped.
    pub(crate) fn attach(self: &Arc<Self>) -> Attached {
        self.attached.send_modify(|count| *count += 1);
        Attached(Arc::clone(self))
    }

    /// The keep-alive frame of the stream's dialect.
    pub(crate) fn keep_alive(&self) -> Bytes {
        self.keep_alive.clone()
    }

    /// Events so far, and whether the stream has ended.
    pub(crate) fn progress(&self) -> (usize, bool) {
        let state = self.state.borrow();
        (state.frames.len(), state.finished)
    }
}

/// A client attached to a log.
#[derive(Debug)]
pub(crate) struct Attached(Arc<ReplayLog>);

impl Attached {
    pub(crate) fn log(&self) -> &Arc<ReplayLog> {
        &self.0
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.attached.send_modify(|count| *count -= 1);
    }
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Found(Arc<ReplayLog>),
    Expired,
    Unknown,
}

/// Every replay log of one server.
#[derive(Debug)]
pub(crate) struct ReplayStore {
    config: ResumeConfig,
    total: Arc<AtomicUsize>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    logs: HashMap<String, Arc<ReplayLog>>,
    /// Ended streams, oldest end first: what expires and what is evicted first.
    ended: VecDeque<(Instant, String)>,
    expired: HashMap<String, Instant>,
    expired_order: VecDeque<(Instant, String)>,
}

impl ReplayStore {
    pub(crate) fn new(config: ResumeConfig) -> Self {
        Self {
            config,
            total: Arc::default(),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Memory held by all logs, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Opens the log of a new resumable response.
    ///
    /// # Errors
    /// [`Error::ReplayFull`] when live streams alone leave less than a sixteenth of the memory
    /// budget free.
    pub(crate) fn create(&self, id: &str, keep_alive: Bytes) -> Result<Arc<ReplayLog>> {
        let mut inner = self.lock();
        self.make_room(&mut inner, self.admission_room())
            .map_err(|()| self.full())?;
        let log = Arc::new(ReplayLog {
            id: id.to_owned(),
            keep_alive,
            state: watch::Sender::new(LogState::default()),
            attached: watch::Sender::new(0),
            total: Arc::clone(&self.total),
        });
        inner.logs.insert(id.to_owned(), Arc::clone(&log));
        Ok(log)
    }

    /// Checks that a new log would fit, forgetting ended ones if needed.
    ///
    /// # Errors
    /// [`Error::ReplayFull`] when live streams alone leave less than a sixteenth of the memory
    /// budget free.
    pub(crate) fn check_room(&self) -> Result<()> {
        let mut inner = self.lock();
        self.make_room(&mut inner, self.admission_room())
            .map_err(|()| self.full())
    }

    /// The room a new log needs: a sixteenth of the budget.
    fn admission_room(&self) -> usize {
        self.config.budget.div_ceil(ADMISSION_ROOM).max(1)
    }

    fn full(&self) -> Error {
        Error::ReplayFull {
            budget: self.config.budget,
        }
    }

    /// Forgets ended logs, oldest first, until `needed` more bytes fit in the budget.
    /// `Err(())` when live logs alone leave no room.
    fn make_room(&self, inner: &mut Inner, needed: usize) -> Result<(), ()> {
        self.expire(inner, Instant::now());
        while self.bytes() + needed > self.config.budget {
            let Some((_, oldest)) = inner.ended.pop_front() else {
                return Err(());
            };
            self.forget(inner, oldest, Instant::now());
        }
        Ok(())
    }

    /// Appends events to a live log, within the memory budget: ended logs are forgotten to
    /// make room, oldest first.
    ///
    /// # Errors
    /// [`Error::ReplayBudgetExceeded`] when live logs alone leave no room for the events; they
    /// are not appended.
    pub(crate) fn append(&self, log: &ReplayLog, frames: Vec<Bytes>) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let added: usize = frames.iter().map(Bytes::len).sum();
        if self.bytes() + added > self.config.budget {
            let mut inner = self.lock();
            self.make_room(&mut inner, added)
                .map_err(|()| Error::ReplayBudgetExceeded {
                    budget: self.config.budget,
                })?;
        }
        log.append(frames);
        Ok(())
    }

    /// Finds a log by response id.
    pub(crate) fn get(&self, id: &str) -> Lookup {
        let mut inner = self.lock();
        self.expire(&mut inner, Instant::now());
        if let Some(log) = inner.logs.get(id) {
            Lookup::Found(Arc::clone(log))
        } else if inner.expired.contains_key(id) {
            Lookup::Expired
        } else {
            Lookup::Unknown
        }
    }

    /// Marks a log's stream as ended: it expires after the TTL from now.
    pub(crate) fn finish(&self, log: &Arc<ReplayLog>) {
        log.mark_finished();
        self.lock()
            .ended
            .push_back((Instant::now(), log.id.clone()));
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((ended, _)) = inner.ended.front() {
            if now.duration_since(*ended) < self.config.ttl {
                break;
            }
            let (_, id) = inner.ended.pop_front().expect("front exists");
            self.forget(inner, id, now);
        }
        let keep = TOMBSTONE_MIN.max(self.config.ttl);
        while let Some((since, _)) = inner.expired_order.front() {
            if now.duration_since(*since) < keep && inner.expired_order.len() <= TOMBSTONE_LIMIT {
                break;
            }
            let (_, id) = inner.expired_order.pop_front().expect("front exists");
            inner.expired.remove(&id);
        }
    }

    fn forget(&self, inner: &mut Inner, id: String, now: Instant) {
        if let Some(log) = inner.logs.remove(&id) {
            let bytes = log.state.borrow().bytes;
            self.total.fetch_sub(bytes, Ordering::AcqRel);
        }
        inner.expired.insert(id.clone(), now);
        inner.expired_order.push_back((now, id));
    }
}

/// Splits a `Last-Event-ID` (`RESPONSE:N`) into the response id and the event number.
pub(crate) fn parse_event_id(text: &str) -> Option<(&str, usize)> {
    let (id, number) = text.trim().rsplit_once(':')?;
    let number = number.parse().ok()?;
    (!id.is_empty()).then_some((id, number))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(ttl: Duration, budget: usize) -> ReplayStore {
        ReplayStore::new(ResumeConfig {
            grace: Duration::from_secs(1),
            ttl,
            budget,
        })
    }

    #[test]
    fn event_ids() {
        assert_eq!(parse_event_id("chatcmpl-ab:7"), Some(("chatcmpl-ab", 7)));
        assert_eq!(parse_event_id(" a:b:0 "), Some(("a:b", 0)));
        for bad in ["", "x", ":1", "x:", "x:-1", "x:1.5"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn logs_expire_after_their_ttl_and_are_then_gone_not_unknown() {
        let store = store(Duration::ZERO, 1 << 20);
        let log = store.create("a", Bytes::new()).expect("room");
        log.append(vec![Bytes::from_static(b"data: x\n\n")]);
        assert!(matches!(store.get("a"), Lookup::Found(_)));
        assert_eq!(store.bytes(), 9);
        store.finish(&log);
        assert!(matches!(store.get("a"), Lookup::Expired));
        assert!(matches!(store.get("b"), Lookup::Unknown));
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn the_budget_evicts_ended_logs_first_and_refuses_when_live_ones_fill_it() {
        let store = store(Duration::from_secs(60), 10);
        let ended = store.create("ended", Bytes::new()).expect("room");
        ended.append(vec![Bytes::from(vec![b'x'; 10])]);
        store.finish(&ended);
        let live = store
            .create("live", Bytes::new())
            .expect("the ended log makes room");
        assert!(matches!(store.get("ended"), Lookup::Expired));
        live.append(vec![Bytes::from(vec![b'x'; 10])]);
        assert!(matches!(
            store.create("third", Bytes::new()),
            Err(Error::ReplayFull { .. })
        ));
        assert!(matches!(store.get("live"), Lookup::Found(_)));
    }

    #[test]
    fn appending_past_the_budget_evicts_ended_logs_then_fails() {
        let store = store(Duration::from_secs(60), 20);
        let ended = store.create("ended", Bytes::new()).expect("room");
        ended.append(vec![Bytes::from(vec![b'x'; 8])]);
        store.finish(&ended);
        let live = store.create("live", Bytes::new()).expect("room");
        let frame = || vec![Bytes::from(vec![b'y'; 7])];
        store
            .append(&live, frame())
            .expect("fits beside the ended log");
        assert!(matches!(store.get("ended"), Lookup::Found(_)));
        store
            .append(&live, frame())
            .expect("the ended log is forgotten to make room");
        assert!(matches!(store.get("ended"), Lookup::Expired));
        assert!(matches!(
            store.append(&live, frame()),
            Err(Error::ReplayBudgetExceeded { budget: 20 })
        ));
        assert_eq!(store.bytes(), 14, "a refused append adds nothing");
        assert_eq!(live.progress(), (2, false));
    }

    #[test]
    fn a_new_log_needs_a_sixteenth_of_the_budget_free() {
        let store = store(Duration::from_secs(60), 160);
        let live = store.create("live", Bytes::new()).expect("room");
        store
            .append(&live, vec![Bytes::from(vec![b'x'; 150])])
            .expect("fits");
        store
            .create("second", Bytes::new())
            .expect("10 bytes free of 160");
        store
            .append(&live, vec![Bytes::from(vec![b'x'; 1])])
            .expect("fits");
        assert!(matches!(
            store.check_room(),
            Err(Error::ReplayFull { budget: 160 })
        ));
    }
}
