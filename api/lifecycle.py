"""Graceful shutdown of a worker: draining starts at SIGTERM, and streams still open at the deadline are ended
with their family's closing event instead of a bare TCP close.

gunicorn stops accepting at SIGTERM and waits up to `graceful_timeout` for the open requests, then kills them.
`gunicorn.conf.py` calls `begin_drain` from the worker's SIGTERM handler with a deadline a little shorter than
that; each streaming response registers the greenlet that writes it (`api.steps`), and at the deadline each one
gets `SHUTTING_DOWN` raised where it waits (an upstream read, a heartbeat tick), which its stream turns into the
family's error event (`data: {"error": ...}` + `[DONE]`, `response.failed`, `event: error`). Readiness reports
503 from the first moment of the drain, so a load balancer stops routing here.

Standard library and gevent only (imported lazily): the worker's signal handler runs this before Flask is hit.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from .core.errors import APIError

__all__ = ["SHUTTING_DOWN", "begin_drain", "draining", "register_stream", "unregister_stream"]

log = logging.getLogger(__name__)

SHUTTING_DOWN = APIError(
    503,
    "The server is shutting down; retry the request.",
    type="server_error",
    code="server_shutting_down",
    headers={"retry-after": "1"},
)

_lock = threading.Lock()
_streams: set[Any] = set()  # the greenlets writing open streams
_drain_started: float | None = None


def draining() -> bool:
    """True once the worker has been asked to stop."""
    return _drain_started is not None


def register_stream(writer: Any) -> None:
    """Track the greenlet writing a stream, so the drain can end it at the deadline."""
    with _lock:
        _streams.add(writer)


def unregister_stream(writer: Any) -> None:
    """The stream ended by itself."""
    with _lock:
        _streams.discard(writer)


def begin_drain(grace: float) -> None:
    """Start draining (idempotent): after `grace` seconds, end every stream still open."""
    global _drain_started
    with _lock:
        if _drain_started is not None:
            return
        _drain_started = time.monotonic()
    import gevent  # only ever called in a gevent worker (from its SIGTERM handler: no logging here)

    gevent.spawn(log.info, "draining: open streams get %.1fs to finish", grace)
    gevent.spawn_later(max(0.0, grace), _end_streams)


def _end_streams() -> None:
    with _lock:
        writers = list(_streams)
    if writers:
        log.warning("drain deadline: ending %d open stream(s) with a shutdown event", len(writers))
    for writer in writers:
        # Raised where the stream's greenlet waits; its own error path writes the closing event.
        writer.kill(replace(SHUTTING_DOWN), block=False)


def reset() -> None:
    """Back to serving (tests in one process)."""
    global _drain_started
    with _lock:
        _drain_started = None
        _streams.clear()
