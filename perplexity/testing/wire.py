"""Bytes on the wire for the fake upstream: SSE events, chunked bodies, and noticing a client that left."""

from __future__ import annotations

import json
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any, BinaryIO

__all__ = [
    "END_OF_STREAM",
    "HEARTBEAT",
    "BodyStream",
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
POLL_SECONDS = 0.02
# The peer's FIN shows as POLLRDHUP even when unread bytes (a TLS close_notify) sit before it.
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


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
    if isinstance(sock, ssl.SSLSocket):
        return _poll_tls(sock, timeout)
    try:
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return "idle"
        return "gone" if sock.recv(1, socket.MSG_PEEK) == b"" else "data"
    except (BlockingIOError, InterruptedError, TimeoutError):
        return "idle"
    except (OSError, ValueError):  # reset by peer, or the socket is already closed
        return "gone"


def _poll_tls(sock: ssl.SSLSocket, timeout: float) -> str:
    """Like `_poll` for TLS, where a peek would see encrypted records, not EOF: ask the kernel about the FIN."""
    try:
        if sock.pending():
            return "data"
        poller = select.poll()
        poller.register(sock, select.POLLIN | _HANGUP)
        events = poller.poll(int(timeout * 1000))
    except (OSError, ValueError):  # the socket is already closed
        return "gone"
    if not events:
        return "idle"
    return "gone" if events[0][1] & _HANGUP else "data"


def reset_socket(sock: socket.socket) -> None:
    """Make the next close send a TCP RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class BodyStream:
    """A response body being written: `send` pieces, `wait` between them, `end` it.

    `send` and `wait` raise ClientGone once the client has left and ServerStopping once `cancelled()` is true;
    subclasses say how bytes go out (`send`, `end`) and how to idle while watching for the client (`_idle`).
    """

    def __init__(self, cancelled: Callable[[], bool]) -> None:
        # True once the fake stops or is reset: the response is then abandoned.
        self.cancelled = cancelled

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError

    def wait(self, seconds: float, heartbeat_every: float | None = None) -> None:
        """Sleep `seconds`, sending `: ping` comments every `heartbeat_every` seconds if set."""
        deadline = time.monotonic() + seconds
        next_beat = time.monotonic() + heartbeat_every if heartbeat_every else None
        while (remaining := deadline - time.monotonic()) > 0:
            self._check()
            step = min(remaining, POLL_SECONDS)
            if next_beat is not None:
                step = max(0.0, min(step, next_beat - time.monotonic()))
            self._idle(step)
            if heartbeat_every and next_beat is not None and time.monotonic() >= next_beat:
                self.send(HEARTBEAT)
                next_beat += heartbeat_every

    def _check(self) -> None:
        if self.cancelled():
            raise ServerStopping
        if self._gone():
            raise ClientGone

    def _gone(self) -> bool:
        raise NotImplementedError

    def _idle(self, seconds: float) -> None:
        """Wait `seconds`, raising ClientGone as soon as the client is seen leaving."""
        raise NotImplementedError


class ChunkedStream(BodyStream):
    """Writes a `Transfer-Encoding: chunked` body and waits without missing a client that leaves."""

    def __init__(self, sock: socket.socket, wfile: BinaryIO, cancelled: Callable[[], bool]) -> None:
        super().__init__(cancelled)
        self.sock = sock
        self.wfile = wfile

    def send(self, data: bytes) -> None:
        """Send `data` as one chunk; raise ClientGone if the client is no longer there."""
        self._check()
        self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        """Send the terminating zero-length chunk."""
        self._write(b"0\r\n\r\n")

    def _gone(self) -> bool:
        return client_gone(self.sock)

    def _idle(self, seconds: float) -> None:
        state = _poll(self.sock, seconds)
        if state == "gone":
            raise ClientGone
        if state == "data":  # a pipelined request: select would return at once, so sleep instead
            time.sleep(seconds)

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (OSError, ValueError) as exc:
            raise ClientGone from exc
