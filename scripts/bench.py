#!/usr/bin/env python
"""Side-by-side benchmark: the server (gunicorn, one gevent worker) against the fake Perplexity called directly.

    python scripts/bench.py            # about 2-4 minutes
    python scripts/bench.py --quick    # under a minute, smaller counts
    python scripts/bench.py --json out.json
    python scripts/bench.py --phases agent    # tool-call vs text answers only (not part of the default run)
    python scripts/bench.py --phases messages # Anthropic Messages vs chat streams only (not in the default run)
    python scripts/bench.py --plot     # the default phases + concurrency, then PNGs into docs/bench/ (bench_plot.py)

Everything runs on 127.0.0.1: the fake upstream in its own process, gunicorn (`app:app`, one gevent worker) pointed
at it, and the measuring client in this process. Five figures, each beside the issue's target and the seed's value:
non-streamed latency, time to first token, worker CPU per streamed chunk with 4 KB upstream frames, open streams
per worker with their memory, and how fast the upstream is released after a client leaves. The first three also
run through the "stack floor" (bench_floor.py: a minimal Flask + requests pass-through under the same gunicorn
settings; --no-floor skips it), so the report can tell the stack's cost from our code's. An opt-in sixth phase
(--phases agent) measures what answering with a tool call adds over a text answer of the same upstream stream, an
opt-in seventh (--phases messages) what POST /v1/messages adds over chat completions in latency and in worker CPU
per streamed chunk, an eighth (--phases concurrency, and with --plot) latency and throughput against concurrent
clients, for the fake called directly, the server and the floor.
See scripts/README.md.
Speeds are noisy on a small shared machine: read the ratios and the side-by-side differences, not the absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import orjson  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from bench_herd import Herd  # noqa: E402
from bench_plot import plot  # noqa: E402
from bench_procs import HOST, ChildProcess, FakeProcess, Gunicorn, cpu_seconds, raise_nofile, require_loopback  # noqa: E402
from bench_replay import offline_breakdown  # noqa: E402
from bench_report import TARGET, details, machine, table  # noqa: E402
from bench_upstream import HoldProcess  # noqa: E402

from perplexity.payload import build_ask_payload  # noqa: E402
from perplexity.testing import Reply  # noqa: E402
from perplexity.types import AskOptions  # noqa: E402

TOKEN = "bench-session-token"  # the fake's session cookie: never a real one
API_KEY = "bench-api-key"
QUERY = "What does the benchmark measure?"
SHORT_ANSWER = "short answer [1]."
ANSWER_MARK = b"short answer"
ASK_PATH = "/rest/sse/perplexity_ask?version=2.18&source=default"
COOKIE = "__Secure-next-auth.session-token"

DEFAULT_PHASES = ("latency", "ttft", "cpu", "streams", "release")
# Opt-in phases, run only when named (--phases agent,messages): `agent` (tool-call vs text answers) and `messages`
# (Anthropic Messages streams vs chat streams).
# `concurrency` (latency and throughput as concurrent clients grow) runs when named, and with --plot.
PHASES = (*DEFAULT_PHASES, "agent", "messages", "concurrency")
PLOT_PHASES = (*DEFAULT_PHASES, "concurrency")  # what --plot runs unless --phases says otherwise
# The phases that also measure the stack floor (bench_floor.py).
FLOOR_PHASES = ("latency", "ttft", "cpu", "concurrency")
PLOT_DIR = ROOT / "docs" / "bench"
FLOOR_APP = "bench_floor:app"
STAGGER = 10  # release phase: batches the streams are opened in, across one heartbeat interval


@dataclass
class Plan:
    """Counts and time caps of one run."""

    requests: int = 400
    warmup: int = 50
    ttft: int = 300
    cpu_frames: int = 2000
    cpu_streams: int = 3
    frame_bytes: int = 4096
    streams: int = 5000
    ramp: int = 250
    open_seconds: float = 90.0
    release: int = 200
    heartbeat: float = 1.0
    budget: float = 230.0
    phase_seconds: float = 35.0
    agent_rounds: int = 1000  # agent phase: interleaved rounds of the four request kinds (latency)
    agent_cpu_rounds: int = 30  # agent phase: rounds of one CPU block per kind
    agent_block: int = 10  # agent phase: requests per CPU block
    messages_rounds: int = 1000  # messages phase: interleaved rounds of its four request kinds (latency)
    messages_cpu_rounds: int = 8  # messages phase: rounds of one chat and one messages stream (CPU per frame)
    levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # concurrency phase: concurrent clients per side
    burst: int = 40  # concurrency phase: requests per burst (at least 4 per client)
    bursts: int = 4  # concurrency phase: bursts per side and level


QUICK = {
    "requests": 150,
    "warmup": 20,
    "ttft": 100,
    "cpu_frames": 1000,
    "cpu_streams": 2,
    "streams": 1000,
    "open_seconds": 20.0,
    "release": 100,
    "budget": 55.0,
    "phase_seconds": 10.0,
    "agent_rounds": 300,
    "agent_cpu_rounds": 10,
    "messages_rounds": 300,
    "messages_cpu_rounds": 4,
    "levels": (1, 4, 16),
    "bursts": 2,
}


# ---- small helpers ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, linear between closest ranks; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(samples: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds of samples given in seconds."""
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 0.5), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def session() -> requests.Session:
    """A keep-alive session that ignores proxy variables and .netrc (trust_env=False)."""
    s = requests.Session()
    s.trust_env = False
    return s


REALISTIC_DELTA = 24  # characters of new answer text per frame, as in the shared captures (10-25)


def realistic_frames(count: int, delta: int, frame_bytes: int) -> list[dict[str, Any]]:
    """`count` markdown delta frames padded to `frame_bytes` with metadata, a COMPLETED frame, end_of_stream."""
    answer = prose(count * delta)
    pieces = [answer[i : i + delta] for i in range(0, len(answer), delta)]
    envelope = {
        "backend_uuid": "00000000-0000-4000-8000-000000000001",
        "context_uuid": "00000000-0000-4000-8000-000000000002",
        "uuid": "00000000-0000-4000-8000-000000000003",
        "thread_url_slug": "00000000-0000-4000-8000-000000000001",
        "read_write_token": "bench-token",
        "display_model": "turbo",
        "mode": "COPILOT",
        "status": "PENDING",
        "text_completed": False,
        "message_mode": "STREAMING",
        "reconnectable": True,
    }
    sources = [{"name": f"Source {n}", "url": f"https://example.com/{n}", "snippet": "s"} for n in (1, 2, 3)]
    frames: list[dict[str, Any]] = [
        {**envelope, "blocks": [{"intended_usage": "web_results", "web_result_block": {"web_results": sources}}]}
    ]
    for index, piece in enumerate(pieces):
        block = {"progress": "IN_PROGRESS", "chunks": [piece], "chunk_starting_offset": index}
        frame = {
            **envelope,
            "blocks": [
                {"intended_usage": "ask_text_0_markdown", "markdown_block": block},
                {"intended_usage": "ask_text", "markdown_block": block},
            ],
        }
        padding = max(0, frame_bytes - len(orjson.dumps(frame)) - 40)
        frame["telemetry_data"] = {"classifier": "x" * padding}  # the metadata real frames carry
        frames.append(frame)
    done = {"progress": "DONE", "chunks": pieces, "chunk_starting_offset": 0, "answer": answer}
    final = {**envelope, "status": "COMPLETED", "final": True, "final_sse_message": True, "thread_title": "bench"}
    frames.append({**final, "blocks": [{"intended_usage": "ask_text", "markdown_block": done}]})
    frames.append({})
    return frames


# The server's upstream HTTP engine (--engine): the settings that select it. curl (the default) is what perplexity.ai
# gets: curl_cffi impersonating Chrome; requests (urllib3) is the fallback for a base URL that is not impersonated.
ENGINES: dict[str, dict[str, str]] = {
    "curl": {"PERPLEXITY_IMPERSONATE": "chrome"},
    "requests": {"PERPLEXITY_IMPERSONATE": "off"},
}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def prose(size: int) -> str:
    """`size` characters of ASCII markdown prose citing sources [1] to [3]."""
    words = "the server streams answers from perplexity with sources and reasoning to any openai client".split()
    parts: list[str] = []
    total = i = 0
    while total < size:
        sentence = " ".join(words[(i + k) % len(words)] for k in range(11)).capitalize() + f" [{i % 3 + 1}]. "
        if i % 7 == 6:
            sentence += "\n\n"
        parts.append(sentence)
        total += len(sentence)
        i += 1
    return "".join(parts)[:size]


def sse_events(chunks: Iterator[bytes], sep: bytes) -> Iterator[bytes]:
    """Split a body into SSE events (without their blank-line separator `sep`)."""
    buf = b""
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        start = 0
        while (end := buf.find(sep, start)) >= 0:
            yield buf[start:end]
            start = end + len(sep)
        buf = buf[start:]


def event_data(event: bytes) -> bytes | None:
    """The `data:` payload of one single-data-line SSE event, or None (comments, no data)."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[6:] if line[5:6] == b" " else line[5:]
    return None


def delta_content(data: bytes) -> str:
    """The `choices[0].delta.content` of one chat.completion.chunk (empty when absent)."""
    if data == b"[DONE]" or b'"content"' not in data:
        return ""
    body = orjson.loads(data)
    choices = body.get("choices") or ()
    delta = choices[0].get("delta") or {} if choices else {}
    return delta.get("content") or ""


class Direct:
    """Asks sent straight to the fake upstream, the way the server sends them."""

    def __init__(self, base_url: str, token: str) -> None:
        self.url = require_loopback(base_url) + ASK_PATH
        self.session = session()
        self.headers = {
            "accept": "text/event-stream",
            "content-type": "application/json",
            "cookie": f"{COOKIE}={token}",
        }

    def body(self) -> bytes:
        return orjson.dumps(build_ask_payload(QUERY, AskOptions(), str(uuid.uuid4())))

    def whole(self) -> float:
        """Seconds to POST an ask and read the whole (small) SSE answer."""
        data = self.body()
        t0 = time.perf_counter()
        r = self.session.post(self.url, data=data, headers=self.headers)
        content = r.content
        elapsed = time.perf_counter() - t0
        if r.status_code != 200 or ANSWER_MARK not in content:
            raise RuntimeError(f"direct ask failed: HTTP {r.status_code} {content[:200]!r}")
        return elapsed

    def first_text(self) -> float:
        """Seconds until the first frame containing answer text arrives (the rest is then drained)."""
        data = self.body()
        t0 = time.perf_counter()
        r = self.session.post(self.url, data=data, headers=self.headers, stream=True)
        it = r.iter_content(chunk_size=None)
        seen = b""
        first = None
        for chunk in it:
            seen = seen[-64:] + chunk
            if ANSWER_MARK in seen:
                first = time.perf_counter() - t0
                break
        for _ in it:
            pass
        r.close()
        if first is None:
            raise RuntimeError("direct stream carried no answer text")
        return first

    def capture(self) -> tuple[list[bytes], list[int], float, float]:
        """Read one stream: (raw chunks, SSE event sizes, client CPU s for read+decode, wall s)."""
        data = self.body()
        chunks: list[bytes] = []
        sizes: list[int] = []
        c0, t0 = time.process_time(), time.perf_counter()
        r = self.session.post(self.url, data=data, headers=self.headers, stream=True)

        def recorded() -> Iterator[bytes]:
            for chunk in r.iter_content(chunk_size=None):
                chunks.append(chunk)
                yield chunk

        for event in sse_events(recorded(), b"\r\n\r\n"):
            sizes.append(len(event) + 4)
            payload = event_data(event)
            if payload and payload != b"{}":
                orjson.loads(payload)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        r.close()
        return chunks, sizes, cpu, wall


class Api:
    """Chat completions through the server."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base = require_loopback(base_url)
        self.url = self.base + "/v1/chat/completions"
        self.session = session()
        self.headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        message = {"role": "user", "content": QUERY}
        self.whole_body = orjson.dumps({"model": "perplexity-auto", "messages": [message]})
        self.stream_body = orjson.dumps({"model": "perplexity-auto", "messages": [message], "stream": True})

    def raw_stream_request(self, port: int) -> bytes:
        """The bytes of one streamed request, for raw-socket clients."""
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(self.stream_body)}\r\n\r\n"
        )
        return head.encode() + self.stream_body

    def whole(self) -> float:
        """Seconds for one non-streamed chat completion."""
        t0 = time.perf_counter()
        r = self.session.post(self.url, data=self.whole_body, headers=self.headers)
        content = r.content
        elapsed = time.perf_counter() - t0
        if r.status_code != 200 or ANSWER_MARK not in content:
            raise RuntimeError(f"server completion failed: HTTP {r.status_code} {content[:300]!r}")
        return elapsed

    def first_token(self) -> float:
        """Seconds until the first chunk with non-empty `delta.content` (the rest is then drained)."""
        t0 = time.perf_counter()
        r = self.session.post(self.url, data=self.stream_body, headers=self.headers, stream=True)
        if r.status_code != 200:
            raise RuntimeError(f"server stream failed: HTTP {r.status_code} {r.content[:300]!r}")
        it = r.iter_content(chunk_size=None)
        first = None
        for event in sse_events(it, b"\n\n"):
            data = event_data(event)
            if data and delta_content(data):
                first = time.perf_counter() - t0
                break
        for _ in it:
            pass
        r.close()
        if first is None:
            raise RuntimeError("server stream carried no content")
        return first

    def stream_chunks(self) -> tuple[int, int, bool]:
        """Read one streamed completion: (content chunks, body bytes, ended with [DONE])."""
        r = self.session.post(self.url, data=self.stream_body, headers=self.headers, stream=True)
        if r.status_code != 200:
            raise RuntimeError(f"server stream failed: HTTP {r.status_code} {r.content[:300]!r}")
        count = size = 0
        done = False
        for event in sse_events(r.iter_content(chunk_size=None), b"\n\n"):
            size += len(event) + 2
            data = event_data(event)
            if data == b"[DONE]":
                done = True
            elif data and data.startswith(b'{"error"'):
                raise RuntimeError(f"server stream ended with an error: {data[:300]!r}")
            elif data and delta_content(data):
                count += 1
        r.close()
        return count, size, done


class Floor(Api):
    """Chat completions through the stack floor (bench_floor.py), whose `delta.content` is raw upstream bytes."""

    def first_token(self) -> float:
        """Seconds until the first chunk carrying answer text (the floor also forwards the frames before it)."""
        t0 = time.perf_counter()
        r = self.session.post(self.url, data=self.stream_body, headers=self.headers, stream=True)
        if r.status_code != 200:
            raise RuntimeError(f"floor stream failed: HTTP {r.status_code} {r.content[:300]!r}")
        it = r.iter_content(chunk_size=None)
        mark = ANSWER_MARK.decode()
        seen = ""
        first = None
        for event in sse_events(it, b"\n\n"):
            data = event_data(event)
            if data:
                seen = seen[-64:] + delta_content(data)
                if mark in seen:
                    first = time.perf_counter() - t0
                    break
        for _ in it:
            pass
        r.close()
        if first is None:
            raise RuntimeError("floor stream carried no answer text")
        return first


# ---- tool-call answers against text answers (the agent phase) -----------------------------------

# The answer of the agent phase: one canonical tool call, as a model writes it when the ask lists tools. With the
# request's `tools` the server returns it as a tool call; without, the very same upstream answer is plain text.
AGENT_NOTE = (
    "Planning a three-day walking tour of the Left Bank with two children, so please include the hourly "
    "temperature, the chance of rain each afternoon, wind speed along the Seine, the UV index around midday and "
    "the sunset time for each day, and flag any day when an indoor museum visit would be the better choice."
)
AGENT_ARGUMENTS = {"city": "Paris", "country": "FR", "unit": "celsius", "days": 3, "note": AGENT_NOTE}
AGENT_ANSWER = "<tool_call>" + json.dumps({"name": "get_weather", "arguments": AGENT_ARGUMENTS}) + "</tool_call>"
AGENT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city, day by day.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "country": {"type": "string", "description": "ISO 3166 country code"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 10},
                "note": {"type": "string", "description": "What the forecast is for"},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
# The four request kinds, in the order a round starts from (rotated every round).
AGENT_KINDS = ("text", "tool", "text_stream", "tool_stream")


class Agent:
    """Chat completions of the agent phase through the server: with or without `tools`, streamed or not.

    Every call checks its response (status 200; a tool kind carries the get_weather call with its arguments, a
    text kind the `<tool_call>` answer as content) and raises RuntimeError when it does not."""

    def __init__(self, base_url: str, key: str) -> None:
        self.url = require_loopback(base_url) + "/v1/chat/completions"
        self.session = session()
        self.headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        message = {"role": "user", "content": "What will the weather be in Paris for the next three days?"}
        base: dict[str, Any] = {"model": "perplexity-auto", "messages": [message]}
        tools = {"tools": [AGENT_TOOL]}
        stream = {"stream": True}
        self.bodies = {
            "text": orjson.dumps(base),
            "tool": orjson.dumps({**base, **tools}),
            "text_stream": orjson.dumps({**base, **stream}),
            "tool_stream": orjson.dumps({**base, **tools, **stream}),
        }

    def call(self, kind: str) -> tuple[float, float | None]:
        """One request of `kind`: (seconds to the end, seconds to the first content or tool_calls delta or None
        when not streamed)."""
        if kind.endswith("_stream"):
            return self.streamed(kind)
        return self.whole(kind), None

    def whole(self, kind: str) -> float:
        t0 = time.perf_counter()
        r = self.session.post(self.url, data=self.bodies[kind], headers=self.headers)
        content = r.content
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"agent {kind} completion failed: HTTP {r.status_code} {content[:300]!r}")
        choice = (orjson.loads(content).get("choices") or [{}])[0]
        message = choice.get("message") or {}
        if kind == "tool":
            calls = message.get("tool_calls") or []
            if choice.get("finish_reason") != "tool_calls" or not calls:
                raise RuntimeError(f"agent tool completion has no tool call: {content[:300]!r}")
            check_call(calls[0]["function"]["name"], calls[0]["function"]["arguments"], kind)
        elif message.get("tool_calls") or "<tool_call>" not in (message.get("content") or ""):
            raise RuntimeError(f"agent text completion lacks the <tool_call> text: {content[:300]!r}")
        return elapsed

    def streamed(self, kind: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        r = self.session.post(self.url, data=self.bodies[kind], headers=self.headers, stream=True)
        if r.status_code != 200:
            raise RuntimeError(f"agent {kind} stream failed: HTTP {r.status_code} {r.content[:300]!r}")
        first = end = None
        text: list[str] = []
        name, arguments, finish = "", [], None
        for event in sse_events(r.iter_content(chunk_size=None), b"\n\n"):
            data = event_data(event)
            if not data:
                continue
            if data == b"[DONE]":
                end = time.perf_counter() - t0
                break
            body = orjson.loads(data)
            if "error" in body:
                raise RuntimeError(f"agent {kind} stream ended with an error: {data[:300]!r}")
            choice = (body.get("choices") or [{}])[0]
            delta = choice.get("delta") or {}
            finish = choice.get("finish_reason") or finish
            if delta.get("content") or delta.get("tool_calls"):
                if first is None:
                    first = time.perf_counter() - t0
                text.append(delta.get("content") or "")
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    name = name or function.get("name") or ""
                    arguments.append(function.get("arguments") or "")
        r.close()
        if first is None or end is None:
            raise RuntimeError(f"agent {kind} stream ended without {'a delta' if first is None else '[DONE]'}")
        if kind == "tool_stream":
            if finish != "tool_calls" or any(text):
                raise RuntimeError(f"agent tool stream: finish_reason {finish!r}, content {''.join(text)[:200]!r}")
            check_call(name, "".join(arguments), kind)
        elif name or "<tool_call>" not in "".join(text):
            raise RuntimeError(f"agent text stream lacks the <tool_call> text: {''.join(text)[:200]!r}")
        return end, first


def check_call(name: str, arguments: str, kind: str) -> None:
    """Raise unless a returned tool call is the get_weather call of AGENT_ANSWER."""
    if name != "get_weather" or orjson.loads(arguments or "null") != AGENT_ARGUMENTS:
        raise RuntimeError(f"agent {kind}: unexpected tool call {name!r} {arguments[:200]!r}")


def versus(text: list[float], tool: list[float], names: tuple[str, str] = ("text", "tool")) -> dict[str, Any]:
    """Latency summaries of a text kind and its tool kind (or of the base and the other side `names` name), the
    tool's added p50/p99 and the p50/p99 ratios."""
    t, c = summary_ms(text), summary_ms(tool)
    return {
        names[0]: t,
        names[1]: c,
        "added_p50_ms": round(c["p50_ms"] - t["p50_ms"], 3),
        "added_p99_ms": round(c["p99_ms"] - t["p99_ms"], 3),
        "ratio_p50": round(c["p50_ms"] / t["p50_ms"], 2) if t["p50_ms"] else None,
        "ratio_p99": round(c["p99_ms"] / t["p99_ms"], 2) if t["p99_ms"] else None,
    }


# ---- Anthropic Messages streams against chat streams (the messages phase) -------------------------

MESSAGES_MODEL = "claude-sonnet-4-5"  # maps to the catalogue's Claude Sonnet: another model_preference, same answer
ANTHROPIC_VERSION = "2023-06-01"
# max_tokens of the CPU streams' messages requests: above their answer (the 4,096 of the latency requests would cut a
# 2,000-frame answer at 16,384 characters; chat asks for no limit). Claude Sonnet 4.5's own output limit.
MESSAGES_CPU_MAX_TOKENS = 64000
# The four request kinds of the messages phase, in the order a round starts from (rotated every round).
MESSAGES_KINDS = ("chat", "messages", "chat_stream", "messages_stream")


@dataclass
class StreamRead:
    """One streamed answer as the client read it: seconds to the first text and to the terminal event, the text,
    its text chunks (chat: chunks with content; messages: `text_delta` events), all events and body bytes."""

    end: float
    first: float
    text: str
    text_chunks: int
    events: int
    size: int


class Messages:
    """The same question through the server on both APIs: POST /v1/chat/completions and POST /v1/messages (with
    `x-api-key` and `anthropic-version`), streamed or not.

    Every call checks its answer against `expected` (status 200; chat: the content and finish_reason `stop`;
    messages: the text blocks, stop_reason `end_turn`, and for a stream the grammar's ends: message_start first,
    a message_delta with stop_reason `end_turn`, message_stop last) and raises RuntimeError when it does not."""

    def __init__(self, base_url: str, key: str, expected: str = SHORT_ANSWER, max_tokens: int = 4096) -> None:
        base = require_loopback(base_url)
        self.session = session()
        self.expected = expected
        chat_headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        messages_headers = {
            "x-api-key": key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }
        question = [{"role": "user", "content": QUERY}]
        chat: dict[str, Any] = {"model": "perplexity-auto", "messages": question}
        messages: dict[str, Any] = {"model": MESSAGES_MODEL, "max_tokens": max_tokens, "messages": question}
        self.requests: dict[str, tuple[str, dict[str, str], bytes]] = {
            "chat": (base + "/v1/chat/completions", chat_headers, orjson.dumps(chat)),
            "chat_stream": (base + "/v1/chat/completions", chat_headers, orjson.dumps({**chat, "stream": True})),
            "messages": (base + "/v1/messages", messages_headers, orjson.dumps(messages)),
            "messages_stream": (base + "/v1/messages", messages_headers, orjson.dumps({**messages, "stream": True})),
        }

    def call(self, kind: str) -> tuple[float, float | None]:
        """One request of `kind`: (seconds to the end, seconds to the first text or None when not streamed)."""
        if kind.endswith("_stream"):
            read = self.streamed(kind)
            return read.end, read.first
        return self.whole(kind), None

    def whole(self, kind: str) -> float:
        url, headers, body = self.requests[kind]
        t0 = time.perf_counter()
        r = self.session.post(url, data=body, headers=headers)
        content = r.content
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"messages phase: {kind} failed: HTTP {r.status_code} {content[:300]!r}")
        answer = orjson.loads(content)
        if kind == "chat":
            choice = (answer.get("choices") or [{}])[0]
            text, end = (choice.get("message") or {}).get("content"), choice.get("finish_reason")
            ok = end == "stop"
        else:
            blocks = answer.get("content") or []
            text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
            end = answer.get("stop_reason")
            ok = answer.get("type") == "message" and end == "end_turn"
        if not ok or text != self.expected:
            raise RuntimeError(f"messages phase: unexpected {kind} answer (end {end!r}): {content[:300]!r}")
        return elapsed

    def streamed(self, kind: str) -> StreamRead:
        url, headers, body = self.requests[kind]
        t0 = time.perf_counter()
        r = self.session.post(url, data=body, headers=headers, stream=True)
        if r.status_code != 200:
            raise RuntimeError(f"messages phase: {kind} stream failed: HTTP {r.status_code} {r.content[:300]!r}")
        read = self.read_chat if kind == "chat_stream" else self.read_messages
        try:
            result = read(sse_events(r.iter_content(chunk_size=None), b"\n\n"), t0)
        finally:
            r.close()
        if result.text != self.expected:
            raise RuntimeError(
                f"messages phase: {kind} text differs from the answer ({len(result.text)} vs {len(self.expected)} "
                f"chars): {result.text[:120]!r}"
            )
        return result

    @staticmethod
    def read_chat(events: Iterator[bytes], t0: float) -> StreamRead:
        first = end = None
        text: list[str] = []
        count = size = 0
        finish = None
        for event in events:
            size += len(event) + 2
            data = event_data(event)
            if not data:
                continue
            count += 1
            if end is not None:
                raise RuntimeError(f"messages phase: chat stream has data after [DONE]: {data[:200]!r}")
            if data == b"[DONE]":
                end = time.perf_counter() - t0
                continue
            body = orjson.loads(data)
            if "error" in body:
                raise RuntimeError(f"messages phase: chat stream ended with an error: {data[:300]!r}")
            choice = (body.get("choices") or [{}])[0]
            finish = choice.get("finish_reason") or finish
            content = (choice.get("delta") or {}).get("content")
            if content:
                if first is None:
                    first = time.perf_counter() - t0
                text.append(content)
        if first is None or end is None or finish != "stop":
            raise RuntimeError(f"messages phase: chat stream: first text {first}, [DONE] {end}, finish {finish!r}")
        return StreamRead(end, first, "".join(text), len(text), count, size)

    @staticmethod
    def read_messages(events: Iterator[bytes], t0: float) -> StreamRead:
        first = end = None
        text: list[str] = []
        count = size = 0
        kinds: list[str] = []
        stop = None
        for event in events:
            size += len(event) + 2
            data = event_data(event)
            if not data:
                continue
            count += 1
            body = orjson.loads(data)
            kind = body.get("type")
            name = next((ln[6:].strip() for ln in event.splitlines() if ln.startswith(b"event:")), b"").decode()
            if name != kind:
                raise RuntimeError(f"messages phase: event {name!r} carries data of type {kind!r}: {data[:200]!r}")
            if end is not None:
                raise RuntimeError(f"messages phase: messages stream has an event after message_stop: {data[:200]!r}")
            if not kinds and kind != "message_start":
                raise RuntimeError(f"messages phase: messages stream starts with {kind!r}: {data[:200]!r}")
            kinds.append(kind)
            if kind == "error":
                raise RuntimeError(f"messages phase: messages stream ended with an error: {data[:300]!r}")
            if kind == "content_block_delta":
                delta = body.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    if first is None:
                        first = time.perf_counter() - t0
                    text.append(delta["text"])
            elif kind == "message_delta":
                stop = (body.get("delta") or {}).get("stop_reason")
            elif kind == "message_stop":
                end = time.perf_counter() - t0
        if first is None or end is None or stop != "end_turn":
            raise RuntimeError(
                f"messages phase: messages stream: first text {first}, message_stop {end}, stop_reason {stop!r}; "
                f"events {kinds[:6]}...{kinds[-4:]}"
            )
        return StreamRead(end, first, "".join(text), len(text), count, size)


# ---- the run ---------------------------------------------------------------------------------------


class Bench:
    """One benchmark run: owns the children, runs the phases, collects the results."""

    def __init__(
        self,
        plan: Plan,
        phases: list[str],
        *,
        profile: bool,
        hold_upstream: str,
        hold_state: str = "answer",
        floor: bool = True,
        engine: str = "curl",
        hold_wire: str = "h2",
    ) -> None:
        self.plan = plan
        self.phases = phases
        self.use_floor = floor
        self.engine = engine
        self.hold_wire = hold_wire
        self.profile = profile
        self.hold_upstream = hold_upstream
        self.hold_state = hold_state
        self.started = time.monotonic()
        self.deadline = self.started + plan.budget
        self.results: dict[str, Any] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.fake: FakeProcess | None = None
        self.holder: HoldProcess | None = None
        self.server: Gunicorn | None = None
        self.worker: psutil.Process | None = None
        # The stack floor (bench_floor.py) beside the server; floor_error says why it is missing when it failed.
        self.floor: Gunicorn | None = None
        self.floor_worker: psutil.Process | None = None
        self.floor_api: Floor | None = None
        self.floor_error: str | None = None

    # ---- children -----------------------------------------------------------------------------

    def gunicorn_env(self) -> dict[str, str]:
        """The settings both the server and the floor get (same worker_connections, same heartbeat)."""
        connections = str(max(10000, self.plan.streams + 500))
        return {"HEARTBEAT_INTERVAL": str(self.plan.heartbeat), "WORKER_CONNECTIONS": connections}

    def start_server(self, name: str, upstream: str, ca_path: str | None = None) -> None:
        self.stop_server()
        tls = {"PERPLEXITY_CA_BUNDLE": ca_path} if ca_path else {}
        self.server = Gunicorn(
            upstream=upstream,
            token=TOKEN,
            api_key=API_KEY,
            log_path=self.tmp / f"gunicorn-{name}.log",
            extra_env={**self.gunicorn_env(), **ENGINES[self.engine], **tls},
        )
        self.worker = self.server.wait_ready()
        self.api = Api(self.server.url, API_KEY)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.worker = None

    def start_floor(self, upstream: str) -> None:
        """Start the stack floor beside the server; a failure is recorded (floor_error), not fatal to the run."""
        self.stop_floor()
        try:
            self.floor = Gunicorn(
                upstream=upstream,
                token=TOKEN,
                api_key=API_KEY,
                log_path=self.tmp / "gunicorn-floor.log",
                extra_env=self.gunicorn_env(),
                app_spec=FLOOR_APP,
                pythonpath=Path(__file__).resolve().parent,
            )
            self.floor_worker = self.floor.wait_ready()
            self.floor_api = Floor(self.floor.url, API_KEY)
            self.floor_error = None
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.floor_error = f"setup failed: {exc.__class__.__name__}: {str(exc)[:300]}"
            self.stop_floor()

    def stop_floor(self) -> None:
        self.floor_api = None
        self.floor_worker = None
        if self.floor is not None:
            self.floor.stop()
            self.floor = None

    def floor_failed(self, exc: Exception) -> None:
        """A floor call failed mid-phase: keep the server's figures, drop the floor for the rest of the run."""
        traceback.print_exc(file=sys.stderr)
        tail = self.floor.log_tail(10) if self.floor else ""
        self.floor_error = f"{exc.__class__.__name__}: {str(exc)[:300]}" + (f"\n{tail}" if tail else "")
        self.stop_floor()

    def close(self) -> None:
        try:
            self.stop_floor()
            self.stop_server()
        finally:
            for child in (self.holder, self.fake):
                if child is not None:
                    child.stop()
            self.holder = self.fake = None
            shutil.rmtree(self.tmp, ignore_errors=True)

    def left(self, cap: float | None = None) -> float:
        """Seconds left in the run's budget (capped at `cap`)."""
        remaining = self.deadline - time.monotonic()
        return max(0.0, min(remaining, cap) if cap is not None else remaining)

    def worker_cpu(self) -> float:
        assert self.worker is not None
        return cpu_seconds(self.worker)

    def floor_cpu(self) -> float:
        return cpu_seconds(self.floor_worker) if self.floor_worker is not None else 0.0

    # ---- driver -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.fake = FakeProcess(TOKEN, nofile=max(2 * self.plan.streams + 1000, 8192))
        self.direct = Direct(self.fake.url, TOKEN)
        order = ("latency", "ttft", "cpu", "concurrency", "agent", "messages", "release")
        first = [p for p in order if p in self.phases]
        if first and self.setup(first, self.fake.url):
            if self.use_floor and set(first) & set(FLOOR_PHASES):
                self.start_floor(self.fake.url)
            for phase in first:
                if phase not in FLOOR_PHASES:
                    self.stop_floor()  # idle, but one process less beside the remaining phases
                self.run_phase(phase)
            self.stop_floor()
        if "streams" in self.phases and self.setup(["streams"], None):
            self.run_phase("streams")
        self.stop_server()
        return self.results

    def setup(self, phases: list[str], upstream: str | None) -> bool:
        """Start a fresh server (and for `upstream=None` the holding upstream); on failure record it for `phases`."""
        try:
            if upstream is None:
                assert self.fake is not None
                upstream = self.fake.url
                if self.hold_upstream == "light":
                    prefix = self.answer_prefix() if self.hold_state == "answer" else b""
                    nofile = 2 * self.plan.streams + 1000
                    tls_h2 = self.hold_wire == "h2"
                    self.holder = HoldProcess(
                        TOKEN, heartbeat=self.plan.heartbeat, prefix=prefix, nofile=nofile, tls_h2=tls_h2
                    )
                    upstream = self.holder.url
            # A fresh worker per group: the streams' memory baseline is not inflated by the CPU phase's frames.
            ca_path = self.holder.ca_path if self.holder else None
            self.start_server("b" if self.holder else "a", upstream, ca_path)
            return True
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            for phase in phases:
                self.results[phase] = {"error": f"setup failed: {exc.__class__.__name__}: {exc}"}
            return False

    def answer_prefix(self) -> bytes:
        """The frames of a real fake answer up to (not including) COMPLETED: a stream caught mid-answer."""
        assert self.fake is not None
        self.fake.set_reply(Reply(answer=SHORT_ANSWER, chunk_size=1000))
        raw, _, _, _ = self.direct.capture()
        events = list(sse_events(iter(raw), b"\r\n\r\n"))
        kept = []
        for event in events:
            if b'"status":"COMPLETED"' in event or event.startswith(b"event: end_of_stream"):
                break
            kept.append(event + b"\r\n\r\n")
        return b"".join(kept)

    def run_phase(self, name: str) -> None:
        if self.left() < 3:
            self.results[name] = {"skipped": "time budget spent"}
            return
        print(f"[{time.monotonic() - self.started:6.1f}s] {name} ...", file=sys.stderr, flush=True)
        try:
            for child in (self.fake, self.holder):
                if child is not None:
                    child.reset()
            self.results[name] = result = getattr(self, f"phase_{name}")()
            if name in FLOOR_PHASES and self.use_floor and self.floor_error:
                result["floor_error"] = self.floor_error
        except Exception as exc:  # one broken phase must not lose the others
            traceback.print_exc(file=sys.stderr)
            tail = self.server.log_tail(15) if self.server else ""
            self.results[name] = {"error": f"{exc.__class__.__name__}: {exc}", "gunicorn_log_tail": tail}

    # ---- 1. non-streamed latency ----------------------------------------------------------------

    def phase_latency(self) -> dict[str, Any]:
        floor = self.floor_api.whole if self.floor_api else None
        return self.paired(self.direct.whole, self.api.whole, floor, self.plan.requests, self.plan.warmup)

    # ---- 2. time to first token ---------------------------------------------------------------

    def phase_ttft(self) -> dict[str, Any]:
        floor = self.floor_api.first_token if self.floor_api else None
        warmup = max(self.plan.warmup // 2, 5)
        return self.paired(self.direct.first_text, self.api.first_token, floor, self.plan.ttft, warmup)

    def paired(
        self,
        direct_call: Callable[[], float],
        server_call: Callable[[], float],
        floor_call: Callable[[], float] | None,
        count: int,
        warmup: int,
    ) -> dict[str, Any]:
        """Time `count` rounds of one call per side (the small answer: direct, server and, unless None, the floor),
        rotating which side goes first; add CPU figures. A failing floor is dropped, the other two go on."""
        assert self.fake is not None
        self.fake.set_reply(Reply(answer=SHORT_ANSWER, chunk_size=1000))
        end = time.monotonic() + self.left(self.plan.phase_seconds)
        calls = {"direct": direct_call, "server": server_call}
        if floor_call is not None:
            calls["floor"] = floor_call
        samples: dict[str, list[float]] = {name: [] for name in calls}

        def one(name: str) -> float | None:
            try:
                return calls[name]()
            except Exception as exc:
                if name != "floor":
                    raise
                self.floor_failed(exc)
                del calls["floor"]
                return None

        for _ in range(warmup):
            for name in list(calls):
                one(name)
        worker0, floor0, fake0 = self.worker_cpu(), self.floor_cpu(), cpu_seconds(self.fake.process)
        for i in range(count):
            if time.monotonic() > end:
                break
            # Rotate who goes first (d s f, s f d, f d s), so every side sees the same noise in every position.
            names = list(calls)
            k = i % len(names)
            for name in names[k:] + names[:k]:
                if name in calls and (elapsed := one(name)) is not None:
                    samples[name].append(elapsed)
        worker_cpu = self.worker_cpu() - worker0
        floor_cpu = self.floor_cpu() - floor0 if "floor" in calls else 0.0
        fake_cpu = cpu_seconds(self.fake.process) - fake0
        server = samples["server"]
        floor = samples.get("floor") if "floor" in calls else None
        result = side_by_side(samples["direct"], server, floor)
        if server:
            result["worker_cpu_ms_per_request"] = round(worker_cpu / len(server) * 1e3, 3)
        if floor:
            result["floor_worker_cpu_ms_per_request"] = round(floor_cpu / len(floor) * 1e3, 3)
        asks = sum(len(v) for v in samples.values())  # the fake served every side
        if asks:
            result["fake_cpu_ms_per_ask"] = round(fake_cpu / asks * 1e3, 3)
        return result

    # ---- 3. CPU per streamed chunk -------------------------------------------------------------

    def calibrate_chunk_size(self) -> int:
        """The Reply chunk_size whose answer frames come out at `frame_bytes` on the wire (measured)."""
        assert self.fake is not None
        probe = 1000
        self.fake.set_reply(Reply(answer=prose(probe * 12), chunk_size=probe))
        _, sizes, _, _ = self.direct.capture()
        # Answer frames carry each chunk twice (ask_text_0_markdown and ask_text): size = envelope + 2 * chunk.
        answer_frames = sorted(sizes)[len(sizes) // 2 - 1 : len(sizes) // 2 + 2]
        overhead = statistics.median(answer_frames) - 2 * probe
        return max(64, round((self.plan.frame_bytes - overhead) / 2))

    def phase_cpu(self) -> dict[str, Any]:
        assert self.fake is not None
        plan = self.plan
        chunk_size = self.calibrate_chunk_size()
        self.fake.reset()
        self.fake.set_reply(Reply(answer=prose(chunk_size * plan.cpu_frames), chunk_size=chunk_size))
        # Reference: the same stream read directly, decoded minimally (SSE split + orjson) in this process.
        raw, sizes, direct_cpu, direct_wall = self.direct.capture()
        answer_sizes = sorted(sizes[4:-2]) or sorted(sizes)
        frames = len(sizes) - 1  # the last event is end_of_stream
        self.fake.reset()
        end = time.monotonic() + self.left(plan.phase_seconds + 20)
        worker0, fake0 = self.worker_cpu(), cpu_seconds(self.fake.process)
        t0 = time.perf_counter()
        chunks = size = streams = 0
        complete = True
        while streams < plan.cpu_streams and time.monotonic() < end:
            count, nbytes, done = self.api.stream_chunks()
            chunks += count
            size += nbytes
            streams += 1
            complete = complete and done
        wall = time.perf_counter() - t0
        worker_cpu = self.worker_cpu() - worker0
        fake_cpu = cpu_seconds(self.fake.process) - fake0
        self.fake.reset()
        short = self.cpu_short_streams(chunk_size, end)
        result: dict[str, Any] = {
            "chunk_size_chars": chunk_size,
            "upstream_frame_bytes_p50": int(pct(answer_sizes, 0.5)),
            "upstream_frame_bytes_p10_p90": [int(pct(answer_sizes, 0.1)), int(pct(answer_sizes, 0.9))],
            "upstream_final_frame_bytes": max(sizes),
            "upstream_frames_per_stream": frames,
            "streams": streams,
            "all_ended_with_done": complete,
            "content_chunks": chunks,
            "client_bytes_per_chunk": round(size / chunks) if chunks else None,
            "worker_cpu_s": round(worker_cpu, 3),
            "wall_s": round(wall, 3),
            "worker_cpu_us_per_chunk": round(worker_cpu / chunks * 1e6, 1) if chunks else None,
            "worker_cpu_us_per_upstream_frame": round(worker_cpu / (frames * streams) * 1e6, 1) if streams else None,
            "direct_decode_us_per_frame": round(direct_cpu / frames * 1e6, 1),
            "direct_wall_us_per_frame": round(direct_wall / frames * 1e6, 1),
            "fake_cpu_us_per_frame": round(fake_cpu / (frames * streams) * 1e6, 1) if streams else None,
        }
        result["short_streams"] = short
        result["offline_breakdown"] = offline_breakdown(raw, self.profile)
        real_frames = realistic_frames(plan.cpu_frames, REALISTIC_DELTA, plan.frame_bytes)
        result["realistic"] = self.cpu_realistic(real_frames, end)
        if self.floor_api is not None:
            # The same bulk streams through the stack floor, after the server's figures (the real-shaped ones were
            # interleaved above). The floor
            # turns every upstream read into one content chunk: per chunk the client counted, as for the server.
            floor_end = time.monotonic() + self.left(plan.phase_seconds)
            try:
                self.fake.set_reply(Reply(answer=prose(chunk_size * plan.cpu_frames), chunk_size=chunk_size))
                result.update(self.floor_streams(floor_end))
            except Exception as exc:
                self.floor_failed(exc)
            finally:
                self.fake.reset()
        return result

    def cpu_realistic(self, frames: list[dict[str, Any]], end: float) -> dict[str, Any]:
        """4 KB frames shaped like real ones: a small answer delta (REALISTIC_DELTA chars) plus envelope and
        metadata, as Perplexity sends with send_back_text off. The bulk figure above instead puts ~1.7 KB of new
        answer text in every frame, which makes per-chunk costs scale with text rather than with frames.

        With the floor running, streams alternate between the server and the floor (rotating which goes first) and
        each side's figure is the median over its streams: one stream is short enough (about 50 ms of CPU) for the
        machine's drift between two back-to-back blocks of streams to swamp the difference being measured."""
        assert self.fake is not None
        self.fake.set_reply(Reply(frames=frames))
        sides: list[tuple[str, Any, Callable[[], float]]] = [("server", self.api, self.worker_cpu)]
        if self.floor_api is not None:
            sides.append(("floor", self.floor_api, self.floor_cpu))
        per_stream: dict[str, list[float]] = {name: [] for name, _, _ in sides}
        chunks = dict.fromkeys(per_stream, 0)
        try:
            for _, api, _ in sides:
                api.stream_chunks()  # warm up
            rounds = 2 * self.plan.cpu_streams
            for i in range(rounds):
                if time.monotonic() > end and i >= 2:
                    break
                for name, api, cpu in sides if i % 2 == 0 else sides[::-1]:
                    before = cpu()
                    count = api.stream_chunks()[0]
                    if count:
                        per_stream[name].append((cpu() - before) / count * 1e6)
                        chunks[name] += count
        except Exception as exc:
            if not per_stream["server"] or "floor" not in per_stream:
                raise
            self.floor_failed(exc)  # the floor broke mid-phase: keep the server's streams
        finally:
            self.fake.reset()
        sizes = sorted(len(orjson.dumps(f)) for f in frames[1:-2])
        result: dict[str, Any] = {
            "delta_chars": REALISTIC_DELTA,
            "frame_bytes_p50": sizes[len(sizes) // 2],
            "frames_per_stream": len(frames) - 1,
            "streams": len(per_stream["server"]),
            "content_chunks": chunks["server"],
            "worker_cpu_us_per_chunk": _median(per_stream["server"]),
            "worker_cpu_us_per_stream": [round(v, 1) for v in per_stream["server"]],
        }
        if per_stream.get("floor"):
            result["floor_streams"] = len(per_stream["floor"])
            result["floor_content_chunks"] = chunks["floor"]
            result["floor_worker_cpu_us_per_chunk"] = _median(per_stream["floor"])
            result["floor_worker_cpu_us_per_stream"] = [round(v, 1) for v in per_stream["floor"]]
        return result

    def floor_streams(self, end: float) -> dict[str, Any]:
        """Read `cpu_streams` streams of the fake's current reply through the floor: its worker CPU per chunk."""
        assert self.floor_api is not None and self.fake is not None
        cpu0, t0 = self.floor_cpu(), time.perf_counter()
        chunks = streams = 0
        complete = True
        while streams < self.plan.cpu_streams and time.monotonic() < end:
            count, _, done = self.floor_api.stream_chunks()
            chunks += count
            streams += 1
            complete = complete and done
        wall, floor_cpu = time.perf_counter() - t0, self.floor_cpu() - cpu0
        return {
            "floor_streams": streams,
            "floor_content_chunks": chunks,
            "floor_all_ended_with_done": complete,
            "floor_worker_cpu_s": round(floor_cpu, 3),
            "floor_wall_s": round(wall, 3),
            "floor_worker_cpu_us_per_chunk": round(floor_cpu / chunks * 1e6, 1) if chunks else None,
        }

    def cpu_short_streams(self, chunk_size: int, end: float) -> dict[str, Any]:
        """The same frames in streams a tenth as long: per-chunk cost that grows with the answer shows here."""
        assert self.fake is not None
        frames = max(20, self.plan.cpu_frames // 10)
        self.fake.set_reply(Reply(answer=prose(chunk_size * frames), chunk_size=chunk_size))
        worker0 = self.worker_cpu()
        chunks = streams = 0
        while streams < 10 * self.plan.cpu_streams and time.monotonic() < end:
            chunks += self.api.stream_chunks()[0]
            streams += 1
        worker_cpu = self.worker_cpu() - worker0
        self.fake.reset()
        return {
            "frames_per_stream": frames,
            "streams": streams,
            "content_chunks": chunks,
            "worker_cpu_us_per_chunk": round(worker_cpu / chunks * 1e6, 1) if chunks else None,
        }

    # ---- 4. open streams per worker ------------------------------------------------------------

    def hold_reply(self, seconds: float) -> Reply:
        """A stream that sends its headers, then only heartbeats for `seconds` (the client leaves first)."""
        return Reply(
            answer=SHORT_ANSWER, chunk_size=1000, first_byte_delay=seconds, heartbeat_every=self.plan.heartbeat
        )

    def phase_streams(self) -> dict[str, Any]:
        assert self.fake is not None and self.server is not None and self.worker is not None
        plan = self.plan
        cap = self.left(plan.open_seconds + 25)
        upstream: ChildProcess = self.holder or self.fake
        self.fake.set_reply(self.hold_reply(cap + 30))
        request = self.api.raw_stream_request(self.server.port)
        # Warm the streaming path (imports, pools, first greenlets) before the memory baseline.
        warm = Herd(self.server.port, request)
        warm.open(20, ramp=20, deadline=time.monotonic() + 10)
        warm.pump(0.3)
        warm.close()
        upstream.reset()
        time.sleep(0.5)
        rss0, fds0 = self.worker.memory_info().rss, self.worker.num_fds()
        checkpoints: list[tuple[int, int]] = [(0, rss0)]
        step = max(1, plan.streams // 10)

        def progress(herd: Herd) -> None:
            if herd.answered >= checkpoints[-1][0] + step:
                assert self.worker is not None
                checkpoints.append((herd.answered, self.worker.memory_info().rss))

        herd = Herd(self.server.port, request)
        try:
            t0 = time.monotonic()
            herd.open(plan.streams, ramp=plan.ramp, deadline=t0 + min(plan.open_seconds, cap), on_progress=progress)
            open_s = time.monotonic() - t0
            herd.pump(min(2.0, self.left()))  # settle
            window = max(plan.heartbeat * 3, 1.0)
            w0, f0, since = self.worker_cpu(), cpu_seconds(upstream.process), time.monotonic()
            herd.pump(window)
            idle_cpu = self.worker_cpu() - w0
            fake_cpu = cpu_seconds(upstream.process) - f0
            alive = herd.alive_since(since)
            rss1, fds1 = self.worker.memory_info().rss, self.worker.num_fds()
            upstream_open = upstream.open_streams()
            held = herd.held
            checkpoints.append((held, rss1))
            result: dict[str, Any] = {
                "target": plan.streams,
                "upstream": f"light asyncio holder ({self.hold_wire})" if self.holder else "fake",
                "state": self.hold_state if self.holder else "headers",
                "answered": herd.answered,
                "held": held,
                "alive_in_window": alive,
                "failed": herd.failed,
                "ended_by_server": herd.ended,
                "errors": dict(herd.errors),
                "first_error": herd.first_error[:300],
                "upstream_open": upstream_open,
                "open_seconds": round(open_s, 2),
                "worker_rss_before_mib": round(rss0 / 2**20, 1),
                "worker_rss_with_mib": round(rss1 / 2**20, 1),
                "kib_per_stream": round((rss1 - rss0) / 1024 / held, 1) if held else None,
                "kib_per_stream_slope": slope_kib(checkpoints),
                # (streams answered, worker RSS MiB) as the streams opened, the last with all of them held.
                "rss_checkpoints": [[n, round(rss / 2**20, 2)] for n, rss in checkpoints],
                "worker_fds_per_stream": round((fds1 - fds0) / held, 2) if held else None,
                "heartbeat_window_s": window,
                "worker_cpu_pct_holding": round(idle_cpu / window * 100, 1),
                "worker_cpu_us_per_stream_second": round(idle_cpu / window / held * 1e6, 1) if held else None,
                "upstream_cpu_pct_holding": round(fake_cpu / window * 100, 1),
            }
            # Everyone leaves (FIN): how long until the upstream side is back to zero, at this scale.
            herd.abort(rst=False)
            result["release_all_fin"] = self.wait_released(upstream, upstream_open, time.monotonic())
            return result
        finally:
            herd.close()
            upstream.reset()

    # ---- 5. upstream release after the client leaves ------------------------------------------

    def wait_released(self, upstream: ChildProcess, before: int, t0: float) -> dict[str, Any]:
        """Poll the upstream's open-stream gauge from `t0` until it is 0; when did half / all of `before` go."""
        limit = max(10.0, 3 * self.plan.heartbeat + 5)
        half = all_gone = None
        now = remaining = before
        while (now := time.monotonic()) - t0 < limit:
            remaining = upstream.open_streams()
            if half is None and remaining <= before / 2:
                half = now - t0
            if remaining == 0:
                all_gone = now - t0
                break
            time.sleep(0.005)
        return {
            "streams": before,
            "p50_s": round(half, 3) if half is not None else None,
            "max_s": round(all_gone, 3) if all_gone is not None else None,
            "still_open": remaining,
            "waited_s": round(now - t0, 2),
        }

    def phase_release(self) -> dict[str, Any]:
        assert self.fake is not None and self.server is not None
        plan = self.plan
        request = self.api.raw_stream_request(self.server.port)
        result: dict[str, Any] = {"heartbeat_s": plan.heartbeat, "limit_s": plan.heartbeat + TARGET["release_extra_s"]}
        for mode in ("rst", "fin"):
            if self.left() < 5:
                result[mode] = {"skipped": "time budget spent"}
                continue
            self.fake.reset()
            self.fake.set_reply(self.hold_reply(60))
            herd = Herd(self.server.port, request)
            try:
                # Open the streams in batches spread over one heartbeat interval, so their heartbeats (the
                # server's only writes, hence its only chance to notice a departed client) fall at every phase.
                end = time.monotonic() + min(20, self.left())
                for batch in range(1, STAGGER + 1):
                    herd.open(plan.release * batch // STAGGER, ramp=plan.ramp, deadline=end)
                    herd.pump(plan.heartbeat / STAGGER)
                herd.pump(0.5)  # the streams are flowing (heartbeats reach the client)
                before = self.fake.open_streams()
                t0 = time.monotonic()
                herd.abort(rst=mode == "rst")
                result[mode] = {"answered": herd.answered, **self.wait_released(self.fake, before, t0)}
            finally:
                herd.close()
        self.fake.reset()
        return result

    def warm_rotating_rounds(
        self, call: Callable[[str], tuple[float, float | None]], kinds: list[str], rounds: int
    ) -> tuple[dict[str, list[float]], dict[str, list[float]], int, float]:
        """A warm-up of every kind, then `rotating_rounds` within this phase's time: the latency part of the
        agent and messages phases."""
        for _ in range(max(5, self.plan.warmup // 5)):
            for kind in kinds:
                call(kind)
        return rotating_rounds(call, kinds, rounds, time.monotonic() + self.left(self.plan.phase_seconds))

    # ---- 6. tool-call answers against text answers (opt-in: --phases agent) -----------------------

    def phase_agent(self) -> dict[str, Any]:
        """The same upstream answer, a canonical `<tool_call>` block, asked for with and without `tools`: what
        reading it as a tool call adds over passing it through as text, non-streamed and streamed.

        Latency: warm-up, then rounds of one request of each kind (text, tool, text streamed, tool streamed),
        rotating which kind goes first. Worker CPU: afterwards, rounds of one block of `agent_block` requests per
        kind (rotating too), the worker's CPU clock read around each block once it is idle (20 ms after the last
        response), so what a request costs after its response (access log, cleanup) stays in its own block."""
        assert self.fake is not None and self.server is not None
        plan = self.plan
        reply = Reply(answer=AGENT_ANSWER, chunk_size=REALISTIC_DELTA)
        self.fake.set_reply(reply)
        _, sizes, _, _ = self.direct.capture()  # the upstream stream, for the report: frames and bytes
        agent = Agent(self.server.url, API_KEY)
        kinds = list(AGENT_KINDS)
        total, first, rounds, wall = self.warm_rotating_rounds(agent.call, kinds, plan.agent_rounds)
        # Worker CPU per request of each kind, in blocks (one per kind and round).
        cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu_end = time.monotonic() + self.left(plan.phase_seconds / 2)
        for i in range(plan.agent_cpu_rounds):
            if time.monotonic() > cpu_end and i >= 1:
                break
            k = i % len(kinds)
            for kind in kinds[k:] + kinds[:k]:
                time.sleep(0.02)
                before = self.worker_cpu()
                for _ in range(plan.agent_block):
                    agent.call(kind)
                time.sleep(0.02)
                cpu[kind].append((self.worker_cpu() - before) / plan.agent_block)
        self.fake.reset()
        cpu_ms = {kind: round(statistics.median(v) * 1e3, 3) if v else None for kind, v in cpu.items()}

        def added(tool: str, text: str) -> dict[str, Any]:
            """Medians over rounds of the tool block's CPU minus (over) the same round's text block: the machine's
            drift between rounds cancels out, unlike in the difference of the two medians."""
            pairs = [(a, b) for a, b in zip(cpu[tool], cpu[text], strict=True) if b > 0]
            if not pairs:
                return {"added_ms": None, "ratio": None}
            return {
                "added_ms": round(statistics.median(a - b for a, b in pairs) * 1e3, 3),
                "ratio": round(statistics.median(a / b for a, b in pairs), 2),
            }

        return {
            "answer_chars": len(AGENT_ANSWER),
            "upstream_chunk_chars": reply.chunk_size,
            "upstream_frames": len(sizes) - 1,  # the last event is end_of_stream
            "upstream_bytes": sum(sizes),
            "rounds": rounds,
            "wall_s": round(wall, 2),
            "nonstream": versus(total["text"], total["tool"]),
            "stream_first_delta": versus(first["text_stream"], first["tool_stream"]),
            "stream_done": versus(total["text_stream"], total["tool_stream"]),
            "cpu_block": plan.agent_block,
            "cpu_blocks_per_kind": len(cpu["text"]),
            "worker_cpu_ms_per_request": cpu_ms,
            "worker_cpu_ms_per_block_request": {kind: [round(v * 1e3, 3) for v in cpu[kind]] for kind in kinds},
            "worker_cpu_tool_added_nonstream": added("tool", "text"),
            "worker_cpu_tool_added_stream": added("tool_stream", "text_stream"),
        }

    # ---- 7. Anthropic Messages streams against chat streams (opt-in: --phases messages) ---------------

    def phase_messages(self) -> dict[str, Any]:
        """The same upstream answer asked for on POST /v1/chat/completions and on POST /v1/messages: what the
        Messages API adds in latency (non-streamed, streamed to the first text and to the end) and in worker CPU
        per streamed upstream frame.

        Latency: warm-up, then rounds of one request of each kind (chat, messages, both streamed), rotating which
        kind goes first. CPU: then rounds of one chat stream and one messages stream of real-shaped 4 KB frames
        (`realistic_frames`), alternating which goes first, the worker's CPU clock read around each stream once it
        is idle (20 ms after its end); the same again with streams a tenth as long."""
        assert self.fake is not None and self.server is not None
        plan = self.plan
        reply = Reply(answer=SHORT_ANSWER, chunk_size=1000)
        self.fake.set_reply(reply)
        _, sizes, _, _ = self.direct.capture()  # the upstream stream, for the report: frames and bytes
        client = Messages(self.server.url, API_KEY)
        kinds = list(MESSAGES_KINDS)
        total, first, rounds, wall = self.warm_rotating_rounds(client.call, kinds, plan.messages_rounds)
        self.fake.reset()
        names = ("chat", "messages")
        result: dict[str, Any] = {
            "model": MESSAGES_MODEL,
            "answer_chars": len(SHORT_ANSWER),
            "upstream_frames": len(sizes) - 1,  # the last event is end_of_stream
            "upstream_bytes": sum(sizes),
            "rounds": rounds,
            "wall_s": round(wall, 2),
            "nonstream": versus(total["chat"], total["messages"], names),
            "stream_first_token": versus(first["chat_stream"], first["messages_stream"], names),
            "stream_done": versus(total["chat_stream"], total["messages_stream"], names),
        }
        cpu_end = time.monotonic() + self.left(plan.phase_seconds / 2)
        result["cpu"] = self.messages_cpu(plan.cpu_frames, plan.messages_cpu_rounds, cpu_end)
        short_end = time.monotonic() + self.left(plan.phase_seconds / 4)
        short_frames = max(20, plan.cpu_frames // 10)
        result["cpu_short"] = self.messages_cpu(short_frames, 2 * plan.messages_cpu_rounds, short_end)
        return result

    def messages_cpu(self, count: int, rounds: int, end: float) -> dict[str, Any]:
        """Worker CPU per upstream frame of chat streams and messages streams of the same real-shaped answer
        (`count` 4 KB frames of REALISTIC_DELTA characters), streams alternating (which goes first rotates).
        Each side's figure is the median over its streams; added and ratio are the medians over rounds of the
        messages stream's figure minus (over) the same round's chat stream's, so the machine's drift cancels.
        The messages requests ask for MESSAGES_CPU_MAX_TOKENS, so that neither answer is cut short."""
        assert self.fake is not None and self.server is not None
        frames = realistic_frames(count, REALISTIC_DELTA, self.plan.frame_bytes)
        upstream_frames = len(frames) - 1  # the last is end_of_stream
        kinds = ("chat_stream", "messages_stream")
        per_frame: dict[str, list[float]] = {kind: [] for kind in kinds}
        reads: dict[str, StreamRead] = {}
        client = Messages(self.server.url, API_KEY, prose(count * REALISTIC_DELTA), MESSAGES_CPU_MAX_TOKENS)
        self.fake.set_reply(Reply(frames=frames))
        try:
            for kind in kinds:
                client.streamed(kind)  # warm up
            time.sleep(0.02)
            for i in range(rounds):
                if time.monotonic() > end and i >= 2:
                    break
                for kind in kinds if i % 2 == 0 else kinds[::-1]:
                    before = self.worker_cpu()
                    reads[kind] = client.streamed(kind)
                    time.sleep(0.02)  # what the worker does after the response (access log, cleanup) counts here
                    per_frame[kind].append((self.worker_cpu() - before) / upstream_frames * 1e6)
        finally:
            self.fake.reset()
        chat, messages = per_frame["chat_stream"], per_frame["messages_stream"]
        pairs = [(m, c) for m, c in zip(messages, chat, strict=False) if c > 0]
        sizes = sorted(len(orjson.dumps(f)) for f in frames[1:-2])

        def client_side(kind: str) -> dict[str, Any]:
            read = reads.get(kind)
            if read is None:
                return {}
            return {"text_chunks": read.text_chunks, "events": read.events, "body_bytes": read.size}

        return {
            "delta_chars": REALISTIC_DELTA,
            "frame_bytes_p50": sizes[len(sizes) // 2],
            "upstream_frames_per_stream": upstream_frames,
            "rounds": len(pairs),
            "chat_us_per_frame": _median(chat),
            "messages_us_per_frame": _median(messages),
            "added_us_per_frame": _median([m - c for m, c in pairs]),
            "ratio": round(statistics.median(m / c for m, c in pairs), 2) if pairs else None,
            "chat_us_per_frame_per_stream": [round(v, 1) for v in chat],
            "messages_us_per_frame_per_stream": [round(v, 1) for v in messages],
            "chat_client": client_side("chat_stream"),
            "messages_client": client_side("messages_stream"),
        }

    # ---- 8. latency and throughput against concurrent clients (with --plot, or --phases concurrency) ----------

    def phase_concurrency(self) -> dict[str, Any]:
        """Non-streamed completions (the short answer) from 1, 2, 4, ... concurrent clients: the fake called
        directly, the server and the stack floor. Per level, `bursts` rounds of one burst per side (rotating which
        side goes first); a burst is `level` threads, each with its own keep-alive session, each making at least 4
        requests (`burst` in all). Per side and level: p50/p99 of every request's latency, and the median of the
        bursts' throughput (requests over the burst's wall time)."""
        assert self.fake is not None and self.server is not None
        plan = self.plan
        self.fake.set_reply(Reply(answer=SHORT_ANSWER, chunk_size=1000))
        end = time.monotonic() + self.left(2 * plan.phase_seconds)
        rows: list[dict[str, Any]] = []
        try:
            for level in plan.levels:
                if time.monotonic() > end:
                    break
                rows.append(self.concurrency_level(level, end))
        finally:
            self.fake.reset()
        return {"levels": [row["clients"] for row in rows], "by_level": rows, "bursts_per_level": plan.bursts}

    def concurrency_level(self, level: int, end: float) -> dict[str, Any]:
        """One level of the concurrency phase (see phase_concurrency); the floor is dropped if it fails."""
        assert self.fake is not None and self.server is not None
        per_client = max(4, -(-self.plan.burst // level))
        clients: dict[str, list[Any]] = {
            "direct": [Direct(self.fake.url, TOKEN) for _ in range(level)],
            "server": [Api(self.server.url, API_KEY) for _ in range(level)],
        }
        if self.floor is not None:
            clients["floor"] = [Floor(self.floor.url, API_KEY) for _ in range(level)]
        samples: dict[str, list[float]] = {name: [] for name in clients}
        rates: dict[str, list[float]] = {name: [] for name in clients}

        def client_run(caller: Any) -> list[float]:
            return [caller.whole() for _ in range(per_client)]

        try:
            with ThreadPoolExecutor(max_workers=level) as pool:
                for side in clients.values():  # warm up: every client's connection open
                    list(pool.map(lambda c: c.whole(), side))
                for i in range(self.plan.bursts):
                    if time.monotonic() > end and i >= 1:
                        break
                    names = list(clients)
                    k = i % len(names)
                    for name in names[k:] + names[:k]:
                        if name not in clients:
                            continue
                        t0 = time.perf_counter()
                        try:
                            results = list(pool.map(client_run, clients[name]))
                        except Exception as exc:
                            if name != "floor":
                                raise
                            self.floor_failed(exc)
                            del clients["floor"], samples["floor"], rates["floor"]
                            continue
                        wall = time.perf_counter() - t0
                        samples[name].extend(x for r in results for x in r)
                        rates[name].append(level * per_client / wall)
        finally:
            for side in clients.values():
                for caller in side:
                    caller.session.close()
        row: dict[str, Any] = {"clients": level, "requests_per_client": per_client}
        for name, values in samples.items():
            row[name] = {**summary_ms(values), "rps": round(statistics.median(rates[name]), 1)}
        return row


def rotating_rounds(
    call: Callable[[str], tuple[float, float | None]], kinds: list[str], rounds: int, end: float
) -> tuple[dict[str, list[float]], dict[str, list[float]], int, float]:
    """Up to `rounds` rounds (until monotonic `end`) of one `call(kind)` per kind, rotating which kind goes first
    so every kind sees the same noise in every position. `call` returns (seconds in all, seconds to the first
    token or None). Returns the totals and the first-token times per kind (the latter for the `_stream` kinds),
    the rounds run and the wall time."""
    total: dict[str, list[float]] = {kind: [] for kind in kinds}
    first: dict[str, list[float]] = {kind: [] for kind in kinds if kind.endswith("_stream")}
    t0 = time.perf_counter()
    done = 0
    while done < rounds and time.monotonic() < end:
        k = done % len(kinds)
        for kind in kinds[k:] + kinds[:k]:
            elapsed, to_first = call(kind)
            total[kind].append(elapsed)
            if to_first is not None:
                first[kind].append(to_first)
        done += 1
    return total, first, done, time.perf_counter() - t0


def side_by_side(direct: list[float], server: list[float], floor: list[float] | None = None) -> dict[str, Any]:
    """Latency summaries of both sides plus the added p50/p99 and the p50 ratio; with `floor` (the stack floor's
    samples) also its summary, its own added p50/p99 over direct and the server's p50/p99 over the floor."""
    d, s = summary_ms(direct), summary_ms(server)
    result: dict[str, Any] = {
        "direct": d,
        "server": s,
        "added_p50_ms": round(s["p50_ms"] - d["p50_ms"], 3),
        "added_p99_ms": round(s["p99_ms"] - d["p99_ms"], 3),
        "ratio_p50": round(s["p50_ms"] / d["p50_ms"], 2) if d["p50_ms"] else None,
    }
    if floor:
        f = summary_ms(floor)
        result["floor"] = f
        result["floor_added_p50_ms"] = round(f["p50_ms"] - d["p50_ms"], 3)
        result["floor_added_p99_ms"] = round(f["p99_ms"] - d["p99_ms"], 3)
        result["over_floor_p50_ms"] = round(s["p50_ms"] - f["p50_ms"], 3)
        result["over_floor_p99_ms"] = round(s["p99_ms"] - f["p99_ms"], 3)
    return result


def slope_kib(points: list[tuple[int, int]]) -> float | None:
    """Least-squares slope of RSS (bytes) over open streams, in KiB per stream."""
    if len(points) < 3 or points[-1][0] == points[0][0]:
        return None
    xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var / 1024, 1) if var else None


# ---- command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, under a minute")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    parser.add_argument(
        "--phases",
        help=f"comma-separated subset of {','.join(PHASES)} (default: all but agent, messages and concurrency, "
        f"which run only when named; with --plot: {','.join(PLOT_PHASES)})",
    )
    parser.add_argument(
        "--plot",
        nargs="?",
        const=str(PLOT_DIR),
        metavar="DIR",
        help="also write the figures as PNGs into DIR (default docs/bench/); runs the concurrency phase too",
    )
    parser.add_argument(
        "--plot-from", metavar="JSON", help="only draw the figures of an earlier --json report (into --plot's DIR)"
    )
    parser.add_argument("--levels", help="concurrency phase: comma-separated client counts (default 1,2,4,8,16,32)")
    parser.add_argument("--requests", type=int, help="non-streamed requests per side")
    parser.add_argument("--ttft", type=int, help="streamed requests per side for time to first token")
    parser.add_argument("--frames", type=int, help="upstream frames per stream in the CPU phase")
    parser.add_argument("--frame-bytes", type=int, help="target size of one upstream answer frame (bytes)")
    parser.add_argument("--cpu-streams", type=int, help="streams read through the server in the CPU phase")
    parser.add_argument("--streams", type=int, help="concurrent open streams to hold (default 5000)")
    parser.add_argument("--release-streams", type=int, help="streams abandoned in the release phase")
    parser.add_argument("--agent-rounds", type=int, help="agent phase: interleaved rounds of its 4 request kinds")
    parser.add_argument(
        "--messages-rounds", type=int, help="messages phase: interleaved rounds of its 4 request kinds (latency)"
    )
    parser.add_argument("--heartbeat", type=float, help="the server's HEARTBEAT_INTERVAL in seconds (default 1)")
    parser.add_argument("--budget", type=float, help="overall time budget in seconds")
    parser.add_argument("--profile", action="store_true", help="cProfile the offline replay of the CPU phase")
    parser.add_argument(
        "--engine",
        choices=tuple(ENGINES),
        default="curl",
        help="the server's upstream HTTP engine: curl (default: curl_cffi impersonating Chrome, as for perplexity.ai) "
        "or requests (urllib3, for a base URL that is not impersonated)",
    )
    parser.add_argument(
        "--hold-wire",
        choices=("h2", "h1"),
        default="h2",
        help="wire of the light holder in the open-streams phase: TLS + HTTP/2 as perplexity.ai (default), or plain "
        "HTTP/1.1",
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="do not run the stack floor (bench_floor.py, a minimal Flask + requests pass-through) beside the server",
    )
    parser.add_argument(
        "--hold-upstream",
        choices=("light", "fake"),
        default="light",
        help="upstream for the open-streams phase: the light asyncio holder (default) or the fake itself",
    )
    parser.add_argument(
        "--hold-state",
        choices=("answer", "headers"),
        default="answer",
        help="held streams are mid-answer (the first frames of an answer, default) or have only headers so far",
    )
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan(**(QUICK if args.quick else {}))
    for name, attr in (
        ("requests", "requests"),
        ("ttft", "ttft"),
        ("frames", "cpu_frames"),
        ("frame_bytes", "frame_bytes"),
        ("cpu_streams", "cpu_streams"),
        ("streams", "streams"),
        ("release_streams", "release"),
        ("agent_rounds", "agent_rounds"),
        ("messages_rounds", "messages_rounds"),
        ("heartbeat", "heartbeat"),
        ("budget", "budget"),
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, attr, value)
    if not 0 < plan.requests <= 20000 or not 0 < plan.streams <= 20000 or not 0 < plan.cpu_frames <= 10000:
        raise SystemExit("counts out of range (requests/streams <= 20000, frames <= 10000)")
    if not 0 < plan.agent_rounds <= 20000 or not 0 < plan.messages_rounds <= 20000:
        raise SystemExit("counts out of range (agent and messages rounds <= 20000)")
    if args.levels:
        plan.levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    if not plan.levels or not all(0 < n <= 256 for n in plan.levels):
        raise SystemExit("concurrency levels out of range (1 to 256 clients)")
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_from:
        for path in plot(json.loads(Path(args.plot_from).read_text()), Path(args.plot or PLOT_DIR)):
            print(path)
        return 0
    plan = make_plan(args)
    chosen = args.phases or ",".join(PLOT_PHASES if args.plot else DEFAULT_PHASES)
    phases = [p.strip() for p in chosen.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if "concurrency" in phases and args.budget is None:
        plan.budget += 2 * plan.phase_seconds  # the phase's own cap, on top of the default run's
    if (ROOT / ".env").exists():
        print("note: .env exists and the app loads it; settings the bench sets explicitly still win", file=sys.stderr)
    # This process holds one socket per stream; the children raise their own limits (2 per stream + margin).
    nofile = raise_nofile(plan.streams * 2 + 1000)
    if "streams" in phases and nofile < plan.streams + 200:
        print(f"ulimit -n is {nofile}: holding {nofile - 200} streams instead of {plan.streams}", file=sys.stderr)
        plan.streams = max(1, nofile - 200)
    bench = Bench(
        plan,
        phases,
        profile=args.profile,
        hold_upstream=args.hold_upstream,
        hold_state=args.hold_state,
        floor=not args.no_floor,
        engine=args.engine,
        hold_wire=args.hold_wire,
    )
    report: dict[str, Any] = {"machine": machine(), "plan": asdict(plan), "nofile": nofile, "floor": not args.no_floor}
    report["engine"] = args.engine
    report["hold_wire"] = args.hold_wire
    try:
        report["results"] = bench.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        report["results"] = bench.results
    finally:
        bench.close()
    report["elapsed_s"] = round(time.monotonic() - bench.started, 1)
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results = report["results"]
    command = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = sys.stderr if args.json == "-" else sys.stdout  # `--json -`: stdout carries only the JSON
    print(file=out)
    print(f"{command.strip()}  ({report['elapsed_s']} s; {report['machine']['cpus']} CPUs, "
          f"Python {report['machine']['python']}, load {report['machine']['loadavg_start']}; "
          f"server engine {args.engine}, held streams over {args.hold_wire})", file=out)  # fmt: skip
    if set(phases) & set(DEFAULT_PHASES):  # the table has no row of the opt-in phases: their lines come below
        print(table(results, plan.heartbeat), file=out)
    extra = details(results)
    if extra:
        print(extra, file=out)
    profile = ((results.get("cpu") or {}).get("offline_breakdown") or {}).get("profile")
    if profile:
        print(profile, file=out)
    if args.plot:
        for path in plot(report, Path(args.plot)):
            print(f"figure: {path}", file=out)
    if args.json:
        text = json.dumps(report, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
