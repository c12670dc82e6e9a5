//! The reliability suite's fast parts: a disconnect storm, idle sockets, an overload burst,
//! slow headers, and a corpus of malformed requests. `llm-bench reliability` adds the slow
//! parts (memory baseline, SIGTERM under load).

use std::time::Duration;

use futures_util::future::join_all;
use llm_transport::{probe, Backend, Script, ScriptedEngine, TransportConfig};

use super::*;

const STREAM: &str = r#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_storm_cancels_every_generation() {
    // Each generation would run for 400 tokens at 5 ms, two seconds: one that finishes was
    // not cancelled when its client left.
    let script = Script::words(&"word ".repeat(400)).interval(Duration::from_millis(5));
    let test = scripted(script, TransportConfig::default()).await;
    // Seeded, so that a failure can be replayed.
    let mut random = fastrand::Rng::with_seed(7);
    let clients = (0..100).map(|_| {
        let chunks = random.usize(1..=20);
        let address = test.address;
        async move {
            let mut reader = send(address, &post("/v1/chat/completions", STREAM)).await;
            assert_eq!(read_head(&mut reader).await.0, 200);
            for _ in 0..chunks {
                read_chunk(&mut reader).await.expect("a chunk");
            }
            // Dropping the socket mid-stream.
        }
    });
    join_all(clients).await;
    // A bound on the wait, so that a hang fails rather than blocks; not a speed claim.
    for _ in 0..1000 {
        let stats = test.engine.stats();
        if stats.running == 0 && stats.cancelled == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = test.engine.stats();
    assert_eq!(
        (stats.running, stats.cancelled, stats.finished),
        (0, 100, 0),
        "every generation cancelled, none run to its end: {stats:?}"
    );
    // Connections are released too: only the scrape's own is open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics =
        String::from_utf8(exchange(test.address, &get("/metrics")).await.body()).expect("UTF-8");
    assert!(
        metrics.lines().any(|line| line == "llm_open_connections 1"),
        "{metrics}"
    );
    assert!(metrics
        .lines()
        .any(|line| line == "llm_requests_cancelled_total 100"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_do_not_stop_new_requests() {
    let test = scripted(Script::words("Still here."), TransportConfig::default()).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(test.address).await.expect("connect"));
    }
    let response = exchange(test.address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&frames(&response)), "Still here.");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_burst_gets_429s_none_hangs_and_service_resumes() {
    let (server, address) = listen(TransportConfig::default()).await;
    let script = Script::words(&"busy ".repeat(20)).interval(Duration::from_millis(10));
    let engine = ScriptedEngine::new(script).capacity(4);
    server.set_engine(engine.clone());
    let raw = post("/v1/chat/completions", STREAM);
    let burst = (0..50).map(|_| exchange(address, &raw));
    let responses = tokio::time::timeout(Duration::from_secs(10), join_all(burst))
        .await
        .expect("no request hangs");
    let (mut served, mut refused) = (0, 0);
    for response in &responses {
        match response.status {
            200 => {
                assert_eq!(
                    frames(response).last().map(String::as_str),
                    Some("data: [DONE]\n\n")
                );
                served += 1;
            }
            429 => {
                assert_eq!(response.header("retry-after"), Some("1"));
                assert_eq!(error_of(response).error.code.as_deref(), Some("queue_full"));
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(served + refused, 50, "every request got an answer");
    assert!(
        served >= 4 && refused >= 1,
        "{served} served, {refused} refused"
    );
    // After the burst the server serves normally.
    let after = exchange(address, &post("/v1/chat/completions", STREAM)).await;
    assert_eq!(after.status, 200);
    assert_eq!(engine.stats().running, 0);
}

#[tokio::test]
async fn headers_sent_byte_by_byte_within_the_timeout_are_served() {
    let test = scripted(Script::words("Hi."), TransportConfig::default()).await;
    let mut socket = TcpStream::connect(test.address).await.expect("connect");
    for byte in get("/health") {
        socket.write_all(&[byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut reader = BufReader::new(socket);
    assert_eq!(read_head(&mut reader).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_in_their_dialect_and_never_5xx() {
    let mut config = TransportConfig::default();
    config.body_limit = 1 << 20;
    let test = scripted(Script::words("Fine."), config).await;
    let chat = "/v1/chat/completions";
    // The fixed corpus, each with its status and blamed field; then seeded mutations of valid
    // requests of every route and dialect, which must get no server error. Parameters the
    // real engine refuses are covered by the real-model tests.
    let corpus = probe::corpus(1 << 20);
    assert!(
        corpus.len() >= 75,
        "the corpus has {} requests",
        corpus.len()
    );
    let mut mutator = probe::Mutator::new(11);
    let mutated = (0..400).map(|_| mutator.next_probe());
    for probe in corpus.into_iter().chain(mutated) {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            probe::exchange(test.address, &probe),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: no answer", probe.name))
        .unwrap_or_else(|error| panic!("{}: {error}", probe.name));
        if let Err(why) = probe.check(&reply) {
            panic!(
                "{}: {why}\n{}",
                probe.name,
                String::from_utf8_lossy(&probe.request)
            );
        }
    }
    // Bad WebSocket frames: an unmasked client frame breaks the protocol; the socket closes and
    // the server goes on.
    let mut socket = TcpStream::connect(test.address).await.expect("connect");
    socket
        .write_all(&ws_handshake(&[]))
        .await
        .expect("handshake");
    let mut reader = BufReader::new(socket);
    assert_eq!(read_head(&mut reader).await.0, 101);
    reader
        .get_mut()
        .write_all(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'])
        .await
        .expect("an unmasked frame");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the socket is closed after a protocol error"
    );
    // The server never crashed and still answers.
    let health = exchange(test.address, &get("/health")).await;
    assert_eq!(health.status, 200);
    let fine = exchange(test.address, &post(chat, STREAM)).await;
    assert_eq!(streamed_text(&frames(&fine)), "Fine.");
}
