//! Tool calls between a conversation and the model's text: the prompt that shows the model its
//! tools and the calls of the history, the grammar of a forced call, and the parser that
//! turns generated text into streamed calls.
//!
//! The format is the one Hermes-style chat models are trained on: the tools as JSON lines in
//! the system message between `<tools>` tags, each call as a JSON object `{"name": ...,
//! "arguments": {...}}` between `<tool_call>` tags, and each result between
//! `<tool_response>` tags in a user turn. The server writes this prompt itself, for every model:
//! the default model's chat template has no tool format of its own.
//!
//! With `tool_choice` `auto` the model writes text or calls as it likes, and the parser finds
//! the calls in the text. With `required` or a named function the answer is constrained to
//! one call object (no tags), so even a small model produces arguments that validate.

use llm_protocol::format::{Grammar, OutputFormat};
use llm_protocol::tools::{FunctionDefinition, ToolUse};
use llm_protocol::{ChatMessage, Role};
use serde_json::{json, Value};

use crate::stream::ToolCallDelta;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// The longest start of a call (`{"name": "...", "arguments": `) read before the parser
/// gives up streaming it and reads the call whole.
const MAX_HEADER: usize = 512;

/// `messages` as plain role and text pairs for a chat template that knows no tools: the tools
/// (when the model may call them) at the end of the system message, the history's calls and
/// results as text.
pub(crate) fn render(
    messages: &[ChatMessage],
    tools: Option<&ToolUse>,
) -> Vec<(&'static str, String)> {
    let mut rendered: Vec<(&'static str, String)> = Vec::with_capacity(messages.len() + 1);
    let mut previous_was_result = false;
    for message in messages {
        let is_result = message.role == Role::Tool;
        let text = match message.role {
            Role::Tool => format!("<tool_response>\n{}\n</tool_response>", message.text()),
            Role::Assistant => assistant_text(message),
            _ => message.text(),
        };
        match rendered.last_mut() {
            // Results of one turn's calls answer together, in one user turn.
            Some((_, last)) if is_result && previous_was_result => {
                last.push('\n');
                last.push_str(&text);
            }
            _ => rendered.push((template_role(message.role), text)),
        }
        previous_was_result = is_result;
    }
    if let Some(tools) = tools {
        let block = tools_block(&tools.functions);
        match rendered.first_mut() {
            Some(("system", system)) => {
                system.push_str("\n\n");
                system.push_str(&block);
            }
            _ => rendered.insert(0, ("system", block)),
        }
    }
    rendered
}

/// The role a chat template knows for `role`.
pub(crate) fn template_role(role: Role) -> &'static str {
    match role {
        // Chat templates know `system`; `developer` is its newer name.
        Role::System | Role::Developer => "system",
        Role::User | Role::Tool => "user",
        Role::Assistant => "assistant",
    }
}

/// Whether a conversation needs [`render`]: it offers tools, or its history holds calls or
/// results.
pub(crate) fn needs_render(messages: &[ChatMessage], tools: Option<&ToolUse>) -> bool {
    tools.is_some()
        || messages
            .iter()
            .any(|message| message.role == Role::Tool || message.tool_calls.is_some())
}

fn assistant_text(message: &ChatMessage) -> String {
    let mut text = message.text();
    for call in message.tool_calls.iter().flatten() {
        if !text.is_empty() {
            text.push('\n');
        }
        // Arguments are shown as the client sent them; text that is not JSON as a string.
        let raw = call.function.arguments.trim();
        let arguments = match serde_json::from_str::<Value>(raw) {
            Ok(_) => raw.to_owned(),
            Err(_) => Value::String(raw.to_owned()).to_string(),
        };
        text.push_str(OPEN);
        text.push('\n');
        text.push_str(&call_json(&call.function.name, &arguments));
        text.push('\n');
        text.push_str(CLOSE);
    }
    text
}

/// A call object as the model writes it: `{"name": "f", "arguments": {...}}`.
fn call_json(name: &str, arguments: &str) -> String {
    format!(
        "{{\"name\": {}, \"arguments\": {}}}",
        Value::String(name.to_owned()),
        arguments
    )
}

fn tools_block(functions: &[FunctionDefinition]) -> String {
    let mut block = String::from(
        "# Tools\n\nYou may call functions to answer. The functions, one JSON object per line:\n<tools>\n",
    );
    for function in functions {
        let mut definition = json!({"name": function.name});
        if let Some(description) = &function.description {
            definition["description"] = Value::String(description.clone());
        }
        definition["parameters"] = function.parameters_schema();
        block.push_str(&json!({"type": "function", "function": definition}).to_string());
        block.push('\n');
    }
    block.push_str(
        "</tools>\n\nTo call a function, answer with a JSON object of its name and arguments \
         between <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function name>, \
         \"arguments\": <arguments as a JSON object>}\n</tool_call>",
    );
    block
}

/// The grammar of a forced answer: one call object of a callable function, the name first.
pub(crate) fn call_format(tools: &ToolUse) -> OutputFormat {
    let mut branches: Vec<Value> = tools
        .callable()
        .map(|function| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": function.name},
                    "arguments": function.parameters_schema(),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = if branches.len() == 1 {
        branches.remove(0)
    } else {
        json!({"anyOf": branches})
    };
    OutputFormat {
        grammar: Grammar::JsonSchema(schema),
        field: "tools",
    }
}

/// One piece of parsed output, in the order generated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    /// Answer text.
    Text(String),
    /// A piece of a call.
    Call(ToolCallDelta),
}

/// Finds tool calls in streamed text: see the module docs.
#[derive(Debug)]
pub(crate) struct ToolCallParser {
    forced: bool,
    state: State,
    /// Calls started so far.
    calls: u32,
}

#[derive(Debug)]
enum State {
    /// Answer text, watching for [`OPEN`]; `held` may be its start. After a call, leading
    /// whitespace is dropped.
    Text { held: String, after_call: bool },
    /// Inside a call object.
    Call(CallScanner),
    /// After a call object, expecting [`CLOSE`].
    Closing { held: String },
    /// A forced call is complete: nothing more is read.
    Done,
}

impl ToolCallParser {
    /// A parser for an answer that must be one call object (`forced`), or text that may hold
    /// tagged calls.
    pub(crate) fn new(forced: bool) -> Self {
        let state = if forced {
            State::Call(CallScanner::new(0))
        } else {
            State::Text {
                held: String::new(),
                after_call: false,
            }
        };
        Self {
            forced,
            state,
            calls: 0,
        }
    }

    /// Calls started so far.
    pub(crate) fn calls(&self) -> u32 {
        self.calls
    }

    /// Reads the next generated text.
    pub(crate) fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut input = text.to_owned();
        while let Some(rest) = self.step(input, &mut pieces) {
            input = rest;
        }
        pieces
    }

    /// The end of the answer: text held back is answer text after all.
    pub(crate) fn finish(&mut self) -> Vec<Piece> {
        let mut pieces = Vec::new();
        match std::mem::replace(&mut self.state, State::Done) {
            State::Text { held, after_call } => {
                let held = if after_call {
                    held.trim_start().to_owned()
                } else {
                    held
                };
                push_text(&mut pieces, held);
            }
            State::Call(scanner) => {
                if let Some(raw) = scanner.unfinished() {
                    let open = if self.forced { "" } else { OPEN };
                    push_text(&mut pieces, format!("{open}{raw}"));
                }
            }
            State::Closing { .. } | State::Done => {}
        }
        pieces
    }

    /// Reads `input` in the current state; the input left for the next state, if it changed.
    fn step(&mut self, input: String, pieces: &mut Vec<Piece>) -> Option<String> {
        match &mut self.state {
            State::Text { held, after_call } => {
                held.push_str(&input);
                if *after_call {
                    let trimmed = held.trim_start();
                    if trimmed.is_empty() {
                        return None;
                    }
                    *held = trimmed.to_owned();
                    *after_call = false;
                }
                if let Some(at) = held.find(OPEN) {
                    let rest = held[at + OPEN.len()..].to_owned();
                    held.truncate(at);
                    push_text(pieces, std::mem::take(held));
                    self.state = State::Call(CallScanner::new(self.calls));
                    return Some(rest);
                }
                let keep = partial_suffix(held, OPEN);
                let release = held[..held.len() - keep].to_owned();
                held.drain(..held.len() - keep);
                push_text(pieces, release);
                None
            }
            State::Call(scanner) => {
                let (scanned, rest) = scanner.push(&input);
                match scanned {
                    Scanned::Pieces(calls) => {
                        for call in calls {
                            if call.name.is_some() {
                                self.calls += 1;
                            }
                            pieces.push(Piece::Call(call));
                        }
                    }
                    Scanned::NotACall(raw) => {
                        let open = if self.forced { "" } else { OPEN };
                        push_text(pieces, format!("{open}{raw}"));
                        self.state = State::Text {
                            held: String::new(),
                            after_call: false,
                        };
                        return rest;
                    }
                }
                let rest = rest?;
                self.state = if self.forced {
                    State::Done
                } else {
                    State::Closing {
                        held: String::new(),
                    }
                };
                Some(rest)
            }
            State::Closing { held } => {
                held.push_str(&input);
                let trimmed = held.trim_start();
                if let Some(rest) = trimmed.strip_prefix(CLOSE) {
                    let rest = rest.to_owned();
                    self.state = State::Text {
                        held: String::new(),
                        after_call: true,
                    };
                    return Some(rest);
                }
                if CLOSE.starts_with(trimmed) {
                    return None;
                }
                // No closing tag: what follows is text (or the next call).
                let rest = trimmed.to_owned();
                self.state = State::Text {
                    held: String::new(),
                    after_call: true,
                };
                Some(rest)
            }
            State::Done => None,
        }
    }
}

fn push_text(pieces: &mut Vec<Piece>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Text(last)) = pieces.last_mut() {
        last.push_str(&text);
    } else {
        pieces.push(Piece::Text(text));
    }
}

/// The length of the longest end of `text` that starts `tag` (shorter than `tag`).
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&len| {
            text.is_char_boundary(text.len() - len) && tag.starts_with(&text[text.len() - len..])
        })
        .unwrap_or(0)
}

/// What a [`CallScanner`] made of its input.
#[derive(Debug)]
enum Scanned {
    /// Pieces of the call (possibly none yet).
    Pieces(Vec<ToolCallDelta>),
    /// The text read was not a call object: it is text, as written.
    NotACall(String),
}

/// One call object, read as it is generated.
#[derive(Debug)]
struct CallScanner {
    index: u32,
    phase: Phase,
    /// The object's text so far, while its start is not yet known to be a call.
    raw: String,
}

#[derive(Debug)]
enum Phase {
    /// Before `"arguments": `: the name is not known yet.
    Header,
    /// Streaming the arguments' value.
    Arguments(JsonScan),
    /// After the arguments, until the object closes.
    Tail(JsonScan),
    /// The object does not start `{"name": ..., "arguments": `: read whole, then parsed.
    Whole(JsonScan),
}

impl CallScanner {
    fn new(index: u32) -> Self {
        Self {
            index,
            phase: Phase::Header,
            raw: String::new(),
        }
    }

    /// The text read of a call that never started streaming, when the answer ends inside it.
    fn unfinished(self) -> Option<String> {
        match self.phase {
            Phase::Header | Phase::Whole(_) => Some(self.raw).filter(|raw| !raw.trim().is_empty()),
            Phase::Arguments(_) | Phase::Tail(_) => None,
        }
    }

    /// Reads `input`; with the pieces, the input after the object once it closed.
    fn push(&mut self, input: &str) -> (Scanned, Option<String>) {
        match &mut self.phase {
            Phase::Header => {
                self.raw.push_str(input);
                match header(&self.raw) {
                    Header::Need if self.raw.len() <= MAX_HEADER => {
                        (Scanned::Pieces(Vec::new()), None)
                    }
                    Header::Need | Header::No => {
                        // Read the object whole, from its start.
                        self.phase = Phase::Whole(JsonScan::default());
                        let raw = std::mem::take(&mut self.raw);
                        self.push(&raw)
                    }
                    Header::Yes { len, name } => {
                        let rest = self.raw.split_off(len);
                        self.raw.clear();
                        self.phase = Phase::Arguments(JsonScan::default());
                        let start = ToolCallDelta {
                            index: self.index,
                            name: Some(name),
                            arguments: String::new(),
                        };
                        match self.push(&rest) {
                            (Scanned::Pieces(mut calls), rest) => {
                                calls.insert(0, start);
                                (Scanned::Pieces(calls), rest)
                            }
                            other => other,
                        }
                    }
                }
            }
            Phase::Arguments(scan) => {
                // Whitespace before the value is not part of the arguments.
                let input = if scan.started {
                    input
                } else {
                    input.trim_start()
                };
                let (end, done) = scan.value(input);
                let mut calls = Vec::new();
                if end > 0 {
                    calls.push(ToolCallDelta {
                        index: self.index,
                        name: None,
                        arguments: input[..end].to_owned(),
                    });
                }
                if !done {
                    return (Scanned::Pieces(calls), None);
                }
                self.phase = Phase::Tail(JsonScan::default());
                match self.push(&input[end..]) {
                    (Scanned::Pieces(more), rest) => {
                        calls.extend(more);
                        (Scanned::Pieces(calls), rest)
                    }
                    other => other,
                }
            }
            Phase::Tail(scan) => {
                let rest = scan.close(input).map(|end| input[end..].to_owned());
                (Scanned::Pieces(Vec::new()), rest)
            }
            Phase::Whole(scan) => {
                let Some(end) = scan.object(input) else {
                    self.raw.push_str(input);
                    if scan.failed {
                        return (Scanned::NotACall(std::mem::take(&mut self.raw)), None);
                    }
                    return (Scanned::Pieces(Vec::new()), None);
                };
                self.raw.push_str(&input[..end]);
                let rest = Some(input[end..].to_owned());
                let raw = std::mem::take(&mut self.raw);
                match whole_call(&raw) {
                    Some((name, arguments)) => {
                        let start = ToolCallDelta {
                            index: self.index,
                            name: Some(name),
                            arguments: String::new(),
                        };
                        let arguments = ToolCallDelta {
                            index: self.index,
                            name: None,
                            arguments,
                        };
                        (Scanned::Pieces(vec![start, arguments]), rest)
                    }
                    None => (Scanned::NotACall(raw), rest),
                }
            }
        }
    }
}

/// A whole call object's name and arguments (as JSON text; a string as it is).
fn whole_call(raw: &str) -> Option<(String, String)> {
    let Value::Object(mut object) = serde_json::from_str::<Value>(raw).ok()? else {
        return None;
    };
    let Some(Value::String(name)) = object.remove("name") else {
        return None;
    };
    let arguments = match object
        .remove("arguments")
        .or_else(|| object.remove("parameters"))
    {
        Some(Value::String(text)) => text,
        Some(value) => value.to_string(),
        None => "{}".to_owned(),
    };
    Some((name, arguments))
}

/// What the start of a call object says so far.
#[derive(Debug, PartialEq)]
enum Header {
    /// Too little text to tell.
    Need,
    /// Not `{"name": "...", "arguments": `.
    No,
    /// The call's name, and the length of the start (whitespace after the colon included).
    Yes { len: usize, name: String },
}

/// Reads `{"name": "...", "arguments": ` at the start of `text`.
fn header(text: &str) -> Header {
    let bytes = text.as_bytes();
    let mut at = 0;
    let skip = |at: &mut usize| {
        while bytes.get(*at).is_some_and(u8::is_ascii_whitespace) {
            *at += 1;
        }
    };
    let literal = |at: &mut usize, byte: u8| match bytes.get(*at) {
        None => Err(Header::Need),
        Some(&found) if found == byte => {
            *at += 1;
            Ok(())
        }
        Some(_) => Err(Header::No),
    };
    let string = |at: &mut usize| -> Result<String, Header> {
        if bytes.get(*at) != Some(&b'"') {
            return Err(if *at >= bytes.len() {
                Header::Need
            } else {
                Header::No
            });
        }
        let start = *at;
        let mut escaped = false;
        for (offset, &byte) in bytes[start + 1..].iter().enumerate() {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    *at = start + offset + 2;
                    return serde_json::from_str(&text[start..*at]).map_err(|_| Header::No);
                }
                _ => {}
            }
        }
        Err(Header::Need)
    };
    let mut parse = || -> Result<Header, Header> {
        let at = &mut at;
        let mut name = String::new();
        for token in START {
            skip(at);
            match token {
                Token::Byte(byte) => literal(at, byte)?,
                Token::Key(wanted) => key(string(at)?, wanted)?,
                Token::Name => name = string(at)?,
            }
        }
        skip(at);
        Ok(Header::Yes { len: *at, name })
    };
    match parse() {
        Ok(header) | Err(header) => header,
    }
}

/// A piece of the start of a call object; whitespace may come before each.
#[derive(Clone, Copy)]
enum Token {
    Byte(u8),
    Key(&'static str),
    Name,
}

/// `{"name": NAME, "arguments": `.
const START: [Token; 7] = [
    Token::Byte(b'{'),
    Token::Key("name"),
    Token::Byte(b':'),
    Token::Name,
    Token::Byte(b','),
    Token::Key("arguments"),
    Token::Byte(b':'),
];

fn key(found: String, wanted: &str) -> Result<(), Header> {
    if found == wanted {
        Ok(())
    } else {
        Err(Header::No)
    }
}

/// Where a JSON value ends, read a piece at a time: strings and their escapes, nesting.
#[derive(Debug, Default)]
struct JsonScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    started: bool,
    /// [`object`](Self::object) found something other than an object.
    failed: bool,
    /// The value is a bare scalar (number, `true`, ...).
    scalar: bool,
}

impl JsonScan {
    /// Reads `input` as (the rest of) one value: the length of it that belongs to the value
    /// (leading whitespace included), and whether the value ended there.
    fn value(&mut self, input: &str) -> (usize, bool) {
        for (at, ch) in input.char_indices() {
            if !self.started {
                if ch.is_whitespace() {
                    continue;
                }
                self.started = true;
                self.scalar = !matches!(ch, '{' | '[' | '"');
            }
            if self.scalar {
                if matches!(ch, ',' | '}' | ']') || ch.is_whitespace() {
                    return (at, true);
                }
                continue;
            }
            if self.string_char(ch) {
                if !self.in_string && self.depth == 0 {
                    return (at + ch.len_utf8(), true);
                }
                continue;
            }
            match ch {
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return (at + ch.len_utf8(), true);
                    }
                }
                _ => {}
            }
        }
        (input.len(), false)
    }

    /// Reads `input` inside an object whose opening brace came before: the position after
    /// its closing brace, once found.
    fn close(&mut self, input: &str) -> Option<usize> {
        for (at, ch) in input.char_indices() {
            if self.string_char(ch) {
                continue;
            }
            match ch {
                '{' | '[' => self.depth += 1,
                '}' if self.depth == 0 => return Some(at + 1),
                '}' | ']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        None
    }

    /// Reads `input` as (the rest of) one object: the position after it, once it closes.
    /// Anything but an object sets `failed`.
    fn object(&mut self, input: &str) -> Option<usize> {
        if !self.started {
            match input.trim_start().chars().next() {
                None => return None,
                Some('{') => {}
                Some(_) => {
                    self.failed = true;
                    return None;
                }
            }
        }
        match self.value(input) {
            (end, true) => Some(end),
            (_, false) => None,
        }
    }

    /// Follows strings: whether `ch` was part of one (its quotes included).
    fn string_char(&mut self, ch: char) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if ch == '\\' {
                self.escaped = true;
            } else if ch == '"' {
                self.in_string = false;
            }
            return true;
        }
        if ch == '"' {
            self.in_string = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use llm_protocol::tools::{FunctionCall, ToolCall, ToolChoice, ToolType};

    use super::*;

    /// The answer text and the calls (name, arguments) the parser finds in `text` fed in
    /// pieces of `size` bytes (whole characters).
    fn parse_in_pieces(forced: bool, text: &str, size: usize) -> (String, Vec<(String, String)>) {
        let mut parser = ToolCallParser::new(forced);
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = size.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            pieces.extend(parser.push(&rest[..cut]));
            rest = &rest[cut..];
        }
        pieces.extend(parser.finish());
        let mut answer = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(text) => answer.push_str(&text),
                Piece::Call(call) => {
                    let index = call.index as usize;
                    if let Some(name) = call.name {
                        assert_eq!(index, calls.len(), "calls start in order");
                        assert!(call.arguments.is_empty(), "the name comes alone");
                        calls.push((name, String::new()));
                    }
                    calls[index].1.push_str(&call.arguments);
                }
            }
        }
        assert_eq!(parser.calls() as usize, calls.len());
        (answer, calls)
    }

    fn check(forced: bool, text: &str, answer: &str, calls: &[(&str, &str)]) {
        let calls: Vec<(String, String)> = calls
            .iter()
            .map(|(name, arguments)| ((*name).to_owned(), (*arguments).to_owned()))
            .collect();
        for size in 1..=text.len() {
            assert_eq!(
                parse_in_pieces(forced, text, size),
                (answer.to_owned(), calls.clone()),
                "{text:?} in pieces of {size}"
            );
        }
    }

    #[test]
    fn a_forced_call_streams_its_name_then_its_arguments() {
        check(
            true,
            r#"{"name": "get_weather", "arguments": {"city": "O\"slo}", "days": [1, {"a": 2}]}}"#,
            "",
            &[(
                "get_weather",
                r#"{"city": "O\"slo}", "days": [1, {"a": 2}]}"#,
            )],
        );
    }

    #[test]
    fn text_without_calls_passes_as_it_is() {
        for text in [
            "Hello <b>world</b> <tool",
            "a < b",
            "<tool_cal",
            "😀 <tool_c😀",
        ] {
            check(false, text, text, &[]);
        }
    }

    #[test]
    fn tagged_calls_are_found_after_text() {
        check(
            false,
            "Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, {\"b\": \"}\"}]}}\n\
             </tool_call>\n<tool_call>{\"arguments\": {\"x\": 1}, \"name\": \"g\"}</tool_call>\n\
             Done.",
            "Sure.\nDone.",
            &[("f", r#"{"a": [1, {"b": "}"}]}"#), ("g", r#"{"x":1}"#)],
        );
    }

    #[test]
    fn what_is_not_a_whole_call_stays_text() {
        // Not an object.
        check(false, "<tool_call>hello", "<tool_call>hello", &[]);
        // Cut before the arguments began.
        check(
            false,
            "<tool_call>{\"name\": \"f\", \"argu",
            "<tool_call>{\"name\": \"f\", \"argu",
            &[],
        );
        // An object that is not a call.
        check(
            false,
            "<tool_call>{\"x\": 1}</tool_call>",
            "<tool_call>{\"x\": 1}</tool_call>",
            &[],
        );
        // Cut inside the arguments: the call was already streamed.
        check(
            false,
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": ",
            "",
            &[("f", "{\"a\": ")],
        );
    }

    fn function(name: &str) -> FunctionDefinition {
        FunctionDefinition {
            name: name.to_owned(),
            description: Some(format!("does {name}")),
            parameters: None,
            strict: None,
        }
    }

    #[test]
    fn the_prompt_shows_tools_calls_and_results() {
        let mut assistant = ChatMessage::new(Role::Assistant, "");
        assistant.content = None;
        assistant.tool_calls = Some(vec![
            ToolCall {
                id: "call_1".into(),
                kind: ToolType::Function,
                function: FunctionCall {
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into(),
                },
            },
            ToolCall {
                id: "call_2".into(),
                kind: ToolType::Function,
                function: FunctionCall {
                    name: "g".into(),
                    arguments: "not json".into(),
                },
            },
        ]);
        let result = |id: &str, text: &str| ChatMessage {
            tool_call_id: Some(id.into()),
            ..ChatMessage::new(Role::Tool, text)
        };
        let messages = [
            ChatMessage::new(Role::Developer, "Be brief."),
            ChatMessage::new(Role::User, "Go."),
            assistant,
            result("call_1", "one"),
            result("call_2", "two"),
        ];
        let tools = ToolUse {
            functions: vec![function("f"), function("g")],
            choice: ToolChoice::Auto,
        };
        assert!(needs_render(&messages[..2], Some(&tools)));
        assert!(needs_render(&messages, None));
        assert!(!needs_render(&messages[..2], None));
        let rendered = render(&messages, Some(&tools));
        let roles: Vec<_> = rendered.iter().map(|(role, _)| *role).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        let system = &rendered[0].1;
        assert!(system.starts_with("Be brief.\n\n# Tools\n"), "{system}");
        assert!(
            system.contains(
                r#"{"type":"function","function":{"name":"f","description":"does f","parameters":{"type":"object"}}}"#
            ),
            "{system}"
        );
        assert_eq!(
            rendered[2].1,
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\":1}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"g\", \"arguments\": \"not json\"}\n</tool_call>"
        );
        assert_eq!(
            rendered[3].1,
            "<tool_response>\none\n</tool_response>\n<tool_response>\ntwo\n</tool_response>"
        );
        // Without a system message, the tools make one.
        let rendered = render(&messages[1..2], Some(&tools));
        assert_eq!(rendered[0].0, "system");
        assert!(rendered[0].1.starts_with("# Tools\n"));
    }

    #[test]
    fn a_forced_call_grammar_names_the_callable_functions() {
        let mut tools = ToolUse {
            functions: vec![function("f"), function("g")],
            choice: ToolChoice::Function("g".into()),
        };
        let Grammar::JsonSchema(named) = call_format(&tools).grammar else {
            panic!("a schema");
        };
        assert_eq!(named["properties"]["name"], json!({"const": "g"}));
        let keys: Vec<_> = named["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        assert_eq!(keys, ["name", "arguments"], "the name comes first");
        tools.choice = ToolChoice::Required;
        let format = call_format(&tools);
        assert_eq!(format.field, "tools");
        let Grammar::JsonSchema(any) = format.grammar else {
            panic!("a schema");
        };
        assert_eq!(any["anyOf"].as_array().map(Vec::len), Some(2));
    }
}
