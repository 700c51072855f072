"""Server-sent events out: event encoding, the error event that ends a broken stream, noticing a departed client."""

from __future__ import annotations

import select
import sys
from collections.abc import Callable
from typing import Any

import orjson

from .errors import error_payload, to_api_error

__all__ = ["DONE", "PING", "client_watcher", "encode", "error_event"]

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def encode(data: Any, event: str | None = None) -> bytes:
    """One SSE event with compact JSON data."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def error_event(exc: BaseException) -> bytes:
    """The single `data: {"error": ...}` event that ends a broken stream (no [DONE] after it), except at a
    shutdown: the stream was cut short on purpose, and `[DONE]` tells the client the server ended it cleanly."""
    error = to_api_error(exc)
    event = encode(error_payload(error))
    return event + DONE if error.code == "server_shutting_down" else event


def client_watcher(environ: dict[str, Any]) -> Callable[[], bool]:
    """A check whether the client has closed its end, from gunicorn's socket (always False elsewhere).

    A WSGI server notices a vanished client only when a write fails, which after a FIN is the second
    write: polling the socket on each heartbeat tick finds the FIN at the first tick instead. It uses
    poll(2) with POLLRDHUP (Linux), which has no descriptor limit (select(2) fails above 1024 fds) and
    needs no read; elsewhere the check is off.
    """
    sock = environ.get("gunicorn.socket")
    rdhup = getattr(select, "POLLRDHUP", 0)
    if sock is None or not rdhup:
        return lambda: False
    fd = sock.fileno()
    make_poll = _original_poll()
    mask = rdhup | select.POLLHUP | select.POLLERR

    def gone() -> bool:
        poller = make_poll()
        poller.register(fd, mask)
        try:
            return bool(poller.poll(0))
        except OSError:
            return False  # unsure: let the next write decide

    return gone


def _original_poll() -> Callable[[], Any]:
    # gevent's select.poll would park the greenlet; a zero-timeout system poll never blocks.
    if _gevent_active():
        from gevent import monkey

        return monkey.get_original("select", "poll")
    return select.poll


def _gevent_active() -> bool:
    module = sys.modules.get("gevent.monkey")
    return bool(module and module.is_module_patched("socket"))
