"""Bytes on the wire for the fake upstream: SSE events, chunked bodies, and noticing a client that left."""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, BinaryIO

__all__ = [
    "END_OF_STREAM",
    "HEARTBEAT",
    "ChunkedStream",
    "ClientGone",
    "ServerStopping",
    "client_gone",
    "encode_event",
    "reset_socket",
]

# Real streams use CRLF line endings and end with this event; there is no `data: [DONE]` (protocol 3.1).
END_OF_STREAM = b"event: end_of_stream\r\ndata: {}\r\n\r\n"
HEARTBEAT = b": ping\r\n\r\n"
# How often an idle stream looks at its socket, so a departed client is noticed within ~20 ms.
_POLL_SECONDS = 0.02


class ClientGone(Exception):
    """The client closed (or reset) its end of the connection."""


class ServerStopping(Exception):
    """The fake is shutting down or was reset; the response is abandoned."""


def encode_event(data: dict[str, Any] | str, event: str = "message") -> bytes:
    """Encode one SSE event: `event:` line, one-line `data:` line, blank line, all CRLF."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\r\ndata: {payload}\r\n\r\n".encode()


def client_gone(sock: socket.socket, timeout: float = 0.0) -> bool:
    """Return True if the peer closed the connection (readable, and a peek reads EOF)."""
    return _poll(sock, timeout) == "gone"


def _poll(sock: socket.socket, timeout: float) -> str:
    """Wait up to `timeout` for the socket to become readable: "idle", "data" or "gone"."""
    try:
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return "idle"
        return "gone" if sock.recv(1, socket.MSG_PEEK) == b"" else "data"
    except (BlockingIOError, InterruptedError, TimeoutError):
        return "idle"
    except (OSError, ValueError):  # reset by peer, or the socket is already closed
        return "gone"


def reset_socket(sock: socket.socket) -> None:
    """Make the next close send a TCP RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class ChunkedStream:
    """Writes a `Transfer-Encoding: chunked` body and waits without missing a client that leaves."""

    def __init__(self, sock: socket.socket, wfile: BinaryIO, cancelled: Callable[[], bool]) -> None:
        self.sock = sock
        self.wfile = wfile
        # True once the fake stops or is reset: the response is then abandoned.
        self.cancelled = cancelled

    def send(self, data: bytes) -> None:
        """Send `data` as one chunk; raise ClientGone if the client is no longer there."""
        self._check()
        self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        """Send the terminating zero-length chunk."""
        self._write(b"0\r\n\r\n")

    def wait(self, seconds: float, heartbeat_every: float | None = None) -> None:
        """Sleep `seconds`, sending `: ping` comments every `heartbeat_every` seconds if set."""
        deadline = time.monotonic() + seconds
        next_beat = time.monotonic() + heartbeat_every if heartbeat_every else None
        while (remaining := deadline - time.monotonic()) > 0:
            self._check()
            step = min(remaining, _POLL_SECONDS)
            if next_beat is not None:
                step = max(0.0, min(step, next_beat - time.monotonic()))
            state = _poll(self.sock, step)
            if state == "gone":
                raise ClientGone
            if state == "data":  # a pipelined request: select would return at once, so sleep instead
                time.sleep(step)
            if heartbeat_every and next_beat is not None and time.monotonic() >= next_beat:
                self.send(HEARTBEAT)
                next_beat += heartbeat_every

    def _check(self) -> None:
        if self.cancelled():
            raise ServerStopping
        if client_gone(self.sock):
            raise ClientGone

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (OSError, ValueError) as exc:
            raise ClientGone from exc
