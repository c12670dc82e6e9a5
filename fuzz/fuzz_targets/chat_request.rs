//! Fuzzes request parsing: `ChatCompletionRequest::from_json` and the WebSocket client message.
//!
//! Beyond "no panic": whatever is accepted must serialize and parse back to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_protocol::ws::ClientMessage;
use llm_protocol::ChatCompletionRequest;

fuzz_target!(|input: &[u8]| {
    if let Ok(request) = ChatCompletionRequest::from_json(input) {
        let json = serde_json::to_vec(&request).expect("an accepted request serializes");
        let again = ChatCompletionRequest::from_json(&json).expect("a serialized request parses");
        assert_eq!(request, again);
    }
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = ClientMessage::from_json(text);
    }
});
