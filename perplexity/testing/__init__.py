"""A fake Perplexity web upstream (a real loopback HTTP server, stdlib only) for tests and local runs.

    from perplexity.testing import FakePerplexity, Reply, Fault

    with FakePerplexity(session_token="test-session-token") as fake:
        fake.enqueue(Fault("rate_limit", retry_after=1), Reply(answer="Paris [1].", format="diff"))
        ...  # point the client at fake.url; inspect fake.asks, fake.threads, fake.open_streams

`Reply` scripts one answer stream (formats "text", "markdown", "diff", "workflow", "plaintext");
`Fault` scripts one failure (pre-stream statuses, stalls, resets, malformed or failed frames, ...);
`load_capture_frames` turns a real capture into frames for `Reply(frames=...)`.
`fake.responder = ProtocolModel()` answers unscripted asks like a model following the server's tool and
JSON-output prompt protocol; `tool_call_text`, `tool_calls_text`, `false_positive_text` and `json_text`
script the answer texts models emit, and `example_instance` makes an instance of a JSON Schema (see `.agents`).
`FakePerplexity(tls=True, http2=True)` serves HTTPS with ALPN h2 like perplexity.ai's Cloudflare front
(trust `fake.ca_path`); that mode needs the test requirements (trustme, h2), plain HTTP needs nothing.
Run `python -m perplexity.testing --port 8765` (add `--tls --http2`) to serve one by hand.
"""

from __future__ import annotations

from .agents import (
    CALL_FORMS,
    ProtocolModel,
    example_instance,
    false_positive_text,
    json_text,
    tool_call_text,
    tool_calls_text,
)
from .captures import load_capture_frames
from .script import FAULT_KINDS, REPLY_FORMATS, Fault, RecordedRequest, Reply, ThreadRecord
from .server import FakePerplexity

__all__ = [
    "CALL_FORMS",
    "FAULT_KINDS",
    "REPLY_FORMATS",
    "FakePerplexity",
    "Fault",
    "ProtocolModel",
    "RecordedRequest",
    "Reply",
    "ThreadRecord",
    "example_instance",
    "false_positive_text",
    "json_text",
    "load_capture_frames",
    "tool_call_text",
    "tool_calls_text",
]
