"""What a test scripts into the fake upstream (replies and faults) and what the fake records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAULT_KINDS",
    "PRE_STREAM_FAULTS",
    "REPLY_FORMATS",
    "Fault",
    "RecordedRequest",
    "Reply",
    "ThreadRecord",
]

REPLY_FORMATS = ("text", "markdown", "diff", "workflow", "plaintext")

# Faults answered with an HTTP error (or HTML) before any SSE byte.
PRE_STREAM_FAULTS = frozenset(
    {
        "cloudflare",
        "cloudflare_503",
        "auth",
        "auth_401",
        "rate_limit",
        "server_error",
        "html_200",
        "thread_gone",
    }
)
# Faults that start a normal stream and break it (or delay it).
STREAM_FAULTS = frozenset(
    {
        "slow_first_byte",
        "stall",
        "reset",
        "malformed",
        "failed",
        "rate_limited_in_stream",
        "truncated",
        "eof",
    }
)
FAULT_KINDS = PRE_STREAM_FAULTS | STREAM_FAULTS


@dataclass
class Reply:
    """One scripted answer stream; every field left as None is generated from the query."""

    answer: str | None = None
    sources: list[dict[str, Any]] | None = None
    format: str = "markdown"
    chunk_size: int = 12
    frame_delay: float = 0.0
    # Delay after the 200 headers and before the first frame (heartbeats may fill it).
    first_byte_delay: float = 0.0
    heartbeat_every: float | None = None
    reasoning: bool = False
    clarifying: bool = False
    related: list[str] | None = None
    title: str | None = None
    media: list[dict[str, Any]] | None = None
    revise_final: str | None = None
    frames: list[dict[str, Any]] | None = None
    research: bool = False
    send_text: bool | None = None
    # The model the frames report as answering (`display_model`) when Perplexity serves another than the one asked
    # (a fallback, Best's pick); None: the one asked. Reported from frame `display_model_from` on (0: from the
    # first, as Perplexity does); the frames before it report the one asked. `user_selected_model` stays the asked.
    display_model: str | None = None
    display_model_from: int = 0

    def __post_init__(self) -> None:
        if self.format not in REPLY_FORMATS:
            raise ValueError(f"unknown reply format {self.format!r}; expected one of {REPLY_FORMATS}")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")


@dataclass
class Fault:
    """One scripted failure; it applies to the next `times` asks (or calls of a path)."""

    kind: str
    status: int | None = None
    retry_after: float | None = 1
    delay: float = 1.0
    after_frames: int = 2
    times: int = 1
    error_code: str | None = None
    message: str | None = None
    # The answer streamed around an in-stream fault; None means the fake's default reply.
    reply: Reply | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.times < 1:
            raise ValueError("times must be at least 1")


@dataclass
class RecordedRequest:
    """One request as the fake received it; `thread` is the context_uuid an ask went to, `http_version` "1.1" or "2".

    `account` is the label of the account whose session token the cookie carries (current, rotated or
    expired alike), or None when there is no cookie or the fake never issued its value.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any | None
    body: bytes = field(repr=False)
    thread: str | None = None
    http_version: str = "1.1"
    account: str | None = None


@dataclass
class ThreadRecord:
    """A thread the fake created: its entries (backend_uuids, oldest first), secrets and owner.

    Only `account` (the label of the account that created it) can follow it up, reconnect to, stop, export,
    list or delete it; for other accounts it answers 403 `{}`, as for an unknown thread.
    """

    context_uuid: str
    read_write_token: str = field(repr=False)
    slug: str
    title: str
    frontend_context_uuid: str | None = None
    entries: list[str] = field(default_factory=list)
    # The query_str of each ask in this thread, oldest first (what `FakePerplexity.responder` sees).
    queries: list[str] = field(default_factory=list, repr=False)
    # backend_uuid -> the COMPLETED frame of that entry, answered by reconnect.
    final_frames: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    account: str | None = None
