"""The gunicorn worker: gevent's, with bounded request-body reads, refused bodies left unread, and JSON errors.

gunicorn's gevent worker as it is, plus three things at the connection level that the app cannot do itself:

- Reading a request body is bounded: `BODY_READ_TIMEOUT` seconds of silence between reads, `BODY_TOTAL_TIMEOUT`
  seconds from the request's headers to the body's end. A body that misses either is refused with a 408 (an
  `APIError`, so `api.edge.errors` shapes it like any other) and the connection is closed.
- A response that starts while the request body is still on the wire (a 401, 413, 415 or 429 refused before the
  view read it) says `Connection: close`, and the connection is closed after it instead of gunicorn draining the
  body to keep it alive, which a slow sender could make last forever. A short lingering close (as nginx does)
  lets a client that is still sending a small body read the answer instead of a reset. `Expect: 100-continue`
  is answered only when the app first reads the body, so a refused client is never invited to send it.
- gunicorn's own answers to requests it cannot parse (400, 414, 431, ...) are the OpenAI error JSON, not HTML.

gunicorn's master imports this module before gevent patches anything: gevent and gunicorn only at the top; the
app's modules are imported in the worker, after the app has loaded.
"""

from __future__ import annotations

import html
import re
import socket
import time
from typing import Any

import gevent
from gunicorn import util
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers import ggevent

from api.config import SETTINGS
from api.core.errors import APIError

__all__ = ["GeventWorker"]

_DEFAULTS = {s.name: s.default for s in SETTINGS}
# Lingering close after a refused body: what a client still sending may push before the connection is closed.
# Enough for an ordinary request to land and its sender to read the answer, too little to hold a slot.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# gunicorn's statuses for requests it cannot parse, as the error codes clients see.
_CODES = {
    400: "invalid_request",
    403: "permission_denied",
    414: "request_line_too_long",
    417: "expectation_failed",
    431: "header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ([^\r\n]*)\r\n")
_HTML_MESSAGE = re.compile(rb"</h1>\s*(.*?)\s*</body>", re.S)


def _unread_on_the_wire(body: Any) -> bool:
    """True while part of the request body has not been received: reading the rest could block."""
    reader = getattr(body, "reader", None)
    if isinstance(reader, LengthReader):
        if reader.length <= 0:
            return False
        with reader.unreader.buf.getbuffer() as buffered:  # read ahead from the socket already
            return reader.length > buffered.nbytes
    # A chunked body's end is only known once parsed; any other reader is not one gunicorn gives requests.
    return not (isinstance(reader, ChunkedReader) and reader.parser is None)


class _TimedBody:
    """`wsgi.input` whose reads are bounded in time, and that knows whether the body was left on the wire."""

    __slots__ = ("_raw", "_req", "_sock", "_read_timeout", "_total_timeout", "_deadline", "_continue", "left_unread")

    def __init__(self, req: Any, sock: socket.socket, read_timeout: float, total_timeout: float) -> None:
        self._raw, self._req, self._sock = req.body, req, sock
        self._read_timeout, self._total_timeout = read_timeout, total_timeout
        self._deadline = time.monotonic() + total_timeout
        # gunicorn would send "100 Continue" before the app runs; here it waits for the first read.
        self._continue = bool(getattr(req, "_expected_100_continue", False))
        req._expected_100_continue = False
        self.left_unread = False  # the response started with the body still on the wire, unread by choice

    @property
    def failed(self) -> bool:
        """gunicorn's flag: reading the body failed, so the connection is not reused (its parser reads it)."""
        return self._raw.failed is True

    def read(self, size: int | None = None) -> bytes:
        return self._timed(self._raw.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._timed(self._raw.readline, size)

    def readlines(self, size: int | None = None) -> list[bytes]:
        return self._timed(self._raw.readlines, size)

    def __iter__(self) -> _TimedBody:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def response_starts(self) -> None:
        """Called as the response starts: a body still on the wire is left there and the connection closed."""
        if self._raw.failed:  # a read failed or timed out: the connection cannot carry another request
            self._req.force_close()
        elif _unread_on_the_wire(self._raw):
            self.left_unread = True
            self._req.force_close()  # gunicorn then answers `Connection: close` and never drains the body

    def _timed(self, method: Any, size: Any) -> Any:
        if not _unread_on_the_wire(self._raw):  # all of it is in memory: nothing to wait for
            return method(size)
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._fail(f"The request body was not complete after {self._total_timeout:g} s (BODY_TOTAL_TIMEOUT).")
        prior = self._sock.gettimeout()
        # The socket timeout bounds each wait for data; the gevent timer bounds them all together.
        self._sock.settimeout(min(self._read_timeout, remaining))
        timer = gevent.Timeout(remaining)
        timer.start()
        try:
            if self._continue:
                self._continue = False
                self._sock.sendall(_CONTINUE)
            return method(size)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._fail(f"The request body was not complete after {self._total_timeout:g} s (BODY_TOTAL_TIMEOUT).")
        except TimeoutError:
            self._fail(f"The request body stalled: no data for {self._read_timeout:g} s (BODY_READ_TIMEOUT).")
        finally:
            timer.close()
            try:
                self._sock.settimeout(prior)
            except OSError:
                pass

    def _fail(self, message: str) -> None:
        # Where the next request would start is unknown now: gunicorn closes a connection whose body failed.
        self._raw.failed = True
        raise APIError(408, message, "invalid_request_error", "request_timeout") from None


def _guard(app: Any) -> Any:
    """The WSGI app, told nothing; its responses tell the timed body when they start."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        body = environ.get("wsgi.input")
        if not isinstance(body, _TimedBody):  # HTTP/2 streams, or a request with no body object
            return app(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            body.response_starts()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return guarded


def _linger(sock: socket.socket) -> None:
    """Close like nginx's lingering close: end our side, read and drop what the client still sends, briefly."""
    try:
        sock.shutdown(socket.SHUT_WR)  # the client sees the whole answer and its end now
        left = _LINGER_BYTES
        with gevent.Timeout(_LINGER_SECONDS, False):
            while left > 0:
                data = sock.recv(min(65536, left))
                if not data:
                    break
                left -= len(data)
    except OSError:
        pass


class _Capture:
    """A stand-in socket that keeps what gunicorn writes, so its HTML error can be rewritten as JSON."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0  # so gunicorn writes straight away, without changing blocking modes

    def sendall(self, data: bytes) -> None:
        self.data += data


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker with bounded body reads, unread refused bodies and OpenAI-shaped JSON errors."""

    def load_wsgi(self) -> None:
        super().load_wsgi()
        config = getattr(self.wsgi, "config", None) or _DEFAULTS  # the Flask app's checked settings
        self.body_read_timeout = float(config.get("BODY_READ_TIMEOUT", _DEFAULTS["BODY_READ_TIMEOUT"]))
        self.body_total_timeout = float(config.get("BODY_TOTAL_TIMEOUT", _DEFAULTS["BODY_TOTAL_TIMEOUT"]))
        self.wsgi = _guard(self.wsgi)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> Any:
        body = None
        if req.body is not None:
            body = req.body = _TimedBody(req, sock, self.body_read_timeout, self.body_total_timeout)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except StopIteration:  # gunicorn closes the connection after this response
            if body is not None and body.left_unread:
                _linger(sock)
            raise

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        capture = _Capture()
        super().handle_error(req, capture, addr, exc)  # gunicorn's status, log line and access line, unchanged
        found = _STATUS_LINE.match(capture.data)
        status, reason = (int(found.group(1)), found.group(2).decode("latin-1")) if found else (500, "Error")
        shown = _HTML_MESSAGE.search(capture.data)
        message = html.unescape(shown.group(1).decode("latin-1")) if shown else ""
        if status >= 500 or not message:
            message = "The server failed to handle the request; see its log." if status >= 500 else reason
        try:
            util.write_nonblock(client, _json_error(status, reason, message, req, exc))
        except Exception:  # noqa: BLE001 - the client may be gone; gunicorn ignores this too
            self.log.debug("Failed to send error message.")


def _json_error(status: int, reason: str, message: str, req: Any, exc: BaseException) -> bytes:
    """A complete HTTP/1.1 response carrying the error in the request family's shape."""
    import orjson

    from .errors import anthropic_error, error_payload

    error = APIError(status, message, "invalid_request_error" if status < 500 else "server_error", _CODES.get(status))
    path = getattr(req or getattr(exc, "req", None), "path", None) or ""
    if path.startswith("/v1/messages"):
        status, payload = anthropic_error(error)
    else:
        payload = error_payload(error)
    body = orjson.dumps(payload)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body
