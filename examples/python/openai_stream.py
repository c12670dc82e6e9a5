#!/usr/bin/env python3
"""Streams a chat completion from llm-server with the official `openai` package, twice.

1. Synchronously, with `client.chat.completions.create(..., stream=True)`: the raw chunks,
   printed as they arrive, then the usage that `stream_options={"include_usage": True}` adds
   in one last chunk.
2. Asynchronously, with the SDK's `client.chat.completions.stream(...)` helper: typed events
   (`content.delta`) and the accumulated completion from `get_final_completion()`.

Run it against a running server (`cargo run -p llm-server`):

    python3 examples/python/openai_stream.py "Why is the sky blue?"

LLM_STREAM_BASE_URL (default http://localhost:8000/v1) and LLM_STREAM_API_KEY (default "unused";
set it when the server runs with --api-key) point it elsewhere.
"""

import asyncio
import os
import sys
import time

import openai
from openai import AsyncOpenAI, OpenAI

BASE_URL = os.environ.get("LLM_STREAM_BASE_URL", "http://localhost:8000/v1")
# The SDK refuses to start without a key; the server ignores it unless it runs with --api-key.
API_KEY = os.environ.get("LLM_STREAM_API_KEY", "unused")
MAX_TOKENS = 200
DEFAULT_QUESTION = "Why is the sky blue? Answer in two sentences."


def served_model(client: OpenAI) -> str:
    """Asks the server for its model's name, so --served-model-name needs no change here."""
    return client.models.list().data[0].id


def stream_sync(client: OpenAI, model: str, question: str) -> None:
    print(f"== chat.completions.create(stream=True), model {model} ==")
    started = time.perf_counter()
    first_token_after = None
    finish_reason = None
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    # Leaving the `with` block closes the connection, which also cancels the generation on the
    # server if the loop ends early (an exception, Ctrl-C).
    with stream:
        for chunk in stream:
            # The usage arrives alone in the last chunk, whose `choices` list is empty.
            if chunk.usage is not None:
                usage = chunk.usage
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.delta.content:
                if first_token_after is None:
                    first_token_after = time.perf_counter() - started
                print(choice.delta.content, end="", flush=True)
            if choice.finish_reason is not None:
                finish_reason = choice.finish_reason
    elapsed = time.perf_counter() - started
    print()
    summary = f"finish_reason={finish_reason}, {elapsed:.2f} s"
    if first_token_after is not None:
        summary += f", first token after {first_token_after * 1000:.0f} ms"
    if usage is not None:
        summary += (
            f", usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion"
            f" = {usage.total_tokens} tokens"
        )
    print(f"[{summary}]\n")


async def stream_async(client: AsyncOpenAI, model: str, question: str) -> None:
    print(f"== chat.completions.stream(...) helper, async, model {model} ==")
    async with client.chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream_options={"include_usage": True},
    ) as stream:
        async for event in stream:
            # Other events ("chunk", "content.done", ...) carry the same text in other shapes.
            if event.type == "content.delta":
                print(event.delta, end="", flush=True)
        try:
            completion = await stream.get_final_completion()
        except openai.LengthFinishReasonError as err:
            # The helper was built for structured outputs, where an answer cut at max_tokens
            # cannot be parsed, so it raises; for plain text the cut answer is still useful.
            completion = err.completion
    print()
    choice = completion.choices[0]
    summary = f"id={completion.id}, finish_reason={choice.finish_reason}"
    summary += f", {len(choice.message.content or '')} characters"
    if completion.usage is not None:
        summary += f", {completion.usage.completion_tokens} completion tokens"
    print(f"[{summary}]")


def main() -> int:
    question = " ".join(sys.argv[1:]) or DEFAULT_QUESTION
    try:
        with OpenAI(base_url=BASE_URL, api_key=API_KEY) as client:
            model = served_model(client)
            stream_sync(client, model, question)

        async def run_async() -> None:
            async with AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY) as client:
                await stream_async(client, model, question)

        asyncio.run(run_async())
    except openai.APIConnectionError:
        print(f"\nno server at {BASE_URL}: start one with `cargo run -p llm-server`", file=sys.stderr)
        return 1
    except openai.APIStatusError as err:
        # Errors before the stream starts come back with an HTTP status (401, 404, 429, 503...).
        print(f"\nthe server refused the request: {err.message}", file=sys.stderr)
        return 1
    except openai.APIError as err:
        # Errors after the stream started arrive as a `data: {"error": ...}` event.
        print(f"\nthe stream failed: {err.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
