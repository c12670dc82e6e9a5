//! Integration tests of `llm-protocol`: one test binary, one module per component.

mod openai_stream;
mod sse_decoder;
mod sse_roundtrip;
