"""The curl_cffi transport: a browser's TLS and HTTP/2 fingerprint; every transfer runs on its hub's shared multi."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from curl_cffi import Curl, CurlHttpVersion, CurlInfo, CurlOpt, ffi, lib
from curl_cffi.requests.impersonate import resolve_latest_browser_type
from requests.structures import CaseInsensitiveDict

from perplexity.errors import (
    ConfigurationError,
    TransportError,
    UpstreamConnectError,
    UpstreamTimeoutError,
)

from .curl_hub import CURL_WRITEFUNC_PAUSE, CurlHub, GeventHub, ThreadHub, Transfer, native_thread_id
from .proxy import ProxyURL, parse_proxy
from .requests_transport import prepare_request
from .transport import _gevent_patched, _host, _read_limited, parse_set_cookies

__all__ = ["CurlResponse", "CurlTransport"]


# libcurl ABI constants (curl/curl.h); returning _WRITEFUNC_ERROR from a write callback fails the transfer.
_WRITEFUNC_ERROR = 0xFFFFFFFF
_CURLE_OPERATION_TIMEDOUT = 28
# Failures before anything was sent: proxy/host lookup, TCP connect, TLS handshake and certificate checks, and
# the proxy's own refusals (97, CURLE_PROXY: a SOCKS handshake or its authentication failed).
_CURL_CONNECT_CODES = frozenset({5, 6, 7, 35, 45, 58, 59, 60, 77, 83, 90, 91, 97})
# Body bytes one transfer may hold before its write callback pauses it; the reader unpauses it once drained.
# Paused, curl stops reading it: over HTTP/1.1 it leaves the socket unread; over HTTP/2 it stops granting the
# stream flow-control window, so the stream's other data waits in libcurl, at most what is left of the window the
# impersonated browser advertises, while the other streams of the connection flow on.
PAUSE_AT = 64 * 1024
# libcurl's receive buffer (its default, pinned). It does not weigh on open streams: libcurl lends each transfer
# the multi handle's buffer while it receives (scripts/curl_memory.py shows the same figure from 4 to 64 KiB);
# smaller only means more write callbacks for a big body.
BUFFER_SIZE = 16 * 1024
UPLOAD_BUFFER_SIZE = 16 * 1024  # libcurl's minimum (its default is 64 KiB)


def _curl_error(code: int, host: str, *, sent: bool, in_body: bool, via: str = "") -> TransportError:
    """The one place curl result codes become `TransportError`s (`sent`: the request may have left; `via`: the
    proxy, masked, as " through the proxy ...")."""
    text = ffi.string(lib.curl_easy_strerror(code)).decode("ascii", "replace")
    host += via
    where = "while reading the response body" if in_body else "before the response"
    if code == _CURLE_OPERATION_TIMEDOUT:
        if not sent:
            return UpstreamConnectError(f"timed out connecting to {host}")
        where = "while reading the response body" if in_body else "waiting for the response"
        return UpstreamTimeoutError(f"read timed out {where} from {host}")
    if code in _CURL_CONNECT_CODES or not sent:
        return UpstreamConnectError(f"could not connect to {host}: curl ({code}) {text}")
    return TransportError(f"connection to {host} failed {where}: curl ({code}) {text}")


class _Head:
    """Status line and headers of the final (non-1xx) response."""

    __slots__ = ("status", "headers", "set_cookies")

    def __init__(self, status: int, lines: list[bytes]) -> None:
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        cookies: list[str] = []
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip(), value.strip()
            if name.lower() == "set-cookie":
                cookies.append(value)
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.status = status
        self.headers = headers
        self.set_cookies = parse_set_cookies(cookies)


class _End:
    """The transfer is over; `error` is None for a complete body."""

    __slots__ = ("error",)

    def __init__(self, error: TransportError | None) -> None:
        self.error = error


class _Handle:
    """A pooled easy handle: curl_cffi's wrapper (for setopt/getinfo) and the raw pointer the multi knows."""

    __slots__ = ("curl", "easy")

    def __init__(self) -> None:
        self.easy = lib.curl_easy_init()
        self.curl = Curl(handle=self.easy)


class _CurlTransfer(Transfer):
    """One request on a hub: the callbacks queue a `_Head`, body bytes and one `_End` in `items`.

    The reader (`next_item`) waits on the hub for the next item, enforces the read deadline (counted from the
    last byte received, or from the request going out), and unpauses the stream once it drained what it held.
    """

    __slots__ = (
        "hub",
        "items",
        "body_size",
        "paused",
        "aborted",
        "ended",
        "_handle",
        "_transport",
        "_host",
        "_read_timeout",
        "_started",
        "_connect_deadline",
        "_last_byte",
        "_sent_at",
        "_status",
        "_lines",
        "_head_sent",
        "_reusable",
        "origin",
        "pipewait",
        "http1",
    )

    def __init__(
        self,
        handle: _Handle,
        hub: CurlHub,
        origin: str,
        timeout: tuple[float, float],
        transport: CurlTransport,
        *,
        pipewait: bool,
    ) -> None:
        super().__init__(handle.easy)
        self.origin = origin
        self.pipewait = pipewait
        self.http1 = False  # the response came over HTTP/1.x
        self.hub = hub
        self.items: deque[_Head | bytes | _End] = deque()
        self.body_size = 0
        self.paused = False
        self.aborted = False
        self.ended = False
        self._handle: _Handle | None = handle
        self._transport = transport
        self._host = origin.partition("://")[2]
        self._read_timeout = timeout[1]
        self._started = time.monotonic()
        self._connect_deadline = self._started + timeout[0] + timeout[1]
        self._last_byte: float | None = None
        self._sent_at: float | None = None
        self._status = 0
        self._lines: list[bytes] = []
        self._head_sent = False
        self._reusable = False
        handle.curl.setopt(CurlOpt.HEADERFUNCTION, self._on_header)
        handle.curl.setopt(CurlOpt.WRITEFUNCTION, self._on_body)

    # -- the hub's side --

    def ready(self) -> bool:
        return bool(self.items)

    def finish(self, code: int) -> None:
        self._end(code)

    def discard(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._transport._release(handle, self._reusable)

    # -- the reader's side --

    def next_item(self, next_tick: Any) -> _Head | bytes | _End:
        """The next queued item, waiting on the hub as needed; b"" when the caller's tick falls due first."""
        items = self.items
        while not items:
            wait = self._time_left()
            if wait <= 0:
                self._time_out()
                continue
            if next_tick is not None:
                tick = next_tick()
                if tick <= 0:
                    return b""
                if tick < wait:
                    wait = tick
            self.hub.wait(self, wait)
        item = items.popleft()
        if item.__class__ is bytes:
            self.body_size -= len(item)  # type: ignore[arg-type]
            if self.paused and not items:
                # Drained: let curl deliver again what it holds (and read on). The pause was ours, not the
                # upstream's silence, so the read deadline counts from now.
                self.paused = False
                self._last_byte = time.monotonic()
                self.hub.resume(self)
        return item

    def abort(self) -> None:
        """Stop the transfer now (the response was closed): over HTTP/2 its stream is reset, over HTTP/1.1 its
        connection closed; callbacks that still come fail the transfer. A reader waiting meanwhile (another
        greenlet) wakes up to a quiet end."""
        self.aborted = True
        self.items.clear()
        self.body_size = 0
        if not self.ended:
            self.ended = True
            self._reusable = True  # removed from the multi, the handle is clean (its stream or connection went)
            self.items.append(_End(None))
            self.wake()
        self.hub.retire(self)

    # -- curl callbacks (inside libcurl calls: no libcurl call here) --

    def _on_header(self, line: bytes) -> int:
        if self.aborted:
            return _WRITEFUNC_ERROR
        self._last_byte = time.monotonic()
        if line.startswith(b"HTTP/"):
            parts = line.split(None, 2)
            self._status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.http1 = line.startswith(b"HTTP/1")
            self._lines = []
        elif line in (b"\r\n", b"\n"):
            if self._status >= 200 and not self._head_sent:  # a 1xx block is followed by the real one
                self._send_head()
        elif line[:1] in (b" ", b"\t") and self._lines:
            self._lines[-1] += b" " + line.strip()  # obsolete header folding
        elif not self._head_sent:
            self._lines.append(line.rstrip(b"\r\n"))
        return len(line)

    def _on_body(self, data: bytes) -> int:
        if self.aborted:
            return _WRITEFUNC_ERROR  # curl fails the transfer (code 23)
        if self.body_size >= PAUSE_AT:
            # Refused data is delivered again once the reader unpauses the transfer.
            self.paused = True
            return CURL_WRITEFUNC_PAUSE
        if not self._head_sent:
            self._send_head()
        self.items.append(data)
        self.body_size += len(data)
        self._last_byte = time.monotonic()
        self.wake()
        return len(data)

    # -- internals --

    def _send_head(self) -> None:
        self._head_sent = True
        self.items.append(_Head(self._status, self._lines))
        self._lines = []  # parsed into the head: not kept for the life of the stream
        self.wake()

    def _time_left(self) -> float:
        """Seconds until the read deadline: `read` s after the last byte, or after the request went out.

        Before the request is out the wait is cut to `read` s, to look again (curl's own connect timeout covers
        connecting); the request-out time is what curl measured, so a late look does not stretch the deadline.
        """
        now = time.monotonic()
        if self._last_byte is not None:
            return self._last_byte + self._read_timeout - now
        if self._sent_at is None:
            if not self._request_sent():
                return min(self._connect_deadline - now, self._read_timeout)
            sent_us = int(self._curl().getinfo(CurlInfo.POSTTRANSFER_TIME_T))
            self._sent_at = min(now, self._started + sent_us / 1e6) if sent_us > 0 else now
        return self._sent_at + self._read_timeout - now

    def _time_out(self) -> None:
        self._end(_CURLE_OPERATION_TIMEDOUT, timed_out=True)
        self.aborted = True
        self.hub.detach(self)  # if that must wait, retire() defers it when the reader lets go

    def _curl(self) -> Curl:
        assert self._handle is not None
        return self._handle.curl

    def without_pipewait(self) -> None:
        """Stop waiting for a connection to multiplex on (while detached, see `CurlTransport._learn`)."""
        self.pipewait = False
        self._curl().setopt(CurlOpt.PIPEWAIT, 0)

    def waiting(self) -> bool:
        """Nothing sent, nothing received: the transfer can start over."""
        return not self._head_sent and self._last_byte is None and not self._request_sent()

    def _proxy_refused(self) -> int | None:
        """The HTTP proxy's answer to our CONNECT when it was not a 2xx (e.g. 407), else None."""
        if self._handle is None:
            return None
        status = int(self._handle.curl.getinfo(CurlInfo.HTTP_CONNECTCODE))
        return status if status >= 300 else None

    def _request_sent(self) -> bool:
        # REQUEST_SIZE counts request bytes written (set even when the transfer failed).
        return self._handle is not None and int(self._handle.curl.getinfo(CurlInfo.REQUEST_SIZE)) > 0

    def _end(self, code: int, *, timed_out: bool = False) -> None:
        """Queue the `_End` (the handle has left the multi, or is about to)."""
        if self.ended:
            return
        error = None
        if code and not self.aborted:
            proxy = self._transport.proxy
            refused = self._proxy_refused() if proxy is not None and not self._head_sent else None
            if refused is not None:
                # The tunnel was never opened: nothing reached the server, whatever curl counted as sent.
                error = UpstreamConnectError(
                    f"could not connect to {self._host}: the proxy {proxy.masked} answered CONNECT with HTTP {refused}"
                )
            else:
                sent = timed_out or self._sent_at is not None or self._request_sent()
                via = f" through the proxy {proxy.masked}" if proxy is not None else ""
                error = _curl_error(code, self._host, sent=sent, in_body=self._head_sent, via=via)
        elif code == 0 and not self._head_sent:
            error = TransportError(f"{self._host} closed the connection without a response")
        # After a failure start afresh; after our own abort the handle is clean (its stream or connection went).
        self._reusable = code == 0 or self.aborted
        self.ended = True
        self.items.append(_End(error))
        self.wake()


class CurlResponse:
    """A response read from a `_CurlTransfer`; its reader waits on the transfer's hub."""

    supports_idle = True  # next_item() waits with a timeout and carries on

    def __init__(self, transfer: _CurlTransfer) -> None:
        self._transfer = transfer
        self._body: bytes | None = None
        self._end: _End | None = None
        self._closed = False
        self._retired = False
        self.status_code = 0
        self.headers: Mapping[str, str] = CaseInsensitiveDict()
        self.set_cookies: dict[str, str] = {}

    @property
    def buffered(self) -> bool:
        """True when more of the body has already arrived (the next chunk will not wait)."""
        return bool(self._transfer.items)

    def iter_bytes(self, next_tick: Any = None) -> Iterator[bytes]:
        """Body chunks as they arrive; with `next_tick`, b"" whenever the caller's tick falls due first."""
        if self._body is not None:
            if self._body:
                yield self._body
            return
        while not self._closed:
            item = self._next(next_tick)
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            if item or next_tick is not None:
                yield item  # type: ignore[misc]

    def read(self, limit: int = 1 << 20) -> bytes:
        return _read_limited(self, limit)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._retired:
            self._retired = True
            self._transfer.abort()  # just the retirement once the transfer has ended

    def __del__(self) -> None:
        # Dropped without close(): no libcurl call from garbage collection (it may run inside a libcurl
        # callback); the hub reaps the transfer at its next safe point.
        if not self._retired:
            transfer = self._transfer
            transfer.aborted = True
            with contextlib.suppress(Exception):
                transfer.hub.drop(transfer)

    def _wait_head(self) -> None:
        item = self._next(None)
        if isinstance(item, _End):
            raise item.error or TransportError("the transfer ended without a response")
        assert isinstance(item, _Head)
        self.status_code, self.headers, self.set_cookies = item.status, item.headers, item.set_cookies

    def _preload(self) -> None:
        self._body = b"".join(self.iter_bytes())

    def _next(self, next_tick: Any) -> _Head | bytes | _End:
        if self._end is not None:
            return self._end
        item = self._transfer.next_item(next_tick)
        if isinstance(item, _End):
            self._end = item
            if not self._retired:
                self._retired = True
                self._transfer.hub.retire(self._transfer)  # the handle is free for the next request right away
        return item


def _gevent_hub() -> Any:
    """The current gevent hub when gevent has monkey-patched sockets, else None (plain blocking calls)."""
    if not _gevent_patched():
        return None
    import gevent

    return gevent.get_hub()


def _body_bytes(body: Any) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if hasattr(body, "read"):
        return _body_bytes(body.read())
    return b"".join(_body_bytes(part) or b"" for part in body)


class CurlTransport:
    """curl_cffi with browser impersonation; transfers share one multi handle per gevent hub (or thread).

    `pool_size` bounds the idle easy handles kept for reuse (connections live in the multi handle, shared).
    `ca_bundle` is the CA file to trust (default: certifi's, as requests uses), for an https:// proxy too.
    `proxy` carries every transfer (see `perplexity.proxy`; libcurl speaks all its schemes natively).
    """

    def __init__(
        self,
        *,
        impersonate: str = "chrome",
        pool_size: int = 64,
        ca_bundle: str | None = None,
        proxy: str | None = None,
    ):
        from requests.certs import where

        self.name = f"curl_cffi:{impersonate}"
        self.proxy: ProxyURL | None = parse_proxy(proxy) if proxy else None
        # Empty: no proxy, and libcurl's *_proxy environment variables ignored, as requests' trust_env=False.
        self._proxy_option = self.proxy.url.encode() if self.proxy is not None else b""
        self._cainfo = (ca_bundle or where()).encode()
        self._target = resolve_latest_browser_type(impersonate)
        self._pool_size = pool_size
        self._idle: list[_Handle] = []
        self._hubs: dict[Any, CurlHub] = {}  # gevent hub or OS thread id -> its multi
        self._hubs_lock = threading.Lock()
        # Origins that answered over HTTP/1.x: no waiting there for a connection to multiplex on.
        self._http1_origins: set[str] = set()
        self._closed = False
        probe = Curl()
        try:
            if probe.impersonate(self._target) != 0:
                raise ConfigurationError(f"curl_cffi cannot impersonate {impersonate!r}")
        finally:
            probe.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        files: Any = None,
        stream: bool = False,
        timeout: tuple[float, float],
    ) -> CurlResponse:
        if self._closed:
            raise TransportError("the transport is closed")
        prepared = prepare_request(method.upper(), url, headers, params, json, data, files)
        origin = f"{urlsplit(url).scheme}://{_host(url)}"
        pipewait = origin.startswith("https:") and origin not in self._http1_origins
        hub = self._hub()
        handle = self._acquire()
        try:
            self._configure(handle.curl, prepared, timeout, pipewait=pipewait)
            transfer = _CurlTransfer(handle, hub, origin, timeout, self, pipewait=pipewait)
            hub.start(transfer)
        except BaseException:
            self._release(handle, False)
            raise
        response = CurlResponse(transfer)
        try:
            response._wait_head()
            if response.status_code == 407 and self.proxy is not None:
                # A plain-http request is forwarded, not tunnelled: the proxy's refusal comes back as the response.
                raise UpstreamConnectError(
                    f"could not connect to {transfer.origin.partition('://')[2]}: the proxy {self.proxy.masked} "
                    "refused the request (HTTP 407, check its user and password)"
                )
            self._learn(transfer)
            if not stream:
                response._preload()
        except BaseException:
            response.close()
            raise
        if not stream:
            response.close()
        return response

    def close(self) -> None:
        """Close pooled handles and, once their streams are done, the multi handles and their connections."""
        self._closed = True
        for hub in list(self._hubs.values()):
            hub.close()
        while self._idle:
            self._idle.pop().curl.close()

    # -- internals --

    def _learn(self, transfer: _CurlTransfer) -> None:
        """Note the origin's HTTP version; on learning it is HTTP/1.x, release the transfers waiting to multiplex.

        A transfer with CURLOPT_PIPEWAIT waits for a connection still negotiating, and libcurl looks at it again
        only when a transfer ends, so behind a long HTTP/1.1 stream it would wait for the whole stream. Those
        that sent nothing yet are restarted without PIPEWAIT: each opens its own connection, as a browser does.
        """
        origin = transfer.origin
        if not transfer.http1:
            self._http1_origins.discard(origin)
            return
        if not transfer.pipewait or origin in self._http1_origins:
            return
        self._http1_origins.add(origin)
        hub = transfer.hub
        for other in list(hub.transfers.values()):
            if isinstance(other, _CurlTransfer) and other.origin == origin and other.pipewait and other.waiting():
                hub.restart(other, other.without_pipewait)

    def _hub(self) -> CurlHub:
        gevent_hub = _gevent_hub()
        key = gevent_hub if gevent_hub is not None else native_thread_id()
        hub = self._hubs.get(key)
        if hub is None or hub.closed:
            with self._hubs_lock:
                hub = self._hubs.get(key)
                if hub is None or hub.closed:
                    hub = GeventHub(gevent_hub) if gevent_hub is not None else ThreadHub()
                    self._hubs[key] = hub
        return hub

    def _acquire(self) -> _Handle:
        try:
            return self._idle.pop()  # list.pop is atomic: safe across threads and greenlets
        except IndexError:
            return _Handle()

    def _release(self, handle: _Handle, reusable: bool) -> None:
        """Keep a detached handle for the next request, or free it (never called for an attached handle)."""
        curl = handle.curl
        curl.clean_handles_and_buffers()  # our callbacks and the header list
        if reusable and not self._closed and len(self._idle) < self._pool_size:
            curl.reset()
            self._idle.append(handle)
        else:
            curl.close()

    def _configure(
        self, curl: Curl, prepared: requests.PreparedRequest, timeout: tuple[float, float], *, pipewait: bool
    ) -> None:
        method = (prepared.method or "GET").upper()
        url = prepared.url or ""
        body = _body_bytes(prepared.body)
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""  # still send Content-Length: 0, as requests does (some front ends insist)
        curl.setopt(CurlOpt.URL, url.encode())
        if body is not None:
            curl.setopt(CurlOpt.POSTFIELDS, body)
            curl.setopt(CurlOpt.POSTFIELDSIZE, len(body))
        if method == "HEAD":
            curl.setopt(CurlOpt.NOBODY, 1)
        elif method != ("POST" if body is not None else "GET"):
            curl.setopt(CurlOpt.CUSTOMREQUEST, method.encode())
        lines = [b"Expect:"]  # no 100-continue round trip for large bodies
        for name, value in prepared.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding"):
                lines.append(f"{name}: {value}".encode("latin-1") if value else f"{name};".encode("latin-1"))
        curl.setopt(CurlOpt.HTTPHEADER, lines)
        curl.setopt(CurlOpt.NOSIGNAL, 1)  # no SIGALRM for timeouts: libcurl shares the process with gevent
        curl.setopt(CurlOpt.CONNECTTIMEOUT_MS, max(1, int(timeout[0] * 1000)))
        curl.setopt(CurlOpt.FOLLOWLOCATION, 0)
        curl.setopt(CurlOpt.PROXY, self._proxy_option)
        if self.proxy is not None:
            # An explicit empty list: no_proxy in the environment must not exempt any host from the proxy.
            curl.setopt(CurlOpt.NOPROXY, b"")
            # The proxy's answer to CONNECT is not the response: keep it out of the header callback.
            curl.setopt(CurlOpt.SUPPRESS_CONNECT_HEADERS, 1)
            curl.setopt(CurlOpt.PROXY_CAINFO, self._cainfo)
        curl.setopt(CurlOpt.CAINFO, self._cainfo)
        # Impersonation sends the browser's Accept-Encoding; this option makes curl decode the body too.
        curl.setopt(CurlOpt.ACCEPT_ENCODING, b"gzip, deflate, br, zstd")
        if curl.impersonate(self._target) != 0:
            raise ConfigurationError(f"curl_cffi cannot impersonate {self._target!r}")
        curl.setopt(CurlOpt.BUFFERSIZE, BUFFER_SIZE)
        curl.setopt(CurlOpt.UPLOAD_BUFFERSIZE, UPLOAD_BUFFER_SIZE)
        if url.startswith("http:"):
            # Chrome never sends the h2c upgrade headers the impersonation would add on plain http.
            curl.setopt(CurlOpt.HTTP_VERSION, CurlHttpVersion.V1_1)
        elif pipewait:
            # A new transfer waits for the HTTP/2 connection being set up instead of opening its own.
            curl.setopt(CurlOpt.PIPEWAIT, 1)
