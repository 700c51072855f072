"""The benchmark's "stack floor": a minimal Flask + requests pass-through to the fake Perplexity upstream.

    python -m gunicorn bench_floor:app --pythonpath scripts --workers 1 --worker-class gevent   # what bench.py runs

scripts/bench.py runs this app beside the real server, under the same gunicorn settings (one gevent worker, the
same worker_connections, the repository's gunicorn.conf.py with its access log) and against the same fake, and
reports it as a third column. The issue's targets (+1 ms p50, +1.5 ms TTFT, 20 us CPU per chunk) may be below what
the fixed stack itself (gunicorn + gevent + Flask + requests) costs; what this app costs over the direct call is
that floor, and what the server costs over this app is our own code.

It does as little as a proxy can: `POST /v1/chat/completions` takes the last message's content as the query, builds
the ask body as scripts/bench.py's `Direct` does (`build_ask_payload` + orjson) and posts it with one keep-alive
`requests.Session` (trust_env off) and the session cookie. Non-streamed, the upstream's whole SSE body is the
response body. Streamed, every upstream read (`iter_content(chunk_size=None)`: one chunk of the upstream's chunked
body) becomes one `chat.completion.chunk`-shaped event whose `delta.content` is that raw chunk, then `[DONE]`.
No validation, no SSE parsing, no answer assembly, no error mapping: it is a floor, not a server.

Configured by the environment gunicorn gets from the bench: PERPLEXITY_BASE_URL (the fake, 127.0.0.1 only) and
PERPLEXITY_SESSION_TOKEN. Nothing touches the network at import.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import requests
from flask import Flask, Response, request

from perplexity.payload import build_ask_payload
from perplexity.types import AskOptions

ASK_PATH = "/rest/sse/perplexity_ask?version=2.18&source=default"  # bench.py's ASK_PATH: keep the two in step
COOKIE = "__Secure-next-auth.session-token"
DONE = b"data: [DONE]\n\n"

BASE_URL = os.environ.get("PERPLEXITY_BASE_URL", "http://127.0.0.1:9").rstrip("/")
if urlsplit(BASE_URL).hostname != "127.0.0.1":  # like the bench itself: loopback only, never a real account
    raise RuntimeError(f"bench_floor only talks to 127.0.0.1, not {BASE_URL!r}")
ASK_URL = BASE_URL + ASK_PATH
HEADERS = {
    "accept": "text/event-stream",
    "content-type": "application/json",
    "cookie": f"{COOKIE}={os.environ.get('PERPLEXITY_SESSION_TOKEN', '')}",
}

SESSION = requests.Session()  # one keep-alive pool for the worker; no connection is opened until a request
SESSION.trust_env = False  # no proxy variables or .netrc lookups per request

app = Flask(__name__)


@app.get("/health")
def health() -> Response:
    return Response(b"ok", mimetype="text/plain")


@app.post("/v1/chat/completions")
def chat() -> Response:
    body = request.get_json()
    query = body["messages"][-1]["content"]
    data = orjson.dumps(build_ask_payload(query, AskOptions(), str(uuid.uuid4())))
    if not body.get("stream"):
        upstream = SESSION.post(ASK_URL, data=data, headers=HEADERS)
        return Response(upstream.content, status=200, mimetype="text/event-stream")
    upstream = SESSION.post(ASK_URL, data=data, headers=HEADERS, stream=True)

    def events() -> Iterator[bytes]:
        try:
            for chunk in upstream.iter_content(chunk_size=None):
                delta = {"choices": [{"index": 0, "delta": {"content": chunk.decode("utf-8", "replace")}}]}
                yield b"data: " + orjson.dumps(delta) + b"\n\n"
            yield DONE
        finally:
            upstream.close()

    return Response(events(), mimetype="text/event-stream")
