//! Resumable streams: ids, replay after `Last-Event-ID` with no gap and no duplicate, live
//! continuation, the grace period, expiry, and `GET /stream` for `EventSource`.

use std::time::Duration;

use llm_transport::{Backend, Script, TransportConfig};

use super::*;

const RESUMABLE: &str =
    r#"{"stream":true,"resumable":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn script() -> Script {
    Script::words("Alpha beta gamma delta epsilon zeta eta theta.")
        .interval(Duration::from_millis(20))
}

/// Reads `n` chunks of a stream, then drops the connection.
async fn read_some(address: SocketAddr, raw: &[u8], n: usize) -> Vec<String> {
    let mut reader = send(address, raw).await;
    assert_eq!(read_head(&mut reader).await.0, 200);
    let mut frames = Vec::new();
    for _ in 0..n {
        let chunk = read_chunk(&mut reader).await.expect("a chunk");
        frames.push(String::from_utf8(chunk).expect("UTF-8"));
    }
    frames
}

fn resume_request(id: &str, last: &str) -> Vec<u8> {
    request(
        "GET",
        &format!("/v1/chat/completions/{id}/stream"),
        &[&format!("Last-Event-ID: {last}")],
        "",
    )
}

#[tokio::test]
async fn a_dropped_stream_resumes_after_its_last_event_with_no_gap_or_duplicate() {
    let test = scripted(script(), TransportConfig::default()).await;
    let first = read_some(test.address, &post("/v1/chat/completions", RESUMABLE), 3).await;
    let last = event_id(&first[2])
        .expect("resumable events carry ids")
        .to_owned();
    let (id, number) = last.rsplit_once(':').expect("RESPONSE:N");
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(number, "2");
    for (n, frame) in first.iter().enumerate() {
        assert!(
            frame.starts_with(&format!("id: {id}:{n}\ndata: {{")),
            "{frame}"
        );
    }

    // Generation went on without a client; the resume replays the rest, then follows live.
    let rest = exchange(test.address, &resume_request(id, &last)).await;
    assert_eq!(rest.status, 200);
    assert_eq!(rest.header("content-type"), Some("text/event-stream"));
    let rest = frames(&rest);
    let ids: Vec<String> = rest
        .iter()
        .filter_map(|f| event_id(f).map(str::to_owned))
        .collect();
    let expected: Vec<String> = (3..3 + ids.len()).map(|n| format!("{id}:{n}")).collect();
    assert_eq!(ids, expected, "consecutive ids from 3");
    let mut whole = first.clone();
    whole.extend(rest.iter().cloned());
    assert_eq!(streamed_text(&whole), test_text());
    assert!(rest.last().is_some_and(|f| f.ends_with("data: [DONE]\n\n")));

    // Asking again after the last event: nothing more to send.
    let end = event_id(rest.last().expect("a last frame")).expect("an id");
    let done = exchange(test.address, &resume_request(id, end)).await;
    assert_eq!(done.status, 204);
    // Without Last-Event-ID the whole stream is replayed from the start.
    let all = exchange(
        test.address,
        &get(&format!("/v1/chat/completions/{id}/stream")),
    )
    .await;
    assert_eq!(frames(&all), whole);
}

fn test_text() -> String {
    script().text()
}

#[tokio::test]
async fn unknown_expired_and_malformed_ids_are_refused_clearly() {
    let mut config = TransportConfig::default();
    config.resume.ttl = Duration::ZERO;
    let test = scripted(Script::words("Short."), config).await;
    let unknown = exchange(
        test.address,
        &resume_request("chatcmpl-nope", "chatcmpl-nope:1"),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        error_of(&unknown).error.code.as_deref(),
        Some("stream_not_found")
    );

    let stream = exchange(test.address, &post("/v1/chat/completions", RESUMABLE)).await;
    let first = frames(&stream);
    let last = event_id(first.last().expect("frames"))
        .expect("id")
        .to_owned();
    let (id, _) = last.rsplit_once(':').expect("RESPONSE:N");
    // A zero TTL expires the log as soon as its stream ended.
    let expired = exchange(test.address, &resume_request(id, &last)).await;
    assert_eq!(expired.status, 410);
    assert_eq!(
        error_of(&expired).error.code.as_deref(),
        Some("stream_expired")
    );

    for bad in ["garbage", "other:1"] {
        let response = exchange(test.address, &resume_request(id, bad)).await;
        assert_eq!(response.status, 400, "{bad}");
        assert_eq!(
            error_of(&response).error.param.as_deref(),
            Some("last_event_id")
        );
    }
}

#[tokio::test]
async fn without_a_client_a_resumable_stream_is_cancelled_after_the_grace() {
    let mut config = TransportConfig::default();
    config.resume.grace = Duration::from_millis(100);
    let slow = Script::words(&"tick ".repeat(100)).interval(Duration::from_millis(20));
    let test = scripted(slow, config).await;
    let first = read_some(test.address, &post("/v1/chat/completions", RESUMABLE), 2).await;
    let last = event_id(&first[1]).expect("id").to_owned();
    test.wait_idle().await;
    assert_eq!(test.engine.stats().cancelled, 1);
    let (id, _) = last.rsplit_once(':').expect("RESPONSE:N");
    let rest = frames(&exchange(test.address, &resume_request(id, &last)).await);
    let n = rest.len();
    assert!(
        rest[n - 2].contains(r#""finish_reason":"cancelled""#),
        "{}",
        rest[n - 2]
    );
    assert!(rest[n - 1].ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_client_that_comes_back_within_the_grace_keeps_the_generation() {
    let mut config = TransportConfig::default();
    config.resume.grace = Duration::from_millis(400);
    let test = scripted(script(), config).await;
    let first = read_some(test.address, &post("/v1/chat/completions", RESUMABLE), 2).await;
    let last = event_id(&first[1]).expect("id").to_owned();
    let (id, _) = last.rsplit_once(':').expect("RESPONSE:N");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest = frames(&exchange(test.address, &resume_request(id, &last)).await);
    let mut whole = first;
    whole.extend(rest);
    assert_eq!(streamed_text(&whole), test_text());
    assert_eq!(test.engine.stats().cancelled, 0);
    assert_eq!(test.engine.stats().finished, 1);
}

#[tokio::test]
async fn the_replay_budget_refuses_new_resumable_streams_when_full() {
    // A stream that sends its opening chunk, then waits: its log holds that chunk alone.
    let waiting = || Script::words("tick tock").first_token_delay(Duration::from_secs(30));
    let probe = scripted(waiting(), TransportConfig::default()).await;
    let opening = read_some(probe.address, &post("/v1/chat/completions", RESUMABLE), 1).await;
    // A budget the one opening chunk fills (response ids and times have fixed widths).
    let mut config = TransportConfig::default();
    config.resume.budget = opening[0].len();
    let test = scripted(waiting(), config).await;
    let live = read_some(test.address, &post("/v1/chat/completions", RESUMABLE), 1).await;
    assert_eq!(live[0].len(), opening[0].len());
    let refused = exchange(test.address, &post("/v1/chat/completions", RESUMABLE)).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        error_of(&refused).error.code.as_deref(),
        Some("replay_budget_exhausted")
    );
    // Streams that do not ask for resume are unaffected.
    let plain = r#"{"stream":true,"max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut config = TransportConfig::default();
    config.resume.budget = 1;
    let test = scripted(Script::words("One two."), config).await;
    assert_eq!(
        exchange(test.address, &post("/v1/chat/completions", plain))
            .await
            .status,
        200
    );
}

/// The budget holds for streams already running: a live log that would pass it ends with an
/// error event and `[DONE]`, and its generation is cancelled. The log never holds more than
/// the budget but for those two events.
#[tokio::test]
async fn a_resumable_stream_that_outgrows_the_replay_budget_ends_with_an_error() {
    let mut config = TransportConfig::default();
    config.resume.budget = 4096;
    let long = Script::words(&"tick ".repeat(400)).interval(Duration::from_millis(1));
    let test = scripted(long, config).await;
    let response = exchange(test.address, &post("/v1/chat/completions", RESUMABLE)).await;
    assert_eq!(response.status, 200);
    let frames = frames(&response);
    let (kept, last) = frames.split_at(frames.len() - 2);
    assert!(kept.len() > 2, "some ticks before the cut: {frames:?}");
    let kept_bytes: usize = kept.iter().map(String::len).sum();
    assert!(kept_bytes <= 4096, "{kept_bytes} bytes kept");
    assert!(
        last[0].contains(r#""code":"replay_budget_exhausted""#) && last[0].contains(r#""error":"#),
        "{}",
        last[0]
    );
    assert!(last[1].ends_with("data: [DONE]\n\n"), "{}", last[1]);
    test.wait_idle().await;
    let stats = test.engine.stats();
    assert_eq!((stats.cancelled, stats.finished), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn event_source_streams_are_resumable_and_reconnect_to_the_same_url() {
    let test = scripted(script(), TransportConfig::default()).await;
    let url = "/stream?q=Hello%20there&max_tokens=100&temperature=0";
    let first = read_some(test.address, &get(url), 4).await;
    assert_eq!(first[0], "retry: 1000\n\n");
    assert!(first[1].contains(r#""delta":{"role":"assistant","content":""}"#));
    let last = event_id(&first[3]).expect("id").to_owned();
    // The browser reconnects to the same URL with Last-Event-ID.
    let again = request("GET", url, &[&format!("Last-Event-ID: {last}")], "");
    let rest = frames(&exchange(test.address, &again).await);
    assert_eq!(rest[0], "retry: 1000\n\n");
    let mut whole = first[1..].to_vec();
    whole.extend(rest[1..].iter().cloned());
    assert_eq!(streamed_text(&whole), test_text());
    // After [DONE] the browser reconnects once more; 204 stops it.
    let end = event_id(rest.last().expect("frames")).expect("id");
    let stop = request("GET", url, &[&format!("Last-Event-ID: {end}")], "");
    assert_eq!(exchange(test.address, &stop).await.status, 204);
    // A bad query names the parameter.
    let bad = exchange(test.address, &get("/stream?max_tokens=5")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(error_of(&bad).error.param.as_deref(), Some("q"));
}
