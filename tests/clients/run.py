#!/usr/bin/env python3
"""Real-client tests for llm-server.

Starts the server binary with an API key and a CORS origin, serves examples/browser from a
static HTTP server on another port, and drives the server with real clients: the official
`openai` package, raw HTTP (resumable streams), Chromium through Playwright (fetch, EventSource
and the built-in chat page), nginx in front of the server (with deploy/nginx/llm-stream.conf),
the `websockets` package, and two replicas sharing their rate limits through a real
redis-server behind nginx (with the configuration of docs/deployment.md). Every request uses temperature 0, so answers are deterministic and
each streamed answer is compared with the non-streaming answer to the same request.

    python3 tests/clients/run.py --server-bin PATH [--only openai,dialects,browser,nginx,ws,replicas]

Prints one PASS/FAIL/SKIP line per test and exits 1 if any test failed.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import functools
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "examples" / "browser"
NGINX_SNIPPET = ROOT / "deploy" / "nginx" / "llm-stream.conf"
SUITES = ("openai", "dialects", "browser", "nginx", "ws", "examples", "replicas")

HOST = "127.0.0.1"
SHUTDOWN_GRACE_SECS = 5
HEALTH_TIMEOUT_SECS = 120
IO_TIMEOUT = 60  # seconds any single request, read or browser step may take

# The main question: about 80 tokens with SmolLM2-135M-Instruct at temperature 0, and it ends
# with finish_reason "stop" well below MAX_TOKENS (the openai stream helper raises on "length").
QUESTION = "Explain in three sentences why the sky is blue."
MAX_TOKENS = 120
# A short conversation for the multi-turn WebSocket tests.
TURN1 = "Name three primary colors."
TURN2 = "Which of them is the color of the sky?"
TURN_MAX_TOKENS = 60
# A prompt that keeps generating, for cancellation.
LONG_PROMPT = "Write a long story about a dragon who learns to bake bread."
LONG_MAX_TOKENS = 400

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ---------------------------------------------------------------------------------------------
# Results


class Skip(Exception):
    """Raised by a test that cannot run here; the reason is printed."""


class Results:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def record(self, name: str, status: str, detail: str = "") -> None:
        self.rows.append((name, status, detail))
        line = f"{status} {name}"
        if detail:
            line += f": {detail}"
        print(line, flush=True)

    def run(self, name: str, test, *args) -> bool:
        """Runs `test(*args)`; it passes unless it raises. A returned string is printed."""
        started = time.monotonic()
        try:
            detail = test(*args)
        except Skip as skip:
            self.record(name, "SKIP", str(skip))
            return False
        except AssertionError as error:
            self.record(name, "FAIL", str(error) or "assertion failed")
            return False
        except Exception as error:  # noqa: BLE001 - every failure is reported, not raised
            message = f"{type(error).__name__}: {error}".strip()
            if os.environ.get("CLIENT_TESTS_TRACEBACK"):
                traceback.print_exc()
            self.record(name, "FAIL", shorten(message, 600))
            return False
        elapsed = time.monotonic() - started
        text = f"{detail} " if detail else ""
        self.record(name, "PASS", f"{text}({elapsed:.2f}s)")
        return True

    @property
    def failed(self) -> list[tuple[str, str, str]]:
        return [row for row in self.rows if row[1] == "FAIL"]


def first_line(error: object) -> str:
    """The message of an error without the JavaScript stack Playwright appends."""
    return shorten(str(error).strip().split("\n")[0], 300)


def shorten(text: str, limit: int = 300) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def same_text(got: str, want: str, what: str) -> None:
    if got == want:
        return
    prefix = 0
    while prefix < min(len(got), len(want)) and got[prefix] == want[prefix]:
        prefix += 1
    raise AssertionError(
        f"{what} differs from the non-streaming answer at character {prefix}: "
        f"got {shorten(repr(got[prefix:]), 120)}, want {shorten(repr(want[prefix:]), 120)} "
        f"(lengths {len(got)} vs {len(want)})"
    )


# ---------------------------------------------------------------------------------------------
# Context: where everything runs


class Context:
    def __init__(self, server_port: int, static_port: int, api_key: str, workdir: Path) -> None:
        self.port = server_port
        self.base = f"http://{HOST}:{server_port}"
        self.static_port = static_port
        self.static_origin = f"http://{HOST}:{static_port}"
        self.api_key = api_key
        self.workdir = workdir
        self.model = ""
        self.results = Results()
        self.references: dict[str, dict] = {}
        self.resume: dict = {}

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def body(self, messages: list[dict], max_tokens: int | None, **extra) -> dict:
        body = {"model": self.model, "messages": messages, "temperature": 0}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        body.update(extra)
        return body

    def reference(self, messages: list[dict], max_tokens: int | None, **extra) -> dict:
        """The non-streaming completion for this request (temperature 0), fetched once."""
        key = json.dumps([messages, max_tokens, extra], sort_keys=True)
        if key not in self.references:
            body = self.body(messages, max_tokens, **extra)
            body["stream"] = False
            status, headers, data = http_request(
                HOST, self.port, "POST", "/v1/chat/completions", body, self.auth()
            )
            expect(
                status == 200,
                f"the non-streaming reference request got HTTP {status}: {shorten(data)}",
            )
            self.references[key] = json.loads(data)
        return self.references[key]

    def reference_text(self, messages: list[dict], max_tokens: int | None, **extra) -> str:
        return self.reference(messages, max_tokens, **extra)["choices"][0]["message"]["content"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Raw HTTP


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: dict | bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = IO_TIMEOUT,
) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client; returns status, lower-cased headers and the whole body."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def error_code(data: bytes) -> tuple[str | None, str | None]:
    """(code, param) of an OpenAI-shaped error body, or (None, None)."""
    try:
        error = json.loads(data)["error"]
        return error.get("code"), error.get("param")
    except (ValueError, KeyError, TypeError):
        return None, None


class Dechunker:
    """Incremental decoder for Transfer-Encoding: chunked."""

    def __init__(self) -> None:
        self.buffer = b""
        self.state = "size"
        self.need = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while not self.done:
            if self.state == "size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.buffer[:end].split(b";")[0].strip() or b"0", 16)
                self.buffer = self.buffer[end + 2 :]
                if size == 0:
                    self.done = True
                    break
                self.need, self.state = size, "data"
            elif self.state == "data":
                piece = self.buffer[: self.need]
                out += piece
                self.buffer = self.buffer[len(piece) :]
                self.need -= len(piece)
                if self.need:
                    break
                self.state = "crlf"
            else:
                if len(self.buffer) < 2:
                    break
                self.buffer = self.buffer[2:]
                self.state = "size"
        return bytes(out)


class SseParser:
    """Incremental text/event-stream parser; feed bytes, get the events they complete."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.partial = ""
        self.event: dict = {}
        self.comments: list[str] = []

    def feed(self, data: bytes) -> list[dict]:
        self.partial += self.decoder.decode(data)
        events = []
        while "\n" in self.partial:
            line, self.partial = self.partial.split("\n", 1)
            line = line.rstrip("\r")
            if line == "":
                if self.event:
                    events.append(self.event)
                self.event = {}
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                self.event["data"] = (
                    self.event["data"] + "\n" + value if "data" in self.event else value
                )
            elif field in ("id", "event", "retry"):
                self.event[field] = value
        return events


def chunk_text(event: dict) -> str:
    """The content delta carried by one SSE event ("" for role, finish, usage and [DONE])."""
    data = event.get("data")
    if not data or data == "[DONE]":
        return ""
    payload = json.loads(data)
    expect("error" not in payload, f"the stream carried an error: {shorten(data)}")
    choices = payload.get("choices") or []
    return (choices[0].get("delta") or {}).get("content") or "" if choices else ""


def finish_reason_of(events: list[dict]) -> str | None:
    for event in events:
        data = event.get("data")
        if data and data != "[DONE]":
            for choice in json.loads(data).get("choices") or []:
                if choice.get("finish_reason"):
                    return choice["finish_reason"]
    return None


class RawStream:
    """A streamed response read with a plain socket; records when each read arrived."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.arrivals: list[tuple[float, list[dict]]] = []  # (time, events completed by it)
        self.events: list[dict] = []
        self.body = b""

    @property
    def text(self) -> str:
        return "".join(chunk_text(event) for event in self.events)

    @property
    def token_events(self) -> int:
        return sum(1 for event in self.events if chunk_text(event))

    def token_arrivals(self) -> list[float]:
        """Times of the reads that completed at least one token event."""
        return [t for t, events in self.arrivals if any(chunk_text(e) for e in events)]


def raw_stream(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: dict | None = None,
    stop_after_events: int | None = None,
    timeout: float = IO_TIMEOUT,
    accept_gzip: bool = False,
) -> RawStream:
    """Sends one request over a raw socket and reads the SSE response until [DONE], the end of
    the body, or `stop_after_events` events (then it just closes the socket). With
    `accept_gzip` it asks for compression as browsers do, and decompresses what comes."""
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    if accept_gzip:
        lines.append("Accept-Encoding: gzip, deflate")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload

    result = RawStream()
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            expect(bool(data), "the connection closed before the response headers")
            head += data
        head, rest = head.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        result.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            result.headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in result.headers.get("transfer-encoding", "").lower()
        length = result.headers.get("content-length")
        dechunker = Dechunker() if chunked else None
        encoding = result.headers.get("content-encoding", "").lower()
        expect(encoding in ("", "identity", "gzip", "deflate"), f"Content-Encoding {encoding!r}")
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS) \
            if encoding in ("gzip", "deflate") else None
        parser = SseParser()
        received = 0
        data = rest
        now = time.monotonic()
        deadline = now + timeout
        while True:
            expect(now < deadline, f"the stream did not finish within {timeout} s")
            if data:
                decoded = dechunker.feed(data) if dechunker else data
                if inflater is not None:
                    decoded = inflater.decompress(decoded)
                received += len(data)
                result.body += decoded
                if decoded:
                    events = parser.feed(decoded)
                    result.events += events
                    result.arrivals.append((now, events))
                if any(event.get("data") == "[DONE]" for event in result.events):
                    break
                if stop_after_events is not None and len(result.events) >= stop_after_events:
                    break
                if dechunker and dechunker.done:
                    break
                if not chunked and length is not None and received >= int(length):
                    break
            data = sock.recv(65536)
            now = time.monotonic()
            if not data:
                break
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    return result


def check_sse_headers(stream: RawStream, where: str) -> None:
    expect(stream.status == 200, f"{where}: HTTP {stream.status}: {shorten(stream.body)}")
    content_type = stream.headers.get("content-type", "")
    expect(
        content_type.startswith("text/event-stream"),
        f"{where}: Content-Type is {content_type!r}, not text/event-stream",
    )


# ---------------------------------------------------------------------------------------------
# Suite 1: the openai package (plus raw HTTP for auth and resumable streams)


# ---------------------------------------------------------------------------------------------
# The examples, run as their READMEs say


def run_example(command: list[str], env: dict[str, str]) -> str:
    """Runs an example to its end; returns its stdout. Fails on a non-zero exit."""
    done = subprocess.run(
        command,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=IO_TIMEOUT * 2,
        cwd=ROOT,
    )
    expect(
        done.returncode == 0,
        f"{Path(command[0]).name} exited with {done.returncode}: {shorten(done.stderr, 400)}",
    )
    return done.stdout


def examples_suite(ctx: Context, bin_dir: Path) -> None:
    r = ctx.results
    r.run("examples.python_openai_stream", test_example_python, ctx)
    r.run("examples.resume_client", test_example_resume_client, ctx, bin_dir)
    r.run("examples.ws_chat", test_example_ws_chat, ctx, bin_dir)


def test_example_python(ctx: Context) -> str:
    out = run_example(
        [sys.executable, "examples/python/openai_stream.py", QUESTION],
        {"LLM_STREAM_BASE_URL": f"{ctx.base}/v1", "LLM_STREAM_API_KEY": ctx.api_key},
    )
    reference = ctx.reference(user(QUESTION), 200)["choices"][0]["message"]["content"]
    expect(reference.strip()[:40] in out, "the streamed answer is not in the output")
    return f"{len(out)} bytes of output"


def test_example_resume_client(ctx: Context, bin_dir: Path) -> str:
    binary = bin_dir / "resume-client"
    if not binary.exists():
        raise Skip(f"{binary} is not built (cargo build --workspace)")
    out = run_example(
        [str(binary), "--max-tokens", str(MAX_TOKENS), "--drop-every", "5", QUESTION],
        {"LLM_STREAM_BASE": ctx.base, "LLM_STREAM_API_KEY": ctx.api_key},
    )
    reference = ctx.reference(user(QUESTION), MAX_TOKENS)["choices"][0]["message"]["content"]
    same_text(out.rstrip("\n"), reference, "the resumed answer")
    return "dropped every 5 events, resumed to the same text"


def test_example_ws_chat(ctx: Context, bin_dir: Path) -> str:
    binary = bin_dir / "ws-chat"
    if not binary.exists():
        raise Skip(f"{binary} is not built (cargo build --workspace)")
    url = f"ws://{HOST}:{ctx.port}/ws/chat?api_key={ctx.api_key}"
    out = run_example([str(binary), TURN1, TURN2], {"LLM_STREAM_WS": url})
    answers = [line for line in out.split("\n") if line.strip()]
    expect(len(answers) >= 2, f"expected two answers, got {out!r}")
    return f"{len(answers)} lines over two turns"


def openai_suite(ctx: Context) -> None:
    r = ctx.results
    try:
        import openai  # noqa: F401
    except ImportError:
        r.record("openai", "FAIL", "the openai package is missing: pip install -r tests/clients/requirements.txt")
        return
    r.run("openai.models_list", test_models_list, ctx)
    r.run("openai.non_streaming", test_non_streaming, ctx)
    r.run("openai.stream_sync", test_stream_sync, ctx)
    r.run("openai.stream_without_usage", test_stream_without_usage, ctx)
    r.run("openai.stream_helper_async", test_stream_helper_async, ctx)
    r.run("openai.error_bad_model", test_bad_model, ctx)
    r.run("openai.error_bad_model_stream", test_bad_model_stream, ctx)
    r.run("openai.error_wrong_api_key", test_wrong_api_key, ctx)
    r.run("openai.error_negative_max_tokens", test_negative_max_tokens, ctx)
    r.run("openai.structured_parse", test_structured_parse, ctx)
    r.run("openai.structured_stream_helper", test_structured_stream_helper, ctx)
    r.run("openai.json_mode", test_json_mode, ctx)
    r.run("openai.error_unusable_schema", test_unusable_schema, ctx)
    r.run("openai.seed", test_seed, ctx)
    r.run("openai.logprobs", test_logprobs, ctx)
    r.run("openai.n_choices", test_n_choices, ctx)
    r.run("openai.tools", test_tools, ctx)
    r.run("openai.tools_stream_helper", test_tools_stream_helper, ctx)
    r.run("auth.missing_key_401", test_missing_key, ctx)
    r.run("auth.health_is_open", test_health_open, ctx)
    r.run("http.sse_headers_and_request_id", test_sse_headers, ctx)
    r.run("resume.drop_and_resume", test_resume_drop, ctx)
    r.run("resume.query_last_event_id", test_resume_query, ctx)
    r.run("resume.replay_from_start", test_resume_replay_all, ctx)
    r.run("resume.finished_last_id_204", test_resume_204, ctx)
    r.run("resume.unknown_id_404", test_resume_unknown, ctx)


def sync_client(ctx: Context, api_key: str | None = None):
    import openai

    return openai.OpenAI(
        base_url=ctx.base + "/v1",
        api_key=api_key or ctx.api_key,
        max_retries=0,
        timeout=IO_TIMEOUT,
    )


def test_models_list(ctx: Context) -> str:
    with sync_client(ctx) as client:
        ids = [model.id for model in client.models.list()]
    expect(ids == [ctx.model], f"models: {ids}, want [{ctx.model!r}]")
    return f"model {ctx.model}"


def test_non_streaming(ctx: Context) -> str:
    with sync_client(ctx) as client:
        completion = client.chat.completions.create(
            model=ctx.model, messages=user(QUESTION), max_tokens=MAX_TOKENS, temperature=0
        )
    reference = ctx.reference(user(QUESTION), MAX_TOKENS)
    expect(completion.object == "chat.completion", f"object is {completion.object!r}")
    expect(completion.id.startswith("chatcmpl-"), f"id {completion.id!r}")
    choice = completion.choices[0]
    expect(choice.message.role == "assistant", f"role {choice.message.role!r}")
    same_text(choice.message.content or "", reference["choices"][0]["message"]["content"], "the answer")
    expect(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason!r}, want stop")
    usage = completion.usage
    expect(usage is not None, "no usage")
    expect(
        usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and usage.completion_tokens > 0,
        f"inconsistent usage {usage}",
    )
    return f"{usage.completion_tokens} tokens"


def test_stream_sync(ctx: Context) -> str:
    reference = ctx.reference(user(QUESTION), MAX_TOKENS)
    with sync_client(ctx) as client:
        stream = client.chat.completions.create(
            model=ctx.model,
            messages=user(QUESTION),
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks, times = [], []
        for chunk in stream:
            chunks.append(chunk)
            times.append(time.monotonic())
    expect(len(chunks) >= 3, f"only {len(chunks)} chunks")
    ids = {chunk.id for chunk in chunks}
    expect(len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-"), f"chunk ids {ids}")
    expect(all(c.object == "chat.completion.chunk" for c in chunks), "a chunk's object is not chat.completion.chunk")
    first = chunks[0].choices[0].delta
    expect(first.role == "assistant", f"the first delta is {first}, want role assistant")
    deltas = [
        (t, c.choices[0].delta.content)
        for t, c in zip(times, chunks)
        if c.choices and c.choices[0].delta.content
    ]
    expect(len(deltas) >= 3, f"only {len(deltas)} content deltas")
    same_text("".join(text for _, text in deltas), reference["choices"][0]["message"]["content"], "the streamed text")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    expect(finishes == ["stop"], f"finish reasons {finishes}, want ['stop']")
    last = chunks[-1]
    expect(last.choices == [] and last.usage is not None, f"the last chunk is not the usage chunk: {last}")
    want = reference["usage"]
    got = last.usage
    expect(
        (got.prompt_tokens, got.completion_tokens, got.total_tokens)
        == (want["prompt_tokens"], want["completion_tokens"], want["total_tokens"]),
        f"streamed usage {got} differs from the non-streaming usage {want}",
    )
    expect(
        all(c.usage is None for c in chunks[:-1]),
        "usage appeared on a chunk before the last one",
    )
    spread = (deltas[-1][0] - deltas[0][0]) * 1000
    expect(spread > 10, f"all {len(deltas)} deltas arrived within {spread:.1f} ms")
    return f"{len(deltas)} deltas over {spread:.0f} ms"


def test_stream_without_usage(ctx: Context) -> str:
    reference = ctx.reference_text(user(TURN1), TURN_MAX_TOKENS)
    with sync_client(ctx) as client:
        chunks = list(
            client.chat.completions.create(
                model=ctx.model,
                messages=user(TURN1),
                max_tokens=TURN_MAX_TOKENS,
                temperature=0,
                stream=True,
            )
        )
    expect(all(c.usage is None for c in chunks), "usage sent without stream_options.include_usage")
    expect(all(c.choices for c in chunks), "a chunk without choices (usage chunk) was sent")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    same_text(text, reference, "the streamed text")
    return f"{len(chunks)} chunks"


def test_stream_helper_async(ctx: Context) -> str:
    import openai

    reference = ctx.reference_text(user(QUESTION), MAX_TOKENS)

    async def go():
        client = openai.AsyncOpenAI(
            base_url=ctx.base + "/v1", api_key=ctx.api_key, max_retries=0, timeout=IO_TIMEOUT
        )
        try:
            deltas, snapshot = 0, ""
            async with client.chat.completions.stream(
                model=ctx.model, messages=user(QUESTION), max_tokens=MAX_TOKENS, temperature=0
            ) as stream:
                async for event in stream:
                    if event.type == "content.delta":
                        deltas += 1
                        snapshot = event.snapshot
                final = await stream.get_final_completion()
            return deltas, snapshot, final
        finally:
            await client.close()

    deltas, snapshot, final = asyncio.run(go())
    expect(deltas >= 3, f"only {deltas} content.delta events")
    same_text(final.choices[0].message.content or "", reference, "get_final_completion()")
    same_text(snapshot, reference, "the last content.delta snapshot")
    expect(final.choices[0].finish_reason == "stop", f"finish_reason {final.choices[0].finish_reason!r}")
    return f"{deltas} content.delta events"


def test_bad_model(ctx: Context) -> str:
    import openai

    with sync_client(ctx) as client:
        try:
            client.chat.completions.create(
                model="no-such-model", messages=user("hi"), max_tokens=4, temperature=0
            )
        except openai.NotFoundError as error:
            expect(error.code == "model_not_found", f"code {error.code!r}, want model_not_found")
            return "NotFoundError model_not_found"
    raise AssertionError("no error for an unknown model")


def test_bad_model_stream(ctx: Context) -> str:
    import openai

    with sync_client(ctx) as client:
        try:
            stream = client.chat.completions.create(
                model="no-such-model", messages=user("hi"), max_tokens=4, temperature=0, stream=True
            )
            list(stream)
        except openai.NotFoundError as error:
            expect(error.code == "model_not_found", f"code {error.code!r}, want model_not_found")
            return "NotFoundError before the stream"
    raise AssertionError("no error for an unknown model (streaming)")


def test_wrong_api_key(ctx: Context) -> str:
    import openai

    with sync_client(ctx, api_key="wrong-" + secrets.token_hex(8)) as client:
        try:
            client.chat.completions.create(
                model=ctx.model, messages=user("hi"), max_tokens=4, temperature=0
            )
        except openai.AuthenticationError as error:
            expect(error.code == "invalid_api_key", f"code {error.code!r}, want invalid_api_key")
            return "AuthenticationError invalid_api_key"
    raise AssertionError("a wrong API key was accepted (is --api-key implemented?)")


def test_negative_max_tokens(ctx: Context) -> str:
    import openai

    with sync_client(ctx) as client:
        try:
            client.chat.completions.create(
                model=ctx.model, messages=user("hi"), max_tokens=-1, temperature=0
            )
        except openai.BadRequestError as error:
            expect(error.param == "max_tokens", f"param {error.param!r}, want max_tokens")
            return "BadRequestError param=max_tokens"
    raise AssertionError("max_tokens -1 was accepted")


STRUCTURED_QUESTION = "Tell me about Paris."
STRUCTURED_MAX_TOKENS = 96


@functools.cache
def city_model():
    """A pydantic model the SDK's helpers turn into a strict JSON schema and parse answers into."""
    import pydantic

    class City(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=40)
        country: str = pydantic.Field(max_length=40)
        population: int
        capital: bool

    return City


def test_structured_parse(ctx: Context) -> str:
    with sync_client(ctx) as client:
        completion = client.chat.completions.parse(
            model=ctx.model, messages=user(STRUCTURED_QUESTION), response_format=city_model(),
            max_tokens=STRUCTURED_MAX_TOKENS, temperature=0,
        )
    choice = completion.choices[0]
    expect(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason!r}: {choice.message.content!r}")
    parsed = choice.message.parsed
    expect(isinstance(parsed, city_model()), f"parsed {parsed!r} from {choice.message.content!r}")
    return f"parsed {choice.message.content}"


def test_structured_stream_helper(ctx: Context) -> str:
    args = dict(model=ctx.model, messages=user(STRUCTURED_QUESTION), response_format=city_model(),
                max_tokens=STRUCTURED_MAX_TOKENS, temperature=0)
    with sync_client(ctx) as client:
        whole = client.chat.completions.parse(**args)
        deltas, partial = 0, None
        with client.chat.completions.stream(**args) as stream:
            for event in stream:
                if event.type == "content.delta":
                    deltas += 1
                    partial = event.parsed
            final = stream.get_final_completion()
    expect(deltas >= 5, f"only {deltas} content deltas: the JSON must stream token by token")
    expect(isinstance(partial, dict) and partial, f"the last partial parse {partial!r}")
    message = final.choices[0].message
    same_text(message.content or "", whole.choices[0].message.content or "", "the streamed JSON")
    expect(message.parsed == whole.choices[0].message.parsed, f"parsed {message.parsed!r}")
    return f"{deltas} deltas, parsed {message.parsed!r}"


def test_json_mode(ctx: Context) -> str:
    with sync_client(ctx) as client:
        completion = client.chat.completions.create(
            model=ctx.model, messages=user("A cat as a JSON object with name and age."),
            response_format={"type": "json_object"}, max_tokens=STRUCTURED_MAX_TOKENS, temperature=0,
        )
    content = completion.choices[0].message.content or ""
    finish = completion.choices[0].finish_reason
    expect(finish == "stop", f"finish_reason {finish!r}: {shorten(content)!r}")
    value = json.loads(content)
    expect(isinstance(value, dict), f"not an object: {content!r}")
    return f"object {shorten(content, 80)}"


def test_unusable_schema(ctx: Context) -> str:
    import openai

    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/definitions/missing"}}}
    with sync_client(ctx) as client:
        try:
            client.chat.completions.create(
                model=ctx.model, messages=user("hi"), response_format=schema, max_tokens=4, stream=True
            )
        except openai.BadRequestError as error:
            expect(error.param == "response_format", f"param {error.param!r}, want response_format")
            return "BadRequestError param=response_format"
    raise AssertionError("a schema with a dangling $ref was accepted")


def test_n_choices(ctx: Context) -> str:
    args = dict(model=ctx.model, messages=user("Write a story about a dragon."), max_tokens=20,
                temperature=1.0, seed=11, n=2)
    with sync_client(ctx) as client:
        whole = client.chat.completions.create(**args)
        streamed, finishes = ["", ""], [None, None]
        usage = None
        for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args):
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                streamed[choice.index] += choice.delta.content or ""
                finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    expect([choice.index for choice in whole.choices] == [0, 1], f"indexes {[c.index for c in whole.choices]}")
    for index, choice in enumerate(whole.choices):
        same_text(streamed[index], choice.message.content or "", f"choice {index} streamed")
    expect(whole.choices[0].message.content != whole.choices[1].message.content, "the two choices are the same text")
    expect(finishes == ["length", "length"], f"finish reasons {finishes}")
    expect(usage is not None and usage.completion_tokens == 40 == whole.usage.completion_tokens,
           f"usage {usage!r} / {whole.usage!r}")
    return "2 choices, streamed under their indexes, equal the whole answer's; usage counts both"


WEATHER_QUESTION = "What is the weather in Paris?"


def weather_tool() -> dict:
    return {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}}


def test_tools(ctx: Context) -> str:
    args = dict(model=ctx.model, messages=user(WEATHER_QUESTION), tools=[weather_tool()],
                tool_choice="required", max_tokens=60, temperature=0)
    with sync_client(ctx) as client:
        whole = client.chat.completions.create(**args)
        choice = whole.choices[0]
        expect(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason!r}")
        calls = choice.message.tool_calls or []
        expect(len(calls) == 1, f"{len(calls)} calls: {choice.message!r}")
        call = calls[0]
        expect(call.type == "function" and call.function.name == "get_weather", f"call {call!r}")
        arguments = json.loads(call.function.arguments)
        expect(set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit"),
               f"arguments {call.function.arguments!r}")
        ids, names, pieces, finish = [], [], [], None
        for chunk in client.chat.completions.create(stream=True, **args):
            if not chunk.choices:
                continue
            for delta in chunk.choices[0].delta.tool_calls or []:
                expect(delta.index == 0, f"index {delta.index}")
                if delta.id:
                    ids.append(delta.id)
                if delta.function and delta.function.name:
                    expect(not pieces, "the name comes before the arguments")
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    pieces.append(delta.function.arguments)
            finish = chunk.choices[0].finish_reason or finish
        expect(len(ids) == 1 and names == ["get_weather"], f"ids {ids}, names {names}")
        expect(len(pieces) >= 5, f"only {len(pieces)} argument pieces: they must stream")
        same_text("".join(pieces), call.function.arguments, "the streamed arguments")
        expect(finish == "tool_calls", f"streamed finish_reason {finish!r}")
        # The next turn sends the call and its result back, as the SDK's users do.
        follow = client.chat.completions.create(
            model=ctx.model, tools=[weather_tool()], max_tokens=24, temperature=0,
            messages=[*user(WEATHER_QUESTION), choice.message,
                      {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}],
        )
    expect(follow.choices[0].finish_reason in ("stop", "length", "tool_calls"),
           f"follow-up finish_reason {follow.choices[0].finish_reason!r}")
    return f"get_weather({call.function.arguments}) in {len(pieces)} pieces; the result's turn answered"


def test_tools_stream_helper(ctx: Context) -> str:
    import typing

    import openai
    import pydantic

    class GetWeather(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=20)
        unit: typing.Literal["celsius", "fahrenheit"]

    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    deltas, done = 0, None
    with sync_client(ctx) as client:
        with client.chat.completions.stream(
            model=ctx.model, messages=user(WEATHER_QUESTION), tools=[tool], max_tokens=60, temperature=0,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        ) as stream:
            for event in stream:
                if event.type == "tool_calls.function.arguments.delta":
                    deltas += 1
                elif event.type == "tool_calls.function.arguments.done":
                    done = event
            final = stream.get_final_completion()
    expect(deltas >= 5, f"only {deltas} argument deltas")
    expect(done is not None and done.name == "get_weather", f"done event {done!r}")
    call = (final.choices[0].message.tool_calls or [None])[0]
    expect(call is not None and isinstance(call.function.parsed_arguments, GetWeather),
           f"parsed arguments of {call!r}")
    return f"{deltas} argument deltas, parsed {call.function.parsed_arguments!r}"


def test_seed(ctx: Context) -> str:
    args = dict(model=ctx.model, messages=user("Write a story about a dragon."), max_tokens=40, temperature=1.0)
    with sync_client(ctx) as client:
        answers = [client.chat.completions.create(seed=seed, **args).choices[0].message.content
                   for seed in (7, 7, 8)]
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                           client.chat.completions.create(seed=7, stream=True, **args) if chunk.choices)
    same_text(answers[1] or "", answers[0] or "", "the same seed's answer")
    same_text(streamed, answers[0] or "", "the same seed's streamed answer")
    expect(answers[2] != answers[0], f"seeds 7 and 8 sampled the same answer: {shorten(answers[0] or '')!r}")
    return "seed 7 twice and streamed: the same text; seed 8: another"


def test_logprobs(ctx: Context) -> str:
    args = dict(model=ctx.model, messages=user(QUESTION), max_tokens=24, temperature=0, logprobs=True, top_logprobs=3)
    with sync_client(ctx) as client:
        whole = client.chat.completions.create(**args)
        streamed = []
        for chunk in client.chat.completions.create(stream=True, **args):
            if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                content = chunk.choices[0].logprobs.content
                joined = "".join(token.token for token in content)
                expect(joined == chunk.choices[0].delta.content, f"chunk tokens {joined!r} vs {chunk.choices[0].delta.content!r}")
                streamed.extend(content)
    content = whole.choices[0].logprobs.content
    expect(len(content) == whole.usage.completion_tokens, f"{len(content)} tokens, usage {whole.usage.completion_tokens}")
    expect("".join(token.token for token in content) == whole.choices[0].message.content, "tokens join to the answer")
    expect([token.model_dump() for token in streamed] == [token.model_dump() for token in content],
           "the streamed logprobs equal the whole answer's")
    for token in content:
        expect(token.logprob <= 0, f"logprob {token.logprob} of {token.token!r}")
        expect(len(token.top_logprobs) == 3, f"{len(token.top_logprobs)} top_logprobs")
        expect(token.top_logprobs[0].token == token.token, f"greedy token {token.token!r} is not the top one")
        expect(bytes(token.bytes or []).decode("utf-8", "replace") == token.token, f"bytes of {token.token!r}")
    return f"{len(content)} tokens, first {content[0].token!r} {content[0].logprob:.3f}"


def test_missing_key(ctx: Context) -> str:
    status, headers, data = http_request(
        HOST, ctx.port, "POST", "/v1/chat/completions", ctx.body(user("hi"), 4)
    )
    expect(status == 401, f"HTTP {status} without an API key, want 401: {shorten(data)}")
    code, _ = error_code(data)
    expect(code == "invalid_api_key", f"code {code!r}, want invalid_api_key")
    status, _, data = http_request(HOST, ctx.port, "GET", "/v1/models")
    expect(status == 401, f"GET /v1/models without a key: HTTP {status}, want 401")
    return "401 invalid_api_key"


def test_health_open(ctx: Context) -> str:
    status, _, data = http_request(HOST, ctx.port, "GET", "/health")
    expect(status == 200 and json.loads(data) == {"status": "ok", "engine_restarts": 0}, f"HTTP {status}: {shorten(data)}")
    return "200 without a key"


def test_sse_headers(ctx: Context) -> str:
    request_id = "client-" + secrets.token_hex(6)
    stream = raw_stream(ctx.port, "POST", "/v1/chat/completions", {**ctx.auth(), "X-Request-Id": request_id},
                        ctx.body(user(TURN1), TURN_MAX_TOKENS, stream=True))
    check_sse_headers(stream, "direct")
    headers = stream.headers
    expect(headers.get("cache-control") == "no-cache", f"Cache-Control {headers.get('cache-control')!r}")
    expect(headers.get("x-accel-buffering") == "no", f"X-Accel-Buffering {headers.get('x-accel-buffering')!r}")
    expect(headers.get("x-request-id") == request_id,
           f"X-Request-Id {headers.get('x-request-id')!r}, want the client's {request_id!r}")
    same_text(stream.text, ctx.reference_text(user(TURN1), TURN_MAX_TOKENS), "the streamed text")
    _, other, _ = http_request(HOST, ctx.port, "GET", "/health")
    expect(bool(other.get("x-request-id")), "GET /health has no X-Request-Id")
    return "text/event-stream, no-cache, X-Accel-Buffering: no, X-Request-Id echoed"


def event_index(event: dict, response_id: str) -> int:
    event_id = event.get("id")
    expect(event_id is not None, f"an event has no id: line: {shorten(event)}")
    rid, _, n = event_id.rpartition(":")
    expect(rid == response_id, f"event id {event_id!r} does not start with {response_id!r}:")
    return int(n)


def read_sse_http_client(response, parser: SseParser, stop_after: int | None = None) -> list[dict]:
    """Reads SSE events line by line from an http.client response."""
    events: list[dict] = []
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        expect(time.monotonic() < deadline, f"the stream did not finish within {IO_TIMEOUT} s")
        line = response.readline()
        if not line:
            return events
        events += parser.feed(line)
        if stop_after is not None and len(events) >= stop_after:
            return events
        if events and events[-1].get("data") == "[DONE]":
            return events


def check_resumed(ctx: Context, before: list[dict], after: list[dict], response_id: str, where: str) -> str:
    """`after` must continue `before` exactly: consecutive ids, no duplicates, the full text."""
    reference = ctx.reference_text(user(QUESTION), MAX_TOKENS)
    expect(after, f"{where}: no events after resuming")
    indices_before = [event_index(e, response_id) for e in before]
    indices_after = [event_index(e, response_id) for e in after]
    expect(indices_before == list(range(len(before))), f"ids before the drop: {indices_before}")
    want = list(range(len(before), len(before) + len(after)))
    expect(
        indices_after == want,
        f"{where}: resumed ids {indices_after[:5]}...{indices_after[-3:]}, want {want[0]}..{want[-1]}",
    )
    expect(after[-1].get("data") == "[DONE]", f"{where}: the resumed stream does not end with [DONE]")
    expect(
        sum(1 for e in before + after if e.get("data") == "[DONE]") == 1,
        f"{where}: [DONE] appears more than once",
    )
    text = "".join(chunk_text(e) for e in before + after)
    same_text(text, reference, f"{where}: text before the drop + resumed text")
    expect(finish_reason_of(after) == "stop", f"{where}: finish_reason {finish_reason_of(after)!r}")
    return f"{len(before)} events, dropped, {len(after)} resumed"


def start_resumable_and_drop(ctx: Context, keep: int) -> tuple[str, list[dict]]:
    """POSTs a resumable stream with http.client, reads `keep` events, drops the connection."""
    body = ctx.body(user(QUESTION), MAX_TOKENS, stream=True, resumable=True)
    conn = http.client.HTTPConnection(HOST, ctx.port, timeout=IO_TIMEOUT)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(body),
            headers={**ctx.auth(), "Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise AssertionError(f"HTTP {response.status}: {shorten(response.read())}")
        events = read_sse_http_client(response, SseParser(), stop_after=keep)
        expect(len(events) == keep, f"got {len(events)} events before the drop, wanted {keep}")
        expect(events[0].get("id"), "the events of a resumable stream carry no `id:` line (is resumable implemented?)")
        response_id = events[0]["id"].rpartition(":")[0]
        first = json.loads(events[0]["data"])
        expect(first["id"] == response_id, f"event id {events[0]['id']!r} vs chunk id {first['id']!r}")
        expect(
            first["choices"][0]["delta"].get("role") == "assistant",
            "event 0 is not the role chunk",
        )
        # Drop the connection mid-stream, as a client whose network went away.
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        response.close()
        return response_id, events
    finally:
        conn.close()


def resume(ctx: Context, path: str, last_event_id: str | None) -> tuple[int, dict[str, str], list[dict], bytes]:
    headers = {**ctx.auth(), "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    conn = http.client.HTTPConnection(HOST, ctx.port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            return response.status, dict(response.getheaders()), [], response.read()
        events = read_sse_http_client(response, SseParser())
        return response.status, {k.lower(): v for k, v in response.getheaders()}, events, b""
    finally:
        conn.close()


def test_resume_drop(ctx: Context) -> str:
    keep = 4  # the role chunk and three tokens
    response_id, before = start_resumable_and_drop(ctx, keep)
    ctx.resume["id"] = response_id
    status, headers, after, data = resume(
        ctx, f"/v1/chat/completions/{response_id}/stream", f"{response_id}:{keep - 1}"
    )
    expect(status == 200, f"resume: HTTP {status}: {shorten(data)}")
    ctx.resume["events"] = before + after
    return check_resumed(ctx, before, after, response_id, "Last-Event-ID")


def test_resume_query(ctx: Context) -> str:
    keep = 6
    response_id, before = start_resumable_and_drop(ctx, keep)
    query = urllib.parse.urlencode({"last_event_id": f"{response_id}:{keep - 1}"})
    status, _, after, data = resume(ctx, f"/v1/chat/completions/{response_id}/stream?{query}", None)
    expect(status == 200, f"resume: HTTP {status}: {shorten(data)}")
    return check_resumed(ctx, before, after, response_id, "?last_event_id")


def needs_resumed_stream(ctx: Context) -> tuple[str, list[dict]]:
    if "events" not in ctx.resume:
        raise AssertionError("depends on resume.drop_and_resume, which failed")
    return ctx.resume["id"], ctx.resume["events"]


def test_resume_replay_all(ctx: Context) -> str:
    response_id, events = needs_resumed_stream(ctx)
    status, _, replay, data = resume(ctx, f"/v1/chat/completions/{response_id}/stream", None)
    expect(status == 200, f"HTTP {status}: {shorten(data)}")
    expect(
        [e.get("id") for e in replay] == [e.get("id") for e in events],
        f"replay ids differ: {len(replay)} events vs {len(events)}",
    )
    expect([e.get("data") for e in replay] == [e.get("data") for e in events], "replayed data differs")
    return f"{len(replay)} events replayed"


def test_resume_204(ctx: Context) -> str:
    response_id, events = needs_resumed_stream(ctx)
    status, _, _, data = resume(ctx, f"/v1/chat/completions/{response_id}/stream", events[-1]["id"])
    expect(status == 204, f"HTTP {status}, want 204 after the last event: {shorten(data)}")
    return "204"


def test_resume_unknown(ctx: Context) -> str:
    status, _, _, data = resume(ctx, "/v1/chat/completions/chatcmpl-00000000deadbeef/stream", None)
    expect(status == 404, f"HTTP {status}, want 404: {shorten(data)}")
    code, _ = error_code(data)
    expect(code == "stream_not_found", f"code {code!r}, want stream_not_found")
    return "404 stream_not_found"


# ---------------------------------------------------------------------------------------------
# Suite 2: Chromium through Playwright


# ---------------------------------------------------------------------------------------------
# The other dialects: completions and the Responses API through `openai`, Messages through
# `anthropic`. Each streamed answer must equal the whole answer to the same request.

# A raw prompt for /v1/completions: no chat template, the text is continued.
COMPLETION_PROMPT = "The three primary colors are"
COMPLETION_MAX_TOKENS = 40


def dialects_suite(ctx: Context) -> None:
    r = ctx.results
    try:
        import anthropic  # noqa: F401
        import openai  # noqa: F401
    except ImportError as error:
        r.record("dialects", "FAIL", f"{error.name} is missing: pip install -r tests/clients/requirements.txt")
        return
    r.run("completions.stream_equals_whole", test_completions_stream, ctx)
    r.run("responses.create_stream_equals_whole", test_responses_create_stream, ctx)
    r.run("responses.stream_helper", test_responses_stream_helper, ctx)
    r.run("responses.resume_with_retrieve", test_responses_resume, ctx)
    r.run("responses.structured_parse", test_responses_structured_parse, ctx)
    r.run("anthropic.messages_stream_equals_create", test_anthropic_stream, ctx)
    r.run("anthropic.async_stream_events", test_anthropic_async_events, ctx)
    r.run("anthropic.count_tokens", test_anthropic_count_tokens, ctx)
    r.run("anthropic.errors", test_anthropic_errors, ctx)


def test_completions_stream(ctx: Context) -> str:
    args = dict(model=ctx.model, prompt=COMPLETION_PROMPT, max_tokens=COMPLETION_MAX_TOKENS, temperature=0)
    with sync_client(ctx) as client:
        whole = client.completions.create(**args)
        chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    expect(whole.object == "text_completion", f"object {whole.object!r}")
    expect(whole.id.startswith("cmpl-"), f"id {whole.id!r}")
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    same_text(text, whole.choices[0].text, "the streamed completion")
    expect(not text.startswith("<|im_start|>") and "assistant" not in text[:20],
           f"no chat template around a raw prompt: {text[:60]!r}")
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    expect(finish == [whole.choices[0].finish_reason], f"finish reasons {finish}, whole {whole.choices[0].finish_reason!r}")
    usage = chunks[-1].usage
    expect(usage is not None and usage.completion_tokens == whole.usage.completion_tokens,
           f"stream usage {usage}, whole {whole.usage}")
    return f"{len(chunks)} chunks, {usage.completion_tokens} tokens"


def test_responses_create_stream(ctx: Context) -> str:
    args = dict(model=ctx.model, input=QUESTION, max_output_tokens=MAX_TOKENS, temperature=0)
    with sync_client(ctx) as client:
        whole = client.responses.create(**args)
        events = list(client.responses.create(stream=True, **args))
    expect(whole.object == "response" and whole.status == "completed", f"{whole.object} {whole.status}")
    reference = ctx.reference_text(user(QUESTION), MAX_TOKENS)
    same_text(whole.output_text, reference, "the Responses answer against chat")
    types = [event.type for event in events]
    expect(types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], f"first events {types[:4]}")
    expect(types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"], f"last events {types[-4:]}")
    numbers = [event.sequence_number for event in events]
    expect(numbers == list(range(len(events))), f"sequence numbers {numbers[:8]}...")
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    same_text(text, whole.output_text, "the streamed deltas")
    final = events[-1].response
    expect(final.usage.output_tokens == whole.usage.output_tokens, f"usage {final.usage} vs {whole.usage}")
    return f"{len(events)} events"


def test_responses_stream_helper(ctx: Context) -> str:
    args = dict(model=ctx.model, input=QUESTION, max_output_tokens=MAX_TOKENS, temperature=0)
    with sync_client(ctx) as client:
        whole = client.responses.create(**args)
        deltas = 0
        with client.responses.stream(**args) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    deltas += 1
            final = stream.get_final_response()
    expect(deltas >= 3, f"only {deltas} deltas")
    same_text(final.output_text, whole.output_text, "get_final_response()")
    return f"{deltas} deltas"


def test_responses_resume(ctx: Context) -> str:
    args = dict(model=ctx.model, input=QUESTION, max_output_tokens=MAX_TOKENS, temperature=0)
    with sync_client(ctx) as client:
        whole = client.responses.create(**args)
        before = []
        stream = client.responses.create(stream=True, extra_body={"resumable": True}, **args)
        for event in stream:
            before.append(event)
            if len(before) == 6:
                break
        stream.close()
        response_id = before[0].response.id
        after = list(client.responses.retrieve(response_id, stream=True, starting_after=before[-1].sequence_number))
    numbers = [event.sequence_number for event in before + after]
    expect(numbers == list(range(len(numbers))), f"no gap or duplicate: {numbers}")
    text = "".join(event.delta for event in before + after if event.type == "response.output_text.delta")
    same_text(text, whole.output_text, "the resumed stream")
    expect(after[-1].type == "response.completed", f"ends with {after[-1].type}")
    return f"resumed after {len(before)} events, {len(after)} more"


# The current `anthropic` package takes no `temperature` argument; the Messages API field
# still exists, so it goes in `extra_body`, as the SDK allows.
GREEDY = {"temperature": 0}


def test_responses_structured_parse(ctx: Context) -> str:
    with sync_client(ctx) as client:
        response = client.responses.parse(
            model=ctx.model, input=STRUCTURED_QUESTION, text_format=city_model(),
            max_output_tokens=STRUCTURED_MAX_TOKENS, temperature=0,
        )
    expect(response.status == "completed", f"status {response.status!r}: {response.output_text!r}")
    parsed = response.output_parsed
    expect(isinstance(parsed, city_model()), f"output_parsed {parsed!r} from {response.output_text!r}")
    return f"output_parsed {parsed!r}"


def anthropic_client(ctx: Context, api_key: str | None = None):
    import anthropic

    return anthropic.Anthropic(base_url=ctx.base, api_key=api_key or ctx.api_key, max_retries=0, timeout=IO_TIMEOUT)


def test_anthropic_stream(ctx: Context) -> str:
    args = dict(model=ctx.model, max_tokens=MAX_TOKENS, system="You are a helpful assistant.",
                messages=user(QUESTION), extra_body=GREEDY)
    with anthropic_client(ctx) as client:
        whole = client.messages.create(**args)
        with client.messages.stream(**args) as stream:
            pieces = list(stream.text_stream)
            final = stream.get_final_message()
    expect(whole.type == "message" and whole.role == "assistant", f"{whole.type} {whole.role}")
    expect(whole.id.startswith("msg_"), f"id {whole.id!r}")
    expect(whole.stop_reason == "end_turn", f"stop_reason {whole.stop_reason!r}")
    text = "".join(pieces)
    same_text(text, whole.content[0].text, "the streamed text")
    same_text(final.content[0].text, whole.content[0].text, "get_final_message()")
    expect(final.stop_reason == whole.stop_reason, f"final stop_reason {final.stop_reason!r}")
    expect(final.usage.output_tokens == whole.usage.output_tokens and final.usage.input_tokens == whole.usage.input_tokens,
           f"usage {final.usage} vs {whole.usage}")
    return f"{len(pieces)} text pieces, {whole.usage.output_tokens} tokens"


def test_anthropic_async_events(ctx: Context) -> str:
    import anthropic

    async def go():
        client = anthropic.AsyncAnthropic(base_url=ctx.base, api_key=ctx.api_key, max_retries=0, timeout=IO_TIMEOUT)
        try:
            stream = await client.messages.create(model=ctx.model, max_tokens=8, messages=user(QUESTION),
                                                  stream=True, extra_body=GREEDY)
            return [event async for event in stream]
        finally:
            await client.close()

    events = asyncio.run(go())
    types = [event.type for event in events]
    expect(types[:2] == ["message_start", "content_block_start"], f"first events {types[:2]}")
    expect(types[-3:] == ["content_block_stop", "message_delta", "message_stop"], f"last events {types[-3:]}")
    delta = events[-2]
    expect(delta.delta.stop_reason == "max_tokens", f"stop_reason {delta.delta.stop_reason!r}")
    expect(delta.usage.output_tokens == 8, f"usage {delta.usage}")
    return " ".join(dict.fromkeys(types))


def test_anthropic_count_tokens(ctx: Context) -> str:
    with anthropic_client(ctx) as client:
        counted = client.messages.count_tokens(model=ctx.model, messages=user(QUESTION))
        answer = client.messages.create(model=ctx.model, max_tokens=4, messages=user(QUESTION), extra_body=GREEDY)
    expect(counted.input_tokens == answer.usage.input_tokens,
           f"count_tokens {counted.input_tokens}, usage {answer.usage.input_tokens}")
    return f"{counted.input_tokens} input tokens"


def test_anthropic_errors(ctx: Context) -> str:
    import anthropic

    with anthropic_client(ctx, api_key="wrong-" + secrets.token_hex(8)) as client:
        try:
            client.messages.create(model=ctx.model, max_tokens=4, messages=user("hi"))
            raise AssertionError("a wrong key was accepted")
        except anthropic.AuthenticationError as error:
            expect(error.body["error"]["type"] == "authentication_error", f"body {error.body}")
    with anthropic_client(ctx) as client:
        try:
            client.messages.create(model="no-such-model", max_tokens=4, messages=user("hi"))
            raise AssertionError("an unknown model was accepted")
        except anthropic.NotFoundError as error:
            expect(error.body["error"]["type"] == "not_found_error", f"body {error.body}")
        try:
            client.messages.create(model=ctx.model, max_tokens=4, messages=user("hi"),
                                   extra_body={"temperature": 1.5})
            raise AssertionError("temperature 1.5 was accepted")
        except anthropic.BadRequestError as error:
            expect(error.body["error"]["type"] == "invalid_request_error", f"body {error.body}")
    return "AuthenticationError, NotFoundError, BadRequestError"


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def browser_suite(ctx: Context) -> None:
    r = ctx.results
    r.run("browser.cors_preflight", test_cors_preflight, ctx)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        r.record("browser", "FAIL", "the playwright package is missing: pip install -r tests/clients/requirements.txt")
        return
    chromium = find_chromium()
    if chromium is None:
        r.record("browser", "FAIL", "no Chromium at /usr/bin/chromium (apt-get install -y chromium, or set CHROMIUM)")
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            r.run("browser.fetch", test_browser_hook, ctx, browser, "fetch.html", "runChat")
            r.run("browser.eventsource", test_browser_hook, ctx, browser, "eventsource.html", "runEventSource")
            r.run("browser.chat_page", test_chat_page, ctx, browser)
        finally:
            browser.close()


def test_cors_preflight(ctx: Context) -> str:
    headers = {
        "Origin": ctx.static_origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    status, got, data = http_request(HOST, ctx.port, "OPTIONS", "/v1/chat/completions", None, headers)
    expect(status == 204, f"preflight from the allowed origin: HTTP {status}, want 204: {shorten(data)}")
    allow_origin = got.get("access-control-allow-origin")
    expect(allow_origin in (ctx.static_origin, "*"), f"Access-Control-Allow-Origin {allow_origin!r}")
    allow_headers = got.get("access-control-allow-headers", "").lower()
    expect(
        "*" in allow_headers or ("authorization" in allow_headers and "content-type" in allow_headers),
        f"Access-Control-Allow-Headers {allow_headers!r}",
    )
    status, got, _ = http_request(
        HOST, ctx.port, "OPTIONS", "/v1/chat/completions", None, {**headers, "Origin": f"http://{HOST}:1"}
    )
    expect(
        got.get("access-control-allow-origin") not in (f"http://{HOST}:1", "*"),
        f"a foreign origin was allowed (HTTP {status})",
    )
    return "allowed origin 204, foreign origin refused"


def new_page(browser, **context_options):
    context = browser.new_context(**context_options)
    context.set_default_timeout(IO_TIMEOUT * 1000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: problems.append(f"console.{message.type}: {message.text}")
        if message.type == "error"
        else None,
    )
    return context, page, problems


def with_problems(message: str, problems: list[str]) -> str:
    return message + (f" [browser: {shorten('; '.join(problems), 400)}]" if problems else "")


def check_incremental(deltas: list[dict], where: str) -> str:
    """Deltas ({t, text}, t in ms) must come in several separate arrivals, not in one burst."""
    expect(len(deltas) >= 3, f"{where}: only {len(deltas)} deltas")
    times = [float(d["t"]) for d in deltas]
    distinct = sorted(set(times))
    spread = times[-1] - times[0]
    largest_burst = max(times.count(t) for t in distinct)
    expect(len(distinct) >= 3, f"{where}: {len(deltas)} deltas but only {len(distinct)} distinct arrival times")
    expect(spread > 10, f"{where}: all {len(deltas)} deltas arrived within {spread:.1f} ms")
    expect(
        largest_burst <= max(2, len(deltas) // 2),
        f"{where}: {largest_burst} of {len(deltas)} deltas arrived at the same instant",
    )
    return f"{len(deltas)} deltas, {len(distinct)} arrival times over {spread:.0f} ms"


def test_browser_hook(ctx: Context, browser, page_name: str, hook: str) -> str:
    if not (BROWSER_DIR / page_name).exists():
        raise AssertionError(f"examples/browser/{page_name} does not exist")
    reference = ctx.reference_text(user(QUESTION), MAX_TOKENS)
    context, page, problems = new_page(browser)
    try:
        page.goto(f"{ctx.static_origin}/{page_name}")
        page.wait_for_function(f"typeof window.{hook} === 'function'", timeout=15000)
        options = {"base": ctx.base, "apiKey": ctx.api_key, "maxTokens": MAX_TOKENS, "temperature": 0}
        try:
            result = page.evaluate(
                """async ([hook, question, options, limit]) => {
                    const timer = new Promise((_, reject) =>
                        setTimeout(() => reject(new Error(`no answer after ${limit} ms`)), limit));
                    return await Promise.race([window[hook](question, options), timer]);
                }""",
                [hook, QUESTION, options, IO_TIMEOUT * 1000],
            )
        except Exception as error:  # noqa: BLE001 - the page's error, with the console, is the report
            raise AssertionError(with_problems(f"window.{hook} failed: {first_line(error)}", problems))
        expect(isinstance(result, dict), f"window.{hook} resolved with {shorten(result)}")
        deltas = result.get("deltas") or []
        joined = "".join(d["text"] for d in deltas)
        same_text(result.get("text", ""), reference, f"{hook}().text")
        same_text(joined, reference, f"{hook}().deltas joined")
        expect(result.get("finishReason") == "stop", f"finishReason {result.get('finishReason')!r}")
        return check_incremental(deltas, hook)
    finally:
        context.close()


# What the chat page shows inside an .assistant message besides the answer (its timing line).
CHAT_PAGE_EXTRAS = ".stats"

ASSISTANT_TEXT = """(el, extras) => {
    const copy = el.cloneNode(true);
    copy.querySelectorAll(extras).forEach((node) => node.remove());
    return copy.textContent;
}"""

ASSISTANT_OBSERVER = """(extras) => {
    const answerText = %s;
    window.__assistantText = answerText;
    window.__assistantGrowth = [];
    const record = () => {
        const all = document.querySelectorAll('.assistant');
        if (!all.length) return;
        const last = all[all.length - 1];
        const text = answerText(last, extras);
        const growth = window.__assistantGrowth;
        const previous = growth[growth.length - 1];
        if (!previous || previous.text !== text || previous.n !== all.length)
            growth.push({ t: performance.now(), text, n: all.length });
    };
    new MutationObserver(record).observe(document.documentElement,
        { childList: true, subtree: true, characterData: true, attributes: true });
}""" % ASSISTANT_TEXT

API_KEY_INPUTS = "#api-key, #apiKey, #api_key, #key, input[name=api_key], input[name=apiKey]"


def test_chat_page(ctx: Context, browser) -> str:
    """The chat page at / (same origin as the API). The test forces temperature 0 on whatever
    request the page makes (POST, GET /stream or WebSocket), records it, and compares the answer
    with the non-streaming answer to exactly that request."""
    status, headers, data = http_request(HOST, ctx.port, "GET", "/")
    expect(status == 200 and headers.get("content-type", "").startswith("text/html"),
           f"GET / : HTTP {status}, Content-Type {headers.get('content-type')!r}")

    sent: list[dict] = []

    def on_post(route, request):
        if request.method != "POST":
            return route.continue_()
        body = json.loads(request.post_data or "{}")
        body["temperature"] = 0
        sent.append(body)
        route.continue_(post_data=json.dumps(body))

    def on_stream(route, request):
        url = urllib.parse.urlsplit(request.url)
        query = dict(urllib.parse.parse_qsl(url.query))
        query["temperature"] = "0"
        if "messages" in query:
            messages = json.loads(query["messages"])
        else:
            messages = user(query.get("q", ""))
        body = {"messages": messages}
        if "max_tokens" in query:
            body["max_tokens"] = int(query["max_tokens"])
        sent.append(body)
        route.continue_(url=urllib.parse.urlunsplit(url._replace(query=urllib.parse.urlencode(query))))

    def on_websocket(ws):
        server = ws.connect_to_server()

        def forward(message):
            if isinstance(message, str):
                try:
                    body = json.loads(message)
                    if isinstance(body, dict) and body.get("type", "chat") == "chat":
                        body["temperature"] = 0
                        sent.append(body)
                        message = json.dumps(body)
                except ValueError:
                    pass
            server.send(message)

        ws.on_message(forward)

    context, page, problems = new_page(browser)
    try:
        page.route(re.compile(r".*/v1/chat/completions(\?.*)?$"), on_post)
        page.route(re.compile(r"^[^?]*//[^/]+/stream(\?.*)?$"), on_stream)
        page.route_web_socket(re.compile(r".*/ws/chat.*"), on_websocket)
        page.goto(f"{ctx.base}/")
        page.wait_for_selector("#prompt", timeout=15000)
        # The key goes where a user would type it; a page without a key field gets it as a
        # header on its (same-origin) requests instead.
        key_input = page.locator(API_KEY_INPUTS)
        if key_input.count() and key_input.first.is_editable():
            key_input.first.fill(ctx.api_key)
            key_input.first.dispatch_event("change")
            how_key = f"key typed into {API_KEY_INPUTS.split(',')[0]}"
        else:
            page.set_extra_http_headers(ctx.auth())
            how_key = "no key field: the test added the Authorization header"
        done_before = page.locator(".assistant[data-done='true']").count()
        page.evaluate(ASSISTANT_OBSERVER, CHAT_PAGE_EXTRAS)
        page.fill("#prompt", QUESTION)
        page.click("#send")
        try:
            page.wait_for_function(
                "n => document.querySelectorAll(\".assistant[data-done='true']\").length > n",
                arg=done_before,
                timeout=IO_TIMEOUT * 1000,
            )
        except Exception as error:  # noqa: BLE001
            shown = page.locator(".assistant").all_text_contents()
            raise AssertionError(with_problems(
                f"no finished .assistant message: {first_line(error)}; .assistant texts {shorten(shown, 200)}",
                problems))
        done = page.locator(".assistant[data-done='true']").last
        text = done.evaluate(ASSISTANT_TEXT, CHAT_PAGE_EXTRAS) or ""
        growth = page.evaluate("window.__assistantGrowth")
    finally:
        context.close()

    if sent:
        request = sent[-1]
        extra = {k: request[k] for k in ("top_p", "stop") if k in request}
        max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
        reference = ctx.reference_text(request["messages"], max_tokens, **extra)
    else:
        raise AssertionError("the page made no chat request the test could see "
                             "(POST /v1/chat/completions, GET /stream or /ws/chat)")
    same_text(text, reference, "the .assistant text")
    steps = [g for g in growth if g["n"] == growth[-1]["n"]] if growth else []
    texts = [g["text"] for g in steps if g["text"]]
    expect(len(texts) >= 3, f"the .assistant text changed only {len(texts)} times (not streamed?)")
    for earlier, later in zip(texts, texts[1:]):
        expect(later.startswith(earlier),
               f"the text did not grow by appending: {shorten(repr(earlier), 80)} -> {shorten(repr(later), 80)}")
    expect(texts[-1] == text, "the last observed text is not the final answer")
    spread = steps[-1]["t"] - steps[0]["t"]
    return f"grew in {len(texts)} steps over {spread:.0f} ms; {how_key}"


# ---------------------------------------------------------------------------------------------
# Suite 3: nginx in front of the server


def find_nginx() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


class Nginx:
    """nginx with deploy/nginx/llm-stream.conf in front of the test server, or with `snippet`,
    a configuration whose upstreams are already the test's."""

    def __init__(self, exe: str, ctx: Context, snippet: str | None = None, name: str = "nginx") -> None:
        self.exe = exe
        self.ctx = ctx
        self.port = free_port()
        self.dir = ctx.workdir / name
        self.snippet = snippet
        self.process: subprocess.Popen | None = None

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)  # nginx workers may run as another user when started as root
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / name).mkdir(exist_ok=True)
            os.chmod(self.dir / name, 0o777)
        if self.snippet is None:
            snippet = NGINX_SNIPPET.read_text()
            expect("127.0.0.1:8000" in snippet, "the snippet does not contain 127.0.0.1:8000")
            snippet = snippet.replace("127.0.0.1:8000", f"{HOST}:{self.ctx.port}")
        else:
            snippet = self.snippet
        expect(re.search(r"listen\s+8080\b", snippet) is not None, "the snippet does not contain `listen 8080`")
        snippet = re.sub(r"(?m)^\s*listen\s+\[::\]:8080\b[^;]*;", "", snippet)  # no IPv6 here
        snippet = re.sub(r"listen\s+8080\b", f"listen {HOST}:{self.port}", snippet)
        (self.dir / "llm-stream.conf").write_text(snippet)
        d = self.dir
        main = f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/llm-stream.conf;
}}
"""
        conf = d / "nginx.conf"
        conf.write_text(main)
        return conf

    def command(self, conf: Path, *extra: str) -> list[str]:
        return [self.exe, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log"), *extra]

    def start(self) -> str:
        conf = self.write_config()
        check = subprocess.run(self.command(conf, "-t"), capture_output=True, text=True, timeout=30)
        expect(check.returncode == 0, f"nginx -t failed: {shorten(check.stderr.strip(), 800)}")
        self.process = subprocess.Popen(
            self.command(conf), stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "w")
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited with {self.process.returncode}: {self.log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return f"listening on {self.port}"
            except OSError:
                time.sleep(0.1)
        raise AssertionError("nginx did not start listening within 15 s")

    def log_tail(self) -> str:
        lines = []
        for name in ("stderr.log", "error.log"):
            path = self.dir / name
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()[-5:]
        return shorten(" | ".join(lines), 800)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def nginx_suite(ctx: Context) -> None:
    r = ctx.results
    exe = find_nginx()
    if exe is None:
        r.record("nginx", "SKIP", "nginx is not installed (apt-get install -y nginx)")
        return
    if not NGINX_SNIPPET.exists():
        r.record("nginx", "FAIL", "deploy/nginx/llm-stream.conf does not exist")
        return
    proxy = Nginx(exe, ctx)
    try:
        if not r.run("nginx.start", proxy.start):
            return
        r.run("nginx.health", test_nginx_health, ctx, proxy)
        r.run("nginx.sse_unbatched", test_nginx_unbatched, ctx, proxy)
        r.run("nginx.resume", test_nginx_resume, ctx, proxy)
        r.run("nginx.websocket_two_turns", test_nginx_websocket, ctx, proxy)
    finally:
        proxy.stop()


def test_nginx_health(ctx: Context, proxy: Nginx) -> str:
    status, _, data = http_request(HOST, proxy.port, "GET", "/health")
    expect(status == 200, f"GET /health through nginx: HTTP {status}: {shorten(data)}")
    return "200"


def test_nginx_unbatched(ctx: Context, proxy: Nginx) -> str:
    reference = ctx.reference_text(user(QUESTION), MAX_TOKENS)
    body = ctx.body(user(QUESTION), MAX_TOKENS, stream=True)
    direct = raw_stream(ctx.port, "POST", "/v1/chat/completions", ctx.auth(), body)
    check_sse_headers(direct, "direct")
    # Through nginx the request asks for gzip, as a browser does: compressing an event stream
    # holds tokens back, so it must not happen.
    via = raw_stream(proxy.port, "POST", "/v1/chat/completions", ctx.auth(), body, accept_gzip=True)
    check_sse_headers(via, "through nginx")
    same_text(direct.text, reference, "the direct streamed text")
    same_text(via.text, reference, "the streamed text through nginx")
    expect(via.events[-1].get("data") == "[DONE]", "the stream through nginx does not end with [DONE]")

    tokens = direct.token_events
    direct_times, via_times = direct.token_arrivals(), via.token_arrivals()
    expect(len(direct_times) >= 0.8 * tokens,
           f"the direct stream is already batched: {len(direct_times)} reads for {tokens} tokens")
    expect(len(via_times) >= 0.8 * tokens,
           f"nginx batches the stream: {len(via_times)} reads carried {tokens} tokens "
           f"(direct: {len(direct_times)} reads)")

    def gaps(times: list[float]) -> list[float]:
        return [(b - a) * 1000 for a, b in zip(times, times[1:])]

    direct_median = statistics.median(gaps(direct_times))
    via_median = statistics.median(gaps(via_times))
    direct_span = (direct_times[-1] - direct_times[0]) * 1000
    via_span = (via_times[-1] - via_times[0]) * 1000
    expect(via_median >= 0.25 * direct_median,
           f"median gap between reads through nginx {via_median:.2f} ms vs {direct_median:.2f} ms direct")
    expect(via_span >= 0.5 * direct_span,
           f"tokens through nginx arrived within {via_span:.0f} ms vs {direct_span:.0f} ms direct")
    return (f"{tokens} tokens: {len(via_times)} reads through nginx / {len(direct_times)} direct, "
            f"median gap {via_median:.1f} / {direct_median:.1f} ms, span {via_span:.0f} / {direct_span:.0f} ms")


def test_nginx_resume(ctx: Context, proxy: Nginx) -> str:
    """A resumable stream through nginx, dropped and resumed through nginx."""
    body = ctx.body(user(QUESTION), MAX_TOKENS, stream=True, resumable=True)
    before = raw_stream(proxy.port, "POST", "/v1/chat/completions", ctx.auth(), body, stop_after_events=5)
    check_sse_headers(before, "through nginx")
    events = before.events[:5]
    expect(events and events[0].get("id"), "no `id:` lines (is resumable implemented?)")
    response_id = events[0]["id"].rpartition(":")[0]
    after = raw_stream(proxy.port, "GET", f"/v1/chat/completions/{response_id}/stream",
                       {**ctx.auth(), "Last-Event-ID": events[-1]["id"]})
    check_sse_headers(after, "resume through nginx")
    return check_resumed(ctx, events, after.events, response_id, "through nginx")


async def ws_turn(ws, messages: list[dict], max_tokens: int, timeout: float = IO_TIMEOUT) -> tuple[str, int, dict]:
    """Sends one chat turn and reads tokens until done; returns (text, tokens, done message)."""
    await ws.send(json.dumps({"type": "chat", "messages": messages, "max_tokens": max_tokens, "temperature": 0}))
    parts: list[str] = []
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        kind = message.get("type")
        if kind == "token":
            expect(isinstance(message.get("content"), str), f"a token message without content: {message}")
            parts.append(message["content"])
        elif kind == "done":
            return "".join(parts), len(parts), message
        elif kind == "error":
            raise AssertionError(f"the server answered with an error: {shorten(message)}")
        else:
            raise AssertionError(f"unexpected message: {shorten(message)}")


async def two_turns(ctx: Context, url: str, headers: dict[str, str] | None = None) -> str:
    from websockets.asyncio.client import connect

    first_ref = ctx.reference(user(TURN1), TURN_MAX_TOKENS)
    first_want = first_ref["choices"][0]["message"]["content"]
    async with connect(url, additional_headers=headers, open_timeout=IO_TIMEOUT) as ws:
        text1, tokens1, done1 = await ws_turn(ws, user(TURN1), TURN_MAX_TOKENS)
        same_text(text1, first_want, "turn 1")
        expect(tokens1 >= 3, f"turn 1 came in {tokens1} token messages")
        expect(done1.get("finish_reason") == first_ref["choices"][0]["finish_reason"],
               f"turn 1 done: {done1}")
        usage = done1.get("usage") or {}
        expect(usage.get("completion_tokens") == first_ref["usage"]["completion_tokens"],
               f"turn 1 usage {usage} vs {first_ref['usage']}")
        history = user(TURN1) + [{"role": "assistant", "content": text1}] + user(TURN2)
        text2, tokens2, done2 = await ws_turn(ws, history, TURN_MAX_TOKENS)
        same_text(text2, ctx.reference_text(history, TURN_MAX_TOKENS), "turn 2")
        expect(tokens2 >= 1 and done2.get("finish_reason") in ("stop", "length"), f"turn 2 done: {done2}")
    return f"turns of {tokens1} and {tokens2} tokens"


def test_nginx_websocket(ctx: Context, proxy: Nginx) -> str:
    query = urllib.parse.urlencode({"api_key": ctx.api_key})
    return asyncio.run(two_turns(ctx, f"ws://{HOST}:{proxy.port}/ws/chat?{query}"))


# ---------------------------------------------------------------------------------------------
# Suite: two replicas sharing their rate limits through a real redis-server, behind nginx with
# the configuration of docs/deployment.md


def find_redis() -> str | None:
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


class Redis:
    """A redis-server of the test's own, on loopback, keeping nothing on disk."""

    def __init__(self, exe: str, ctx: Context) -> None:
        self.exe = exe
        self.port = free_port()
        self.dir = ctx.workdir / "redis"
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no"],
            stdout=open(self.dir / "redis.log", "a"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            expect(self.process.poll() is None, f"redis-server exited with {self.process.returncode}")
            if self.ping():
                return f"redis-server on {self.port}"
            time.sleep(0.1)
        raise AssertionError("redis-server did not answer PING within 15 s")

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Replica:
    """One llm-server of the replica set."""

    def __init__(self, binary: str, ctx: Context, name: str, extra: list[str]) -> None:
        self.port = free_port()
        self.name = name
        self.log_path = ctx.workdir / f"replica-{name}.log"
        self.args = [binary, "--host", HOST, "--port", str(self.port),
                     "--shutdown-grace-secs", str(SHUTDOWN_GRACE_SECS), *extra]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)

    def health(self) -> tuple[int, dict]:
        status, _, data = http_request(HOST, self.port, "GET", "/health", timeout=5)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, {}

    def wait_healthy(self) -> str:
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECS
        while time.monotonic() < deadline:
            expect(self.process.poll() is None,
                   f"replica {self.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if self.health()[0] == 200:
                    return f"{self.name} on {self.port}"
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"replica {self.name}: /health not 200: {self.log_tail()}")

    def log_text(self) -> str:
        try:
            return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def log_tail(self, lines: int = 6) -> str:
        return shorten(" | ".join(self.log_text().splitlines()[-lines:]), 800)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(SHUTDOWN_GRACE_SECS + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def replicas_nginx_config(ports: list[int]) -> str:
    """The documented configuration for several replicas, pointed at the test's replicas."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    match = re.search(r"### The configuration\s+```nginx\n(.*?)```", text, re.S)
    expect(match is not None, "docs/deployment.md has no nginx block under `### The configuration`")
    config = match.group(1)
    servers = re.findall(r"(?m)^\s*server 10\.0\.0\.1[1-9]:8000[^;]*;\n", config)
    expect(len(servers) >= 2, "the documented configuration lists no replicas")
    # Every `server` line of the documented replicas becomes one line per test replica.
    config = re.sub(r"(?m)^\s*server 10\.0\.0\.1[2-9]:8000[^;]*;\n", "", config)
    config = re.sub(
        r"(?m)^(\s*)server 10\.0\.0\.11:8000([^;]*);\n",
        lambda m: "".join(f"{m.group(1)}server {HOST}:{port}{m.group(2)};\n" for port in ports),
        config,
    )
    return config


class ReplicaSet:
    def __init__(self, binary: str, ctx: Context, redis_exe: str, nginx_exe: str) -> None:
        self.ctx = ctx
        self.redis = Redis(redis_exe, ctx)
        self.keys_path = ctx.workdir / "keys.toml"
        self.keys = {name: "sk-" + name + "-" + secrets.token_hex(8) for name in ("tenant", "steady", "fresh")}
        self.write_keys(["tenant", "steady"])
        self.binary = binary
        self.replicas: list[Replica] = []
        self.nginx_exe = nginx_exe
        self.proxy: Nginx | None = None

    def write_keys(self, names: list[str], extra: str = "") -> None:
        limits = {"tenant": 3, "steady": 1000, "fresh": 1000}
        text = "".join(
            f'[[keys]]\nname = "{name}"\nkey = "{self.keys[name]}"\nrequests_per_minute = {limits[name]}\n\n'
            for name in names
        )
        self.keys_path.write_text(text + extra)

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def start(self) -> str:
        self.redis.start()
        shared = ["--state-url", f"redis://{HOST}:{self.redis.port}", "--api-keys-file", str(self.keys_path)]
        # Replica a fails open (the default), b fails closed: both policies meet a dead Redis.
        self.replicas = [Replica(self.binary, self.ctx, "a", shared),
                         Replica(self.binary, self.ctx, "b", shared + ["--state-failure", "closed"])]
        for replica in self.replicas:
            replica.start()
        started = [replica.wait_healthy() for replica in self.replicas]
        self.proxy = Nginx(self.nginx_exe, self.ctx, snippet=replicas_nginx_config([r.port for r in self.replicas]),
                           name="nginx-replicas")
        started.append(f"nginx on {self.proxy.start().split()[-1]}")
        return ", ".join(started)

    def stop(self) -> None:
        if self.proxy:
            self.proxy.stop()
        for replica in self.replicas:
            replica.stop()
        self.redis.kill()


def replicas_suite(ctx: Context, binary: str) -> None:
    r = ctx.results
    redis_exe, nginx_exe = find_redis(), find_nginx()
    if redis_exe is None or nginx_exe is None:
        r.record("replicas", "SKIP", "redis-server or nginx is not installed (apt-get install -y redis-server nginx)")
        return
    replicas = ReplicaSet(binary, ctx, redis_exe, nginx_exe)
    try:
        if not r.run("replicas.start", replicas.start):
            return
        r.run("replicas.shared_rate_limit", test_replicas_shared_limit, ctx, replicas)
        r.run("replicas.resume_through_nginx", test_replicas_resume, ctx, replicas)
        r.run("replicas.sighup_reload_with_a_stream_running", test_replicas_reload, ctx, replicas)
        r.run("replicas.redis_killed_and_back", test_replicas_redis_down, ctx, replicas)
    finally:
        replicas.stop()


def one_token(ctx: Context, port: int, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    body = ctx.body(user("Say hi."), 1)
    return http_request(HOST, port, "POST", "/v1/chat/completions", body, headers)


def test_replicas_shared_limit(ctx: Context, rs: ReplicaSet) -> str:
    """3 requests a minute for one key, spent on both replicas: the 4th is refused on either."""
    a, b = rs.replicas
    remaining = []
    for replica in (a, b, a):
        status, headers, data = one_token(ctx, replica.port, rs.auth("tenant"))
        expect(status == 200, f"replica {replica.name}: HTTP {status}: {shorten(data)}")
        expect(headers.get("x-ratelimit-limit-requests") == "3", f"limit header {headers.get('x-ratelimit-limit-requests')}")
        remaining.append(headers.get("x-ratelimit-remaining-requests"))
    expect(remaining == ["2", "1", "0"], f"x-ratelimit-remaining-requests across replicas: {remaining}")
    for where, port in (("b", b.port), ("a", a.port), ("nginx", rs.proxy.port)):
        status, headers, data = one_token(ctx, port, rs.auth("tenant"))
        expect(status == 429, f"the 4th request on {where}: HTTP {status}: {shorten(data)}")
        expect(error_code(data)[0] == "rate_limit_exceeded", f"on {where}: {shorten(data)}")
        retry = int(headers.get("retry-after", "0"))
        expect(1 <= retry <= 20, f"Retry-After {retry} on {where}")
        expect(headers.get("x-ratelimit-remaining-requests") == "0", f"remaining on {where}: {headers}")
    # Another key has its own budget.
    status, _, data = one_token(ctx, b.port, rs.auth("steady"))
    expect(status == 200, f"another key: HTTP {status}: {shorten(data)}")
    metrics = http_request(HOST, b.port, "GET", "/metrics")[2].decode()
    expect('client="tenant"' in metrics, "no refusal counted for the key `tenant` in /metrics")
    return f"remaining {remaining}, then 429 on b, a and through nginx"


def test_replicas_resume(ctx: Context, rs: ReplicaSet) -> str:
    """A resumable stream started through nginx and dropped: resumed at once on both replicas
    (one follows the live generation of the other through Redis), then through nginx; every
    resume continues the stream with no gap and no duplicate."""
    headers = rs.auth("steady")
    body = ctx.body(user(QUESTION), MAX_TOKENS, stream=True, resumable=True)
    before = raw_stream(rs.proxy.port, "POST", "/v1/chat/completions", headers, body, stop_after_events=5)
    check_sse_headers(before, "through nginx")
    events = before.events[:5]
    response_id = events[0]["id"].rpartition(":")[0]
    path = f"/v1/chat/completions/{response_id}/stream"
    resume_headers = {**headers, "Last-Event-ID": events[-1]["id"]}
    results: dict[str, object] = {}

    def resume_on(replica: Replica) -> None:
        try:
            results[replica.name] = raw_stream(replica.port, "GET", path, resume_headers)
        except Exception as error:  # noqa: BLE001 - reported below
            results[replica.name] = error

    threads = [threading.Thread(target=resume_on, args=(replica,)) for replica in rs.replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(IO_TIMEOUT)
    details = []
    for replica in rs.replicas:
        after = results.get(replica.name)
        expect(isinstance(after, RawStream), f"the resume on {replica.name} failed: {after}")
        check_sse_headers(after, f"resume on {replica.name}")
        details.append(check_resumed(ctx, events, after.events, response_id, f"resumed on {replica.name}"))
    def source(replica: Replica) -> str:
        lines = [line for line in replica.log_text().splitlines() if response_id in line and "resume from" in line]
        return "shared" if any("shared store" in line for line in lines) else "local" if lines else "none"

    sources = {replica.name: source(replica) for replica in rs.replicas}
    expect(sorted(sources.values()) == ["local", "shared"],
           f"one replica should resume from its own log and the other from Redis: {sources}")
    via = raw_stream(rs.proxy.port, "GET", path, resume_headers)
    check_sse_headers(via, "resume through nginx")
    check_resumed(ctx, events, via.events, response_id, "resumed through nginx")
    owner = next(name for name, source in sources.items() if source == "local")
    return f"owner {owner}; {details[0]}; the other replica followed through Redis; nginx resume too"


def test_replicas_reload(ctx: Context, rs: ReplicaSet) -> str:
    """SIGHUP with a stream running: the new file takes effect at once, the stream goes on."""
    a = rs.replicas[0]
    reference = ctx.reference_text(user(QUESTION), MAX_TOKENS)
    body = ctx.body(user(QUESTION), MAX_TOKENS, stream=True)
    result: dict = {}

    def stream() -> None:
        try:
            result["stream"] = raw_stream(a.port, "POST", "/v1/chat/completions", rs.auth("steady"), body)
        except Exception as error:  # noqa: BLE001 - reported below
            result["error"] = error

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(0.3)
    # `steady` leaves the file and `fresh` comes in, while `steady`'s stream runs.
    rs.write_keys(["tenant", "fresh"])
    a.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if http_request(HOST, a.port, "GET", "/v1/models", headers=rs.auth("fresh"))[0] == 200:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the new key is not accepted 10 s after SIGHUP: {a.log_tail()}")
    running = reader.is_alive()
    status = http_request(HOST, a.port, "GET", "/v1/models", headers=rs.auth("steady"))[0]
    expect(status == 401, f"a key removed from the file still answers {status}")
    reader.join(IO_TIMEOUT)
    expect("error" not in result, f"the running stream failed: {result.get('error')}")
    streamed = result["stream"]
    check_sse_headers(streamed, "the stream running across the reload")
    same_text(streamed.text, reference, "the stream running across the reload")
    expect(streamed.events[-1].get("data") == "[DONE]", "the running stream does not end with [DONE]")
    # A file that does not read leaves the keys in force, and the log says why.
    rs.keys_path.write_text("[[keys]]\nname = \"broken\"\n")
    a.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "API keys not reloaded" not in a.log_text():
        expect(time.monotonic() < deadline, f"no log line for the bad file: {a.log_tail()}")
        time.sleep(0.05)
    status = http_request(HOST, a.port, "GET", "/v1/models", headers=rs.auth("fresh"))[0]
    expect(status == 200, f"after a bad file the key in force answers {status}")
    rs.write_keys(["tenant", "fresh"])
    return f"reloaded {'with the stream still running' if running else 'as the stream ended'}; the bad file was refused"


def test_replicas_redis_down(ctx: Context, rs: ReplicaSet) -> str:
    """Redis killed: a (fail open) serves, b (fail closed) refuses with 503, neither hangs, both
    say so in /health; Redis back: both recover by themselves."""
    a, b = rs.replicas
    # b never reloaded: it still holds `steady`; a holds `fresh`.
    rs.redis.kill()
    started = time.monotonic()
    status, _, data = one_token(ctx, a.port, rs.auth("fresh"))
    open_secs = time.monotonic() - started
    expect(status == 200, f"fail open with Redis down: HTTP {status}: {shorten(data)}")
    started = time.monotonic()
    status, headers, data = one_token(ctx, b.port, rs.auth("steady"))
    closed_secs = time.monotonic() - started
    expect(status == 503 and error_code(data)[0] == "state_unavailable",
           f"fail closed with Redis down: HTTP {status}: {shorten(data)}")
    expect(headers.get("retry-after") is not None, "the 503 has no Retry-After")
    expect(max(open_secs, closed_secs) < 5, f"requests took {open_secs:.1f} s and {closed_secs:.1f} s with Redis down")
    health_a, health_b = a.health(), b.health()
    expect(health_a[0] == 200 and health_a[1].get("status") == "degraded", f"a's /health: {health_a}")
    expect(health_b[0] == 503 and health_b[1].get("shared_state") == "unreachable", f"b's /health: {health_b}")
    rs.redis.start()
    deadline = time.monotonic() + 30
    while True:
        status, _, _ = one_token(ctx, b.port, rs.auth("steady"))
        if status == 200 and a.health()[1].get("status") == "ok" and b.health()[1].get("status") == "ok":
            break
        expect(time.monotonic() < deadline, f"not recovered 30 s after Redis came back: HTTP {status}: {b.log_tail()}")
        time.sleep(0.2)
    return (f"down: a served in {open_secs * 1000:.0f} ms, b refused in {closed_secs * 1000:.0f} ms; "
            f"recovered {time.monotonic() - deadline + 30:.1f} s after Redis came back")


# ---------------------------------------------------------------------------------------------
# Suite 4: WebSocket, direct


def ws_suite(ctx: Context) -> None:
    r = ctx.results
    try:
        import websockets  # noqa: F401
    except ImportError:
        r.record("ws", "FAIL", "the websockets package is missing: pip install -r tests/clients/requirements.txt")
        return
    r.run("ws.requires_api_key", lambda: asyncio.run(ws_requires_key(ctx)))
    r.run("ws.multi_turn", lambda: asyncio.run(two_turns(ctx, f"ws://{HOST}:{ctx.port}/ws/chat", ctx.auth())))
    r.run("ws.bad_messages_keep_socket", lambda: asyncio.run(ws_bad_messages(ctx)))
    r.run("ws.busy_while_running", lambda: asyncio.run(ws_busy(ctx)))
    r.run("ws.cancel", lambda: asyncio.run(ws_cancel(ctx)))
    r.run("ws.ping", lambda: asyncio.run(ws_ping(ctx)))


def ws_connect(ctx: Context, url: str | None = None, headers: dict | None = None):
    from websockets.asyncio.client import connect

    return connect(url or f"ws://{HOST}:{ctx.port}/ws/chat",
                   additional_headers=ctx.auth() if headers is None else headers,
                   open_timeout=IO_TIMEOUT)


async def ws_recv(ws, timeout: float = IO_TIMEOUT) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def ws_requires_key(ctx: Context) -> str:
    from websockets.exceptions import InvalidStatus

    try:
        async with ws_connect(ctx, headers={}):
            pass
    except InvalidStatus as error:
        status = error.response.status_code
        expect(status == 401, f"handshake without a key: HTTP {status}, want 401")
    else:
        raise AssertionError("a WebSocket without an API key was accepted")
    query = urllib.parse.urlencode({"api_key": ctx.api_key})
    async with ws_connect(ctx, url=f"ws://{HOST}:{ctx.port}/ws/chat?{query}", headers={}) as ws:
        text, _, _ = await ws_turn(ws, user(TURN1), TURN_MAX_TOKENS)
        same_text(text, ctx.reference_text(user(TURN1), TURN_MAX_TOKENS), "answer with ?api_key=")
    return "401 without a key; ?api_key= works"


async def ws_bad_messages(ctx: Context) -> str:
    bad = [
        ("not JSON", "this is not json", None),
        ("unknown type", json.dumps({"type": "nonsense"}), None),
        ("max_tokens -1", json.dumps({"type": "chat", "messages": user("hi"), "max_tokens": -1}), "max_tokens"),
    ]
    async with ws_connect(ctx) as ws:
        for what, message, param in bad:
            await ws.send(message)
            answer = await ws_recv(ws, 15)
            expect(answer.get("type") == "error" and isinstance(answer.get("error"), dict),
                   f"{what}: got {shorten(answer)}, want an error message")
            if param:
                expect(answer["error"].get("param") == param,
                       f"{what}: param {answer['error'].get('param')!r}, want {param!r}")
        text, _, _ = await ws_turn(ws, user(TURN1), TURN_MAX_TOKENS)
        same_text(text, ctx.reference_text(user(TURN1), TURN_MAX_TOKENS), "the answer after the errors")
    return f"{len(bad)} errors, then a normal turn"


async def ws_busy(ctx: Context) -> str:
    async with ws_connect(ctx) as ws:
        chat = {"type": "chat", "messages": user(QUESTION), "max_tokens": MAX_TOKENS, "temperature": 0}
        await ws.send(json.dumps(chat))
        await ws.send(json.dumps(chat))
        parts, errors = [], []
        while True:
            message = await ws_recv(ws)
            if message.get("type") == "token":
                parts.append(message["content"])
            elif message.get("type") == "error":
                errors.append(message)
            elif message.get("type") == "done":
                break
        expect(len(errors) == 1, f"{len(errors)} errors for a chat sent while one was running, want 1")
        same_text("".join(parts), ctx.reference_text(user(QUESTION), MAX_TOKENS), "the first turn")
    return f"error code {errors[0]['error'].get('code')!r}; the first turn finished"


async def ws_cancel(ctx: Context) -> str:
    async with ws_connect(ctx) as ws:
        await ws.send(json.dumps({"type": "chat", "messages": user(LONG_PROMPT),
                                  "max_tokens": LONG_MAX_TOKENS, "temperature": 0}))
        tokens = 0
        while tokens < 3:
            message = await ws_recv(ws)
            expect(message.get("type") == "token", f"before the cancel: {shorten(message)}")
            tokens += 1
        cancelled_at = time.monotonic()
        await ws.send(json.dumps({"type": "cancel"}))
        late = 0
        while True:
            message = await ws_recv(ws, 15)
            if message.get("type") == "token":
                late += 1
                continue
            expect(message.get("type") == "done", f"after the cancel: {shorten(message)}")
            expect(message.get("finish_reason") == "cancelled",
                   f"finish_reason {message.get('finish_reason')!r}, want cancelled")
            break
        delay = (time.monotonic() - cancelled_at) * 1000
        expect(late < LONG_MAX_TOKENS - 10, f"{late} tokens after the cancel: the cancel did nothing")
        text, _, _ = await ws_turn(ws, user(TURN1), TURN_MAX_TOKENS)
        same_text(text, ctx.reference_text(user(TURN1), TURN_MAX_TOKENS), "the turn after the cancel")
    return f"done(cancelled) {delay:.0f} ms after the cancel, {late} tokens in flight; socket reusable"


async def ws_ping(ctx: Context) -> str:
    async with ws_connect(ctx) as ws:
        started = time.monotonic()
        pong = await ws.ping()
        await asyncio.wait_for(pong, 10)
        return f"pong after {(time.monotonic() - started) * 1000:.1f} ms"


# ---------------------------------------------------------------------------------------------
# The server and the static file server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):  # noqa: N802 - the base class's name
        if self.path == "/favicon.ico":  # keeps a 404 out of the browser console
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


def start_static_server(port: int) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietHandler, directory=str(BROWSER_DIR))
    httpd = http.server.ThreadingHTTPServer((HOST, port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="static", daemon=True).start()
    return httpd


class Server:
    def __init__(self, binary: str, ctx: Context) -> None:
        self.binary = binary
        self.ctx = ctx
        self.log_path = ctx.workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def supported_flags(self) -> set[str]:
        try:
            help_text = subprocess.run([self.binary, "--help"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            return set()
        return set(re.findall(r"--[a-z][a-z0-9-]*", help_text))

    def start(self) -> None:
        ctx = self.ctx
        flags = self.supported_flags()
        args = [self.binary, "--host", HOST, "--port", str(ctx.port),
                "--shutdown-grace-secs", str(SHUTDOWN_GRACE_SECS)]
        wanted = {"--api-key": ctx.api_key, "--cors-origin": ctx.static_origin}
        missing = [flag for flag in wanted if flags and flag not in flags]
        for flag, value in wanted.items():
            if flag not in missing:
                args += [flag, value]
        if missing:
            # Report it, and still run the rest against a server without those flags.
            ctx.results.record("server.flags", "FAIL",
                               f"the binary has no {', '.join(missing)}; started without them")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self) -> str:
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                status, _, _ = http_request(HOST, self.ctx.port, "GET", "/health", timeout=2)
                if status == 200:
                    return f"healthy on port {self.ctx.port}"
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"/health not 200 within {HEALTH_TIMEOUT_SECS} s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        return " | ".join(text.splitlines()[-lines:])

    def stop(self) -> str:
        """SIGTERM; the server must exit with status 0 within the shutdown grace."""
        if self.process is None:
            return "not started"
        if self.process.poll() is not None:
            raise AssertionError(f"the server had already exited with {self.process.returncode}")
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(SHUTDOWN_GRACE_SECS + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running {SHUTDOWN_GRACE_SECS + 5} s after SIGTERM; killed")
        finally:
            self.log.close()
        elapsed = time.monotonic() - started
        expect(code == 0, f"exit status {code} after SIGTERM: {self.log_tail(4)}")
        return f"exit 0 after {elapsed:.2f} s"


def fetch_model_name(ctx: Context) -> str:
    status, _, data = http_request(HOST, ctx.port, "GET", "/v1/models", headers=ctx.auth())
    expect(status == 200, f"GET /v1/models: HTTP {status}: {shorten(data)}")
    models = json.loads(data)["data"]
    expect(len(models) == 1, f"{len(models)} models listed")
    ctx.model = models[0]["id"]
    return ctx.model


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-bin", required=True, help="the llm-server binary to test")
    parser.add_argument("--only", default=",".join(SUITES),
                        help=f"comma-separated suites to run (default: all of {','.join(SUITES)})")
    parser.add_argument("--keep-logs", action="store_true", help="keep the log folder even if all pass")
    options = parser.parse_args()
    suites = [s.strip() for s in options.only.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    binary = os.path.abspath(options.server_bin)
    if not os.access(binary, os.X_OK):
        parser.error(f"{binary} is not an executable")

    workdir = Path(tempfile.mkdtemp(prefix="llm-stream-clients-"))
    ctx = Context(free_port(), free_port(), "sk-test-" + secrets.token_hex(16), workdir)
    r = ctx.results
    print(f"server {binary} on {ctx.base}; static files {ctx.static_origin}; logs in {workdir}", flush=True)

    static = start_static_server(ctx.static_port)
    server = Server(binary, ctx)
    try:
        server.start()
        if r.run("server.start", server.wait_healthy) and r.run("server.models", fetch_model_name, ctx):
            runners = {
                "openai": openai_suite,
                "dialects": dialects_suite,
                "browser": browser_suite,
                "nginx": nginx_suite,
                "ws": ws_suite,
                "examples": lambda ctx: examples_suite(ctx, Path(options.server_bin).resolve().parent),
                "replicas": lambda ctx: replicas_suite(ctx, binary),
            }
            for suite in suites:
                print(f"--- {suite}", flush=True)
                try:
                    runners[suite](ctx)
                except Exception as error:  # noqa: BLE001 - a broken suite must not skip the others
                    r.record(suite, "FAIL", f"the suite crashed: {type(error).__name__}: {shorten(error, 400)}")
                    traceback.print_exc()
    finally:
        r.run("server.sigterm_exit_0", server.stop)
        static.shutdown()

    passed = sum(1 for row in r.rows if row[1] == "PASS")
    skipped = sum(1 for row in r.rows if row[1] == "SKIP")
    print(f"\n{passed} passed, {len(r.failed)} failed, {skipped} skipped", flush=True)
    if r.failed:
        for name, _, detail in r.failed:
            print(f"  FAIL {name}: {shorten(detail, 200)}")
        print(f"server log: {server.log_path}\nlast lines: {server.log_tail(15)}")
        return 1
    if not options.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
