"""A fake Perplexity web upstream (a real loopback HTTP server, stdlib only) for tests and local runs.

    from perplexity.testing import FakePerplexity, Reply, Fault

    with FakePerplexity(session_token="test-session-token") as fake:
        fake.enqueue(Fault("rate_limit", retry_after=1), Reply(answer="Paris [1].", format="diff"))
        ...  # point the client at fake.url; inspect fake.asks, fake.threads, fake.open_streams

`Reply` scripts one answer stream (formats "text", "markdown", "diff", "workflow", "plaintext");
`Fault` scripts one failure (pre-stream statuses, stalls, resets, malformed or failed frames, ...);
`load_capture_frames` turns a real capture into frames for `Reply(frames=...)`.
`FakePerplexity(tls=True, http2=True)` serves HTTPS with ALPN h2 like perplexity.ai's Cloudflare front
(trust `fake.ca_path`); that mode needs the test requirements (trustme, h2), plain HTTP needs nothing.
Run `python -m perplexity.testing --port 8765` (add `--tls --http2`) to serve one by hand.
"""

from __future__ import annotations

from .captures import load_capture_frames
from .script import FAULT_KINDS, REPLY_FORMATS, Fault, RecordedRequest, Reply, ThreadRecord
from .server import FakePerplexity

__all__ = [
    "FAULT_KINDS",
    "REPLY_FORMATS",
    "FakePerplexity",
    "Fault",
    "RecordedRequest",
    "Reply",
    "ThreadRecord",
    "load_capture_frames",
]
