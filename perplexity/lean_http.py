"""A lean HTTP/1.1 transport adapter for `requests`: pooled keep-alive sockets, responses parsed by llhttp.

`requests.adapters.HTTPAdapter` goes through urllib3 and `http.client`: about 1 ms of CPU per ask on the
benchmark machine (header parsing with the `email` package, a `poll()` on every pooled connection before
reuse, several layers of response objects), and several KB of objects per open stream. This adapter
plugs into the same `requests` API (a `BaseAdapter`: a `PreparedRequest` in, a `requests.Response` out)
and does only what the Perplexity client needs: HTTP/1.1 over plain TCP or TLS, keep-alive pooling,
chunked, Content-Length and close-delimited bodies, gzip/deflate bodies, and connect/read timeouts.
Response framing and headers are parsed by `httptools` (Node.js's llhttp), not by hand.

Anything else (a proxy, a client certificate, a streamed request body, HEAD) is sent through the stock
`HTTPAdapter`, so the behaviour of `requests` is kept where this adapter does not apply.

Exceptions are `requests`' own, as `HTTPAdapter` raises them: `ConnectTimeout`, `ConnectionError`
(wrapping the `OSError`), `SSLError`, `ReadTimeout` before the headers; while the body is read, a timeout
is a `TimeoutError` and a broken body a `ChunkedEncodingError` or `ContentDecodingError`.

A pooled connection the server has closed in the meantime is noticed when the request gets no byte of
answer (EOF, reset or broken pipe): the request is then sent once more on a new connection, since the
server cannot have processed it. This is what browsers do, and it costs nothing on the common path,
where urllib3 polls every pooled socket before reusing it.
"""

from __future__ import annotations

import socket
import ssl
import zlib
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any
from urllib.parse import urlsplit

import httptools
import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.structures import CaseInsensitiveDict

__all__ = ["LeanBody", "LeanHTTPAdapter"]

_RECV_SIZE = 64 * 1024
_MAX_HEAD_BYTES = 256 * 1024  # a status line and headers larger than this are refused
_DEFAULT_PORTS = {"http": 80, "https": 443}
_STALE_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_BODYLESS_STATUSES = frozenset({204, 304})


class _StaleConnection(Exception):
    """A reused connection ended before any byte of the answer: the server closed it while it was idle."""


class _Connection:
    """One keep-alive socket to one origin."""

    __slots__ = ("key", "sock")

    def __init__(self, key: tuple[str, str, int], sock: socket.socket) -> None:
        self.key = key
        self.sock = sock

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Decoder:
    """gzip or deflate bodies (Perplexity's client asks for both); deflate with or without its zlib header."""

    __slots__ = ("_first", "_obj", "_raw_deflate")

    def __init__(self, encoding: str) -> None:
        self._raw_deflate = encoding == "deflate"
        self._first = self._raw_deflate
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)

    def decode(self, data: bytes) -> bytes:
        try:
            return self._obj.decompress(data)
        except zlib.error as exc:
            if not self._first:
                raise requests.exceptions.ContentDecodingError(f"bad compressed body: {exc}") from exc
            # Many servers send "deflate" without the zlib header (raw DEFLATE), as urllib3 allows.
            self._first = False
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.decode(data)
        finally:
            self._first = False

    def flush(self) -> bytes:
        return self._obj.flush()


class LeanBody:
    """The body of one response (`requests.Response.raw`): read from the socket as it arrives.

    It is also the llhttp parser's callback object, so parsing adds no indirection. When the body has
    been read to its end on a reusable connection, the connection goes back to the adapter's pool.
    """

    def __init__(self, adapter: LeanHTTPAdapter, conn: _Connection) -> None:
        self._adapter = adapter
        self._conn: _Connection | None = conn
        self._parser = httptools.HttpResponseParser(self)
        self._pending: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._headers_done = False
        self._done = False
        self._reusable = True
        self._closed = False
        self._decoder: _Decoder | None = None
        self._framed = True
        self._error: Exception | None = None
        self.read_timeout: float | None = None
        self.head_bytes = 0  # bytes of the answer received so far while reading its head
        self.status = 0
        self.reason = ""
        self.version = 11
        self.set_cookies: list[str] = []
        self.headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()

    # ---- llhttp callbacks ----------------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer after a chunked body: nothing here needs one
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._headers.clear()  # 100 Continue and friends: the real answer follows
            return
        self.status = status
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._pending.append(body)

    def on_message_complete(self) -> None:
        if self._headers_done:
            self._done = True

    # ---- reading -------------------------------------------------------------------------------------

    def _recv(self) -> bytes:
        assert self._conn is not None
        return self._conn.sock.recv(_RECV_SIZE)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._done:  # bytes after a complete answer: the connection is in no known state
                self._reusable = False
            elif self._headers_done:  # a broken body: reported once the body read reaches it
                self._error = exc
            else:
                raise requests.exceptions.ConnectionError(f"malformed HTTP response: {exc}") from exc

    def read_head(self, *, reused: bool) -> None:
        """Read until the status line and headers are in (body bytes that came along stay pending)."""
        received = 0
        while not self._headers_done:
            data = self._recv()
            if not data:
                if reused and not received:
                    raise _StaleConnection
                raise requests.exceptions.ConnectionError("the server closed the connection without answering")
            received += len(data)
            self.head_bytes = received
            if received > _MAX_HEAD_BYTES:
                raise requests.exceptions.ConnectionError("the response head is larger than 256 KiB")
            self._feed(data)
        self._take_headers()

    def _take_headers(self) -> None:
        headers = self.headers
        connection = ""
        transfer = length = None
        for name, value in self._headers:
            lower = name.lower()
            if lower == "set-cookie":
                self.set_cookies.append(value)
            elif lower == "connection":
                connection = value.lower()
            elif lower == "transfer-encoding":
                transfer = value
            elif lower == "content-length":
                length = value
            if name in headers:
                headers[name] = f"{headers[name]}, {value}"  # as urllib3 joins repeated headers
            else:
                headers[name] = value
        self._headers = []
        major, minor = self._parser.get_http_version().split(".")
        self.version = int(major) * 10 + int(minor)
        keep_alive = "keep-alive" in connection if self.version < 11 else "close" not in connection
        bodyless = self.status in _BODYLESS_STATUSES
        self._framed = bodyless or transfer is not None or length is not None
        self._reusable = self._reusable and keep_alive and self._framed
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate") and not bodyless:
            self._decoder = _Decoder("deflate" if encoding == "deflate" else "gzip")
        elif encoding not in ("", "identity"):
            raise requests.exceptions.ContentDecodingError(f"unsupported Content-Encoding {encoding!r}")
        if bodyless or length == "0":
            self._done = True
        if self._done:
            self._finish()

    def iter_chunks(self, next_tick: Callable[[], float] | None = None) -> Iterator[bytes]:
        """Body pieces as they arrive, content-encoding removed: one per HTTP chunk or received segment.

        With `next_tick` (seconds until the caller wants to act, counted by the caller), an empty piece is
        yielded when that time comes with no byte in, so the caller can act during a silence (send a
        heartbeat, check its client) without a second greenlet; the read timeout still counts from the
        last byte received. A socket timeout leaves the connection in a
        known state here (nothing is buffered above the socket), which a `BufferedReader` would not.
        """
        decoder = self._decoder
        pending = self._pending
        read_timeout = self.read_timeout
        last = monotonic()
        while True:
            while pending:
                # One piece per HTTP chunk (one Perplexity event each); `buffered` tells the caller more
                # are already here, so it can batch its output.
                piece = pending.pop(0)
                if decoder is not None:
                    piece = decoder.decode(piece)
                if piece:
                    yield piece
            if self._error is not None:
                self._finish()
                raise requests.exceptions.ChunkedEncodingError(f"malformed HTTP body: {self._error}")
            if self._done or self._closed:
                if decoder is not None and self._done and not self._closed:
                    tail = decoder.flush()
                    if tail:
                        yield tail
                self._finish()
                return
            if next_tick is None:
                data = self._recv()
            else:
                wait = next_tick()
                if read_timeout is not None:
                    left = read_timeout - (monotonic() - last)
                    if left <= 0:
                        raise TimeoutError("no byte within the read timeout")
                    wait = min(wait, left)
                if wait <= 0:
                    yield b""
                    continue
                assert self._conn is not None
                self._conn.sock.settimeout(wait)
                try:
                    data = self._recv()
                except TimeoutError:
                    if self._closed:
                        continue
                    if read_timeout is not None and monotonic() - last >= read_timeout - 0.001:
                        raise
                    yield b""
                    continue
                last = monotonic()
            if self._closed:  # shut down by another greenlet while this one waited
                self._finish()
                return
            if not data:
                if not self._framed:  # close-delimited: the end of the connection is the end of the body
                    self._done = True
                    self._reusable = False
                    continue
                raise requests.exceptions.ChunkedEncodingError("the connection closed before the body ended")
            self._feed(data)

    @property
    def buffered(self) -> bool:
        """True when body bytes already received are waiting to be yielded."""
        return bool(self._pending)

    def _finish(self) -> None:
        """Give the connection back to the pool (a complete body on a reusable connection) or close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._reusable and not self._closed:
            self._adapter._checkin(conn)
        else:
            conn.close()

    # ---- the urllib3-like surface requests.Response uses ------------------------------------------------

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        return self.iter_chunks()

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        return b"".join(self.iter_chunks())

    def release_conn(self) -> None:
        """Nothing to do: the connection returns to the pool when the body ends."""

    def shutdown(self) -> None:
        """Unblock a read in another greenlet: that read then ends and the connection is closed."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Close a body not read to its end (its connection is dropped, not pooled). Idempotent."""
        if self._done:
            self._finish()
            return
        self._closed = True
        self._finish()

    @property
    def closed(self) -> bool:
        return self._conn is None


class LeanHTTPAdapter(BaseAdapter):
    """A `requests` transport adapter for HTTP/1.1 with keep-alive pooling; falls back to `HTTPAdapter`."""

    def __init__(self, *, pool_maxsize: int = 64, fallback: HTTPAdapter | None = None) -> None:
        super().__init__()
        self.pool_maxsize = pool_maxsize
        self.fallback = fallback or HTTPAdapter(pool_maxsize=pool_maxsize, max_retries=0)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._contexts: dict[Any, ssl.SSLContext] = {}
        self.connections_opened = 0
        self.requests_sent = 0

    # ---- BaseAdapter ------------------------------------------------------------------------------------

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        body = request.body
        if (
            cert
            or any(proxies.values() if proxies else ())
            or request.method == "HEAD"
            or not (body is None or isinstance(body, (bytes, str)))
        ):
            return self.fallback.send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        parts = urlsplit(request.url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        if scheme not in _DEFAULT_PORTS or not host:
            raise requests.exceptions.InvalidURL(f"cannot send to {request.url!r}")
        head = self._head(request, parts, host, port, scheme, body)
        payload = head + (body.encode("utf-8") if isinstance(body, str) else body or b"")
        key = (scheme, host, port)
        raw = self._exchange(request, key, payload, connect_timeout, read_timeout, verify)
        response = requests.Response()
        response.status_code = raw.status
        response.reason = raw.reason
        response.headers = raw.headers
        response.raw = raw
        response.url = request.url
        response.request = request
        response.connection = self
        response.encoding = requests.utils.get_encoding_from_headers(raw.headers)
        if not stream:
            response.content  # noqa: B018 - reads the body now, as HTTPAdapter does for stream=False
        return response

    def close(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        self.fallback.close()

    # ---- internals --------------------------------------------------------------------------------------

    @staticmethod
    def _head(request: requests.PreparedRequest, parts: Any, host: str, port: int, scheme: str, body: Any) -> bytes:
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        host_header = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            host_header = f"{host_header}:{port}"
        lines = [f"{request.method} {target} HTTP/1.1", f"Host: {host_header}"]
        has_length = False
        for name, value in request.headers.items():
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise requests.exceptions.InvalidHeader(f"invalid header {name!r}: CR or LF in it")
            lower = name.lower()
            if lower == "host":
                continue
            has_length = has_length or lower == "content-length"
            lines.append(f"{name}: {value}")
        if not has_length and (body or request.method in ("POST", "PUT", "PATCH")):
            size = len(body.encode("utf-8") if isinstance(body, str) else body or b"")
            lines.append(f"Content-Length: {size}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def _exchange(
        self,
        request: requests.PreparedRequest,
        key: tuple[str, str, int],
        payload: bytes,
        connect_timeout: float | None,
        read_timeout: float | None,
        verify: bool | str,
    ) -> LeanBody:
        """Send on a pooled connection (or a new one) and read the response head."""
        while True:
            conn = self._checkout(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(request, key, connect_timeout, verify)
            raw = LeanBody(self, conn)
            raw.read_timeout = read_timeout
            try:
                conn.sock.settimeout(read_timeout)
                conn.sock.sendall(payload)
                self.requests_sent += 1
                raw.read_head(reused=reused)
                return raw
            except _StaleConnection:
                conn.close()  # closed by the server while idle; the request never reached it
                continue
            except _STALE_ERRORS as exc:
                conn.close()
                if reused and raw.head_bytes == 0:  # not one byte of answer: the request was not taken
                    continue
                raise requests.exceptions.ConnectionError(exc, request=request) from exc
            except TimeoutError as exc:
                conn.close()
                raise requests.exceptions.ReadTimeout(exc, request=request) from exc
            except OSError as exc:
                conn.close()
                raise requests.exceptions.ConnectionError(exc, request=request) from exc
            except BaseException:
                conn.close()
                raise

    def _connect(
        self, request: requests.PreparedRequest, key: tuple[str, str, int], timeout: float | None, verify: bool | str
    ) -> _Connection:
        scheme, host, port = key
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            raise requests.exceptions.ConnectTimeout(exc, request=request) from exc
        except OSError as exc:
            raise requests.exceptions.ConnectionError(exc, request=request) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._context(verify).wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as exc:
            sock.close()
            raise requests.exceptions.SSLError(exc, request=request) from exc
        except TimeoutError as exc:
            sock.close()
            raise requests.exceptions.ConnectTimeout(exc, request=request) from exc
        except OSError as exc:
            sock.close()
            raise requests.exceptions.ConnectionError(exc, request=request) from exc
        self.connections_opened += 1
        return _Connection(key, sock)

    def _context(self, verify: bool | str) -> ssl.SSLContext:
        """One TLS context per `verify` value: certifi's CA bundle by default, as requests uses."""
        context = self._contexts.get(verify)
        if context is None:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                cafile = verify if isinstance(verify, str) else requests.certs.where()
                context = ssl.create_default_context(cafile=cafile)
            context.set_alpn_protocols(["http/1.1"])
            self._contexts[verify] = context
        return context

    def _checkout(self, key: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        return conns.pop() if conns else None

    def _checkin(self, conn: _Connection) -> None:
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) < self.pool_maxsize:
            conns.append(conn)
        else:
            conn.close()

    def idle_connections(self) -> int:
        """Connections waiting in the pool (for tests and diagnostics)."""
        return sum(len(conns) for conns in self._idle.values())
