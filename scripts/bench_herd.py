"""Many concurrent streamed chat requests from one thread: raw non-blocking sockets and one selector.

Each connection sends one `POST /v1/chat/completions` with `stream: true`, waits for the status line, the headers
and the first body bytes (then it counts as answered), and keeps reading whatever follows (heartbeats) so the
server never blocks on a full socket buffer. `abort()` leaves with a FIN or a TCP RST (SO_LINGER 0).
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

from bench_procs import HOST

__all__ = ["Herd"]

_CONNECTING, _WAITING, _HELD, _DONE = range(4)


class _Conn:
    __slots__ = ("sock", "state", "buf", "opened", "answered", "last_rx", "rx")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = _CONNECTING
        self.buf = b""
        self.opened = time.monotonic()
        self.answered = 0.0
        self.last_rx = 0.0
        self.rx = 0


class Herd:
    """A set of streamed requests held open against one server; see the module docstring."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.sel = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        self.answered = 0  # status 200 + headers + first body bytes received
        self.failed = 0  # refused, reset or non-200 before being answered
        self.ended = 0  # answered, then closed by the server while we still held it
        self.errors: Counter[str] = Counter()
        self.first_error = ""

    @property
    def in_flight(self) -> int:
        """Connections started but neither answered nor failed yet."""
        return len(self.conns) - self.answered - self.failed

    @property
    def held(self) -> int:
        """Connections answered and still open."""
        return self.answered - self.ended

    def open(
        self,
        count: int,
        *,
        ramp: int,
        deadline: float,
        on_progress: Callable[[Herd], None] | None = None,
    ) -> None:
        """Start `count` streams, at most `ramp` unanswered at a time, until all are answered or `deadline`."""
        while time.monotonic() < deadline and self.answered + self.failed < count:
            while len(self.conns) < count and self.in_flight < ramp:
                self._connect()
            self.poll(0.02)
            if on_progress is not None:
                on_progress(self)

    def poll(self, timeout: float) -> None:
        """Handle whatever is ready within `timeout` seconds."""
        for key, mask in self.sel.select(timeout):
            conn: _Conn = key.data
            if conn.state == _CONNECTING and mask & selectors.EVENT_WRITE:
                self._send(conn)
            elif mask & selectors.EVENT_READ:
                self._read(conn)

    def pump(self, seconds: float) -> None:
        """Keep reading for `seconds` (heartbeats arrive; closed streams are noticed)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.poll(min(left, 0.05))

    def alive_since(self, since: float) -> int:
        """Held connections that received at least one byte after `since` (monotonic time)."""
        return sum(1 for c in self.conns if c.state == _HELD and c.last_rx >= since)

    def abort(self, *, rst: bool) -> int:
        """Close every open connection, with a RST if `rst` else a FIN; return how many were closed."""
        closed = 0
        linger = struct.pack("ii", 1, 0)
        for conn in self.conns:
            if conn.state == _DONE:
                continue
            try:
                if rst:
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.sel.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass
            conn.sock.close()
            conn.state = _DONE
            closed += 1
        return closed

    def close(self) -> None:
        """Close everything (FIN) and the selector."""
        self.abort(rst=False)
        self.sel.close()

    # ---- per connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn = _Conn(sock)
        self.conns.append(conn)
        code = sock.connect_ex((HOST, self.port))
        if code not in (0, errno.EINPROGRESS):
            self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
            return
        self.sel.register(sock, selectors.EVENT_WRITE, conn)

    def _send(self, conn: _Conn) -> None:
        code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
            return
        try:
            conn.sock.sendall(self.request)  # a few hundred bytes: fits the empty send buffer at once
        except OSError as exc:
            self._fail(conn, f"send: {exc.__class__.__name__}")
            return
        conn.state = _WAITING
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data = b""
            reason = f"recv: {exc.__class__.__name__}"
        else:
            reason = "closed by server"
        now = time.monotonic()
        if not data:
            if conn.state == _HELD:
                self.ended += 1
                self._finish(conn)
            else:
                self._fail(conn, reason)
            return
        conn.last_rx = now
        conn.rx += len(data)
        if conn.state != _WAITING:
            return
        conn.buf += data
        head, sep, body = conn.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") else b"?"
        if status != b"200":
            self._fail(conn, f"HTTP {status.decode(errors='replace')}", detail=conn.buf[:600])
            return
        if body:
            conn.state = _HELD
            conn.answered = now
            conn.buf = b""
            self.answered += 1

    def _fail(self, conn: _Conn, reason: str, detail: bytes = b"") -> None:
        self.failed += 1
        self.errors[reason] += 1
        if not self.first_error:
            self.first_error = f"{reason} {detail.decode(errors='replace')}".strip()
        self._finish(conn)

    def _finish(self, conn: _Conn) -> None:
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.state = _DONE
