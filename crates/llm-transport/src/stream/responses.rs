//! The Responses API stream (`/v1/responses`): named events with a rising `sequence_number`.
//!
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, then one `response.output_text.delta` per delta, then
//! `response.output_text.done`, `response.content_part.done`, `response.output_item.done` and
//! `response.completed` (or `response.incomplete` at the token limit). A failure after the
//! start ends the stream with `response.failed`, whose response carries the error; a
//! resumable stream no client came back for ends with an `error` event. Each event's
//! `sequence_number` is its place in the stream, so a resumable stream's event `resp_...:N`
//! has sequence number N.

use std::fmt::Write as _;

use bytes::Bytes;
use http::StatusCode;
use llm_engine::Finish;
use llm_protocol::responses::{
    IncompleteDetails, OutputMessage, OutputText, ResponseError, ResponseEvent, ResponseObject,
    ResponseUsage, ResponsesRequest,
};
use llm_protocol::{FinishReason, Usage};

use super::encoder::Encoder;
use super::frame::Framer;
use crate::error::Error;

/// The `response` object of a request before it has output: what every lifecycle event
/// repeats.
pub(crate) fn response_object(
    request: &ResponsesRequest,
    id: String,
    created_at: u64,
    model: String,
) -> ResponseObject {
    ResponseObject {
        id,
        object: "response".to_owned(),
        created_at,
        status: "in_progress".to_owned(),
        error: None,
        incomplete_details: None,
        instructions: request.instructions.clone(),
        max_output_tokens: request.max_output_tokens,
        model,
        output: Vec::new(),
        parallel_tool_calls: true,
        previous_response_id: None,
        store: false,
        temperature: request.temperature,
        text: serde_json::json!({
            "format": request.text_format().cloned().unwrap_or_default()
        }),
        tool_choice: "auto".to_owned(),
        tools: Vec::new(),
        top_p: request.top_p,
        truncation: "disabled".to_owned(),
        usage: None,
        user: request.user.clone(),
        metadata: serde_json::Map::new(),
    }
}

/// The message item holding `text`, with `status`.
pub(crate) fn output_message(id: &str, status: &str, content: Vec<OutputText>) -> OutputMessage {
    OutputMessage {
        id: id.to_owned(),
        kind: "message".to_owned(),
        status: status.to_owned(),
        role: "assistant".to_owned(),
        content,
    }
}

/// `response` as it ends: its status, output and usage, from how generation finished.
pub(crate) fn finished_response(
    mut response: ResponseObject,
    item_id: &str,
    text: String,
    reason: &FinishReason,
    usage: Usage,
) -> ResponseObject {
    let (status, incomplete) = match reason {
        FinishReason::Length => (
            "incomplete",
            Some(IncompleteDetails {
                reason: "max_output_tokens".to_owned(),
            }),
        ),
        _ => ("completed", None),
    };
    response.status = status.to_owned();
    response.incomplete_details = incomplete;
    response.output = vec![output_message(item_id, status, vec![OutputText::new(text)])];
    response.usage = Some(ResponseUsage::from(usage));
    response
}

/// Encodes one Responses stream.
#[derive(Debug)]
pub(crate) struct ResponsesEncoder {
    response: ResponseObject,
    item_id: String,
    framer: Framer,
    /// The next event's `sequence_number`.
    sequence: u64,
    /// The text so far, for the `done` events.
    text: String,
    /// The delta event up to its text, rendered once.
    delta_prefix: String,
    /// The delta event after its text; rewritten in place for each sequence number.
    delta_suffix: String,
}

impl ResponsesEncoder {
    pub(crate) fn new(response: ResponseObject, item_id: String, resumable: bool) -> Self {
        let json = |text: &str| serde_json::to_string(text).expect("strings serialize");
        let delta_prefix = format!(
            "data: {{\"type\":\"response.output_text.delta\",\"item_id\":{},\
             \"output_index\":0,\"content_index\":0,\"delta\":",
            json(&item_id)
        );
        Self {
            framer: Framer::new(&response.id, resumable),
            response,
            item_id,
            sequence: 0,
            text: String::new(),
            delta_prefix,
            delta_suffix: String::new(),
        }
    }

    fn next_sequence(&mut self) -> u64 {
        let sequence = self.sequence;
        self.sequence += 1;
        sequence
    }

    fn frame(&mut self, event: &ResponseEvent) -> Bytes {
        self.framer.json(Some(event.kind()), event)
    }

    fn in_progress(&self) -> ResponseObject {
        self.response.clone()
    }

    /// The lifecycle event that ends the stream with `response` in its final state.
    fn last(&mut self, response: ResponseObject) -> Bytes {
        let sequence_number = self.next_sequence();
        let event = match response.status.as_str() {
            "completed" => ResponseEvent::Completed {
                response,
                sequence_number,
            },
            "incomplete" => ResponseEvent::Incomplete {
                response,
                sequence_number,
            },
            _ => ResponseEvent::Failed {
                response,
                sequence_number,
            },
        };
        self.frame(&event)
    }
}

impl Encoder for ResponsesEncoder {
    fn open(&mut self) -> Vec<Bytes> {
        let item = output_message(&self.item_id, "in_progress", Vec::new());
        let events = [
            ResponseEvent::Created {
                response: self.in_progress(),
                sequence_number: self.next_sequence(),
            },
            ResponseEvent::InProgress {
                response: self.in_progress(),
                sequence_number: self.next_sequence(),
            },
            ResponseEvent::OutputItemAdded {
                output_index: 0,
                item,
                sequence_number: self.next_sequence(),
            },
            ResponseEvent::ContentPartAdded {
                item_id: self.item_id.clone(),
                output_index: 0,
                content_index: 0,
                part: OutputText::new(""),
                sequence_number: self.next_sequence(),
            },
        ];
        events.iter().map(|event| self.frame(event)).collect()
    }

    /// Byte for byte what serializing the event gives, without building it.
    fn delta(&mut self, text: &str) -> Bytes {
        self.text.push_str(text);
        let sequence = self.next_sequence();
        self.delta_suffix.clear();
        write!(
            self.delta_suffix,
            ",\"logprobs\":[],\"sequence_number\":{sequence}}}\n\n"
        )
        .expect("writing to a string cannot fail");
        self.framer.text_event(
            Some("response.output_text.delta"),
            &self.delta_prefix,
            text,
            &self.delta_suffix,
        )
    }

    fn finish(&mut self, finish: &Finish) -> Vec<Bytes> {
        let text = std::mem::take(&mut self.text);
        let response = finished_response(
            self.in_progress(),
            &self.item_id,
            text.clone(),
            &finish.reason,
            finish.usage,
        );
        let item = response.output[0].clone();
        let part = OutputText::new(text.clone());
        let events = [
            ResponseEvent::OutputTextDone {
                item_id: self.item_id.clone(),
                output_index: 0,
                content_index: 0,
                text,
                logprobs: Vec::new(),
                sequence_number: self.next_sequence(),
            },
            ResponseEvent::ContentPartDone {
                item_id: self.item_id.clone(),
                output_index: 0,
                content_index: 0,
                part,
                sequence_number: self.next_sequence(),
            },
            ResponseEvent::OutputItemDone {
                output_index: 0,
                item,
                sequence_number: self.next_sequence(),
            },
        ];
        let mut frames: Vec<Bytes> = events.iter().map(|event| self.frame(event)).collect();
        frames.push(self.last(response));
        frames
    }

    fn cancelled(&mut self) -> Vec<Bytes> {
        let event = ResponseEvent::Error {
            code: Some("stream_cancelled".to_owned()),
            message: "no client resumed the stream within the resume grace period, so its \
                      generation was cancelled"
                .to_owned(),
            param: None,
            sequence_number: self.next_sequence(),
        };
        vec![self.frame(&event)]
    }

    fn error(&mut self, error: &Error) -> Vec<Bytes> {
        let mut response = self.in_progress();
        response.status = "failed".to_owned();
        let code = match error.status() {
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
            status if status.is_client_error() => "invalid_prompt",
            _ => "server_error",
        };
        response.error = Some(ResponseError {
            code: code.to_owned(),
            message: error.to_string(),
        });
        let text = std::mem::take(&mut self.text);
        response.output = vec![output_message(
            &self.item_id,
            "incomplete",
            vec![OutputText::new(text)],
        )];
        vec![self.last(response)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendered delta frame is exactly what encoding the event gives.
    #[test]
    fn fast_delta_frames_equal_serialized_events() {
        for resumable in [false, true] {
            let request = ResponsesRequest::default();
            let response =
                response_object(&request, "resp_\"x".to_owned(), 7, "m\u{e9}".to_owned());
            let mut fast = ResponsesEncoder::new(response.clone(), "msg_\\1".to_owned(), resumable);
            let mut slow = Framer::new(&response.id, resumable);
            for (sequence, text) in ["Hi", " \"q\"\n", "한국어 😀", ""].iter().enumerate() {
                let event = ResponseEvent::OutputTextDelta {
                    item_id: "msg_\\1".to_owned(),
                    output_index: 0,
                    content_index: 0,
                    delta: (*text).to_owned(),
                    logprobs: Vec::new(),
                    sequence_number: sequence as u64,
                };
                let expected = slow.json(Some(event.kind()), &event);
                assert_eq!(fast.delta(text), expected, "{text:?}");
            }
        }
    }
}
