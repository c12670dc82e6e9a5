//! The OpenAI stream decoder on streams shaped like the ones real servers send.

use llm_protocol::{ChatStreamDecoder, Error, FinishReason, Role, StreamEvent, Usage};

fn decode(wire: &str) -> (Vec<StreamEvent>, Result<(), Error>) {
    let mut decoder = ChatStreamDecoder::new();
    let mut events = Vec::new();
    // Feed in awkward 5-byte pieces: the result must not depend on how bytes arrive.
    for piece in wire.as_bytes().chunks(5) {
        if let Err(error) = decoder.push(piece, &mut events) {
            return (events, Err(error));
        }
    }
    (events, Ok(()))
}

fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::Chunk(chunk) => chunk.choices.first()?.delta.content.clone(),
            _ => None,
        })
        .collect()
}

#[test]
fn openai_shaped_stream_with_usage() {
    let wire = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n",
        "data: [DONE]\n\n",
    );
    let (events, result) = decode(wire);
    result.expect("valid stream");
    assert_eq!(events.len(), 6);
    assert_eq!(text_of(&events), "Hello");
    let StreamEvent::Chunk(first) = &events[0] else {
        panic!("first event is a chunk")
    };
    assert_eq!(first.choices[0].delta.role, Some(Role::Assistant));
    let StreamEvent::Chunk(last) = &events[3] else {
        panic!("fourth event is a chunk")
    };
    assert_eq!(last.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(events[4], StreamEvent::Usage(Usage::new(9, 3)));
    assert_eq!(events[5], StreamEvent::Done);
}

#[test]
fn tolerant_of_other_servers() {
    // No space after `data:`, CRLF, keep-alive comments, role on every chunk, content null,
    // no `object`/`created`, an `event:` line.
    let wire = concat!(
        ": ping\r\n\r\n",
        "data:{\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\r\n\r\n",
        "event: message\r\n",
        "data:{\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"안녕\"}}]}\r\n\r\n",
        ":\r\n",
        "data:{\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"!\"},\"finish_reason\":\"length\"}]}\r\n\r\n",
        "data:[DONE]\r\n\r\n",
    );
    let (events, result) = decode(wire);
    result.expect("valid stream");
    assert_eq!(events[0], StreamEvent::KeepAlive);
    assert_eq!(text_of(&events), "안녕!");
    assert_eq!(events.last(), Some(&StreamEvent::Done));
}

#[test]
fn mid_stream_error_becomes_an_api_error() {
    let wire = concat!(
        "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"engine failed\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
        "data: [DONE]\n\n",
    );
    let (events, result) = decode(wire);
    assert_eq!(text_of(&events), "a");
    match result {
        Err(Error::Api(error)) => {
            assert_eq!(error.message, "engine failed");
            assert_eq!(error.kind, "server_error");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn ends_at_done_and_ignores_what_follows() {
    let (events, result) = decode("data: [DONE]\n\ndata: garbage\n\n");
    result.expect("nothing after DONE is read");
    assert_eq!(events, [StreamEvent::Done]);
}

#[test]
fn malformed_payload_is_an_error() {
    for wire in [
        "data: {not json\n\n",
        "data: {\"id\":\"x\"}\n\n",
        "data: 42\n\n",
    ] {
        let (_, result) = decode(wire);
        assert!(
            matches!(result, Err(Error::MalformedChunk(_))),
            "{wire:?} gave {result:?}"
        );
    }
}

#[test]
fn last_event_id_is_tracked_for_reconnects() {
    let mut decoder = ChatStreamDecoder::new();
    let mut events = Vec::new();
    decoder
        .push(
            b"id: r1.0\ndata: {\"id\":\"r1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\nid: r1.1\ndata: {\"id\"",
            &mut events,
        )
        .expect("valid");
    assert_eq!(decoder.last_event_id(), "r1.0");
    decoder.reconnect();
    decoder
        .push(
            b"id: r1.1\ndata: {\"id\":\"r1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n",
            &mut events,
        )
        .expect("valid");
    assert_eq!(text_of(&events), "ab");
    assert_eq!(decoder.last_event_id(), "r1.1");
}
