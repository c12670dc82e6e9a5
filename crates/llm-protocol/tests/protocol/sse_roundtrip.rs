//! Property test: any sequence of events, encoded and split into arbitrary pieces, decodes to
//! exactly those events.

use bytes::BytesMut;
use llm_protocol::sse::{self, Event, SseDecoder, SseItem};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Item {
    Event(Event),
    Comment(String),
}

fn single_line() -> impl Strategy<Value = String> {
    // Anything but line breaks and NUL (which makes an id be ignored).
    proptest::string::string_regex("[^\r\n\u{0}]{0,12}").expect("valid regex")
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("(.|\r|\n){0,40}").expect("valid regex"),
        Just(String::new()),
        Just("\r\n\r\n".to_owned()),
        Just("안녕\r하세요\n👋".to_owned()),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (
            proptest::option::of(single_line()),
            any_text(),
            proptest::option::of(single_line()),
            proptest::option::of(0u64..100_000),
        )
            .prop_map(|(event, data, id, retry)| Item::Event(Event {
                event,
                data,
                id,
                retry
            })),
        1 => single_line().prop_map(Item::Comment),
    ]
}

/// What a spec-exact decoder must return for these items.
fn expected(items: &[Item]) -> Vec<SseItem> {
    let mut last_id: Option<String> = None;
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::Comment(text) => out.push(SseItem::Comment(text.clone())),
            Item::Event(event) => {
                if let Some(id) = &event.id {
                    last_id = (!id.is_empty()).then(|| id.clone());
                }
                if let Some(retry) = event.retry {
                    out.push(SseItem::Retry(retry));
                }
                out.push(SseItem::Event(Event {
                    event: event.event.clone().filter(|kind| !kind.is_empty()),
                    data: event.data.replace("\r\n", "\n").replace('\r', "\n"),
                    id: last_id.clone(),
                    retry: None,
                }));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_split_decodes_to_the_same_events(
        items in proptest::collection::vec(item(), 0..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        bom in any::<bool>(),
    ) {
        let mut wire = BytesMut::new();
        if bom {
            wire.extend_from_slice("\u{FEFF}".as_bytes());
        }
        for item in &items {
            match item {
                Item::Event(event) => sse::write_event(&mut wire, event),
                Item::Comment(text) => sse::write_comment(&mut wire, text),
            }
        }
        let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(wire.len() + 1)).collect();
        positions.sort_unstable();
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        let mut start = 0;
        for end in positions.into_iter().chain([wire.len()]) {
            decoder.push(&wire[start..end], &mut out).expect("within limits");
            start = end;
        }
        decoder.finish();
        prop_assert_eq!(out, expected(&items));
    }
}
