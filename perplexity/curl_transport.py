"""The curl_cffi transport: a browser TLS fingerprint, with blocking libcurl calls kept off the gevent hub."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import requests
from requests.structures import CaseInsensitiveDict

from perplexity.errors import (
    ConfigurationError,
    TransportError,
    UpstreamConnectError,
    UpstreamTimeoutError,
)

from .transport import _host, _read_limited, parse_set_cookies

if TYPE_CHECKING:
    from curl_cffi import Curl

    # An easy handle and the multi handle that drives it (and keeps its connection alive).
    _Pair = tuple[Curl, Any]

__all__ = ["CurlResponse", "CurlTransport"]


# libcurl ABI constants (curl/curl.h); returning them from a write callback pauses or fails the transfer.
_WRITEFUNC_PAUSE = 0x10000001
_WRITEFUNC_ERROR = 0xFFFFFFFF
_CURLPAUSE_CONT = 0
_CURLMSG_DONE = 1
_CURLE_OPERATION_TIMEDOUT = 28
# Failures before anything was sent: proxy/host lookup, TCP connect, TLS handshake and certificate checks.
_CURL_CONNECT_CODES = frozenset({5, 6, 7, 35, 45, 58, 59, 60, 77, 83, 90, 91})
# A transfer waits (paused) once this much body is unread, and resumes below the low mark.
_HIGH_WATER = 1 << 20
_LOW_WATER = 256 << 10
_MAX_POLL_MS = 1000
# How much longer than the transfer's own deadlines a reader waits before giving up on a worker thread.
_WATCHDOG_SLACK = 10.0


def _curl_error(code: int, host: str, *, sent: bool, in_body: bool) -> TransportError:
    """The one place curl result codes become `TransportError`s (`sent`: the request may have left)."""
    from curl_cffi import ffi, lib

    text = ffi.string(lib.curl_easy_strerror(code)).decode("ascii", "replace")
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


class _CurlTransfer:
    """One transfer of a pooled (easy, multi) handle pair; the multi lets another thread wake it.

    The multi handle holds the live connection between transfers, so the pair is pooled as one.
    `step()` runs curl until it has something new or must wait, then waits for the socket. It is
    called either by the reader itself (no gevent) or in a loop by one worker thread (gevent). The curl
    callbacks append `_Head`, body bytes and finally one `_End` to `items`, a deque the reader pops
    from; `produced`/`consumed` are each written by one side only, so no lock is needed. `abort()`,
    `wake_if_drained()` and `dispose()` run only in the reader's thread (the hub, under gevent), and
    `dispose()` only once no thread drives the transfer, so a wake-up never meets a recycled handle.
    """

    def __init__(
        self,
        pair: _Pair,
        host: str,
        timeout: tuple[float, float],
        release: Callable[[_Pair, bool], None],
    ) -> None:
        from curl_cffi import CurlInfo, CurlOpt, ffi, lib

        self.items: deque[_Head | bytes | _End] = deque()
        self.produced = 0
        self.consumed = 0
        self.notify: Callable[[], None] | None = None
        self.aborted = False
        self.paused = False
        self.ended = False
        curl, self._multi = pair
        self._curl: Curl | None = curl
        self._reusable = False
        self._host = host
        self._read_timeout = timeout[1]
        self._deadline = time.monotonic() + timeout[0] + timeout[1]
        self._release = release
        self._status = 0
        self._lines: list[bytes] = []
        self._head_sent = False
        self._sent = False
        self._new = False
        # Looked up once: step() runs for every chunk, in a worker thread under gevent.
        self._lib, self._ffi, self._request_size_info = lib, ffi, CurlInfo.REQUEST_SIZE
        self._running = self._ffi.new("int *")
        curl.setopt(CurlOpt.HEADERFUNCTION, self._on_header)
        curl.setopt(CurlOpt.WRITEFUNCTION, self._on_body)
        self._lib.curl_multi_add_handle(self._multi, curl._curl)

    # -- driving (reader thread without gevent, worker thread with it) --

    def step(self) -> bool:
        """Advance the transfer once; False when it has ended (an `_End` is then queued)."""
        if self.ended:
            return False
        if self.aborted:
            self._end(None)
            return False
        if self.paused and self.produced - self.consumed < _LOW_WATER:
            self._resume()
        self._new = False
        self._lib.curl_multi_perform(self._multi, self._running)
        if not self._sent and self._request_sent():
            # Like requests: the read timer starts once the request is out, not when connecting began.
            self._sent = True
            self._deadline = time.monotonic() + self._read_timeout
        if not self._running[0]:
            self._end(self._result_code())
            return False
        if self._new:
            self._wake()
            return True
        wait_ms = self._wait_ms()
        if wait_ms <= 0:
            self._end(_CURLE_OPERATION_TIMEDOUT, timed_out=True)
            return False
        self._lib.curl_multi_poll(self._multi, self._ffi.NULL, 0, wait_ms, self._ffi.NULL)
        return True

    def run(self) -> None:
        """Drive the transfer to its end (the body of a worker thread)."""
        try:
            while self.step():
                pass
        except BaseException:
            if not self.ended:
                self._fail(TransportError(f"curl transfer to {self._host} failed unexpectedly"))
            raise

    # -- reader side --

    def abort(self) -> None:
        """Stop the transfer: the driving thread drops the connection at its next step (woken now)."""
        self.aborted = True
        if self._multi is not None and not self.ended:
            self._lib.curl_multi_wakeup(self._multi)

    def wake_if_drained(self) -> None:
        """Let a paused transfer (reader was behind) resume once the reader has caught up."""
        if self.paused and self._multi is not None and self.produced - self.consumed < _LOW_WATER:
            self._lib.curl_multi_wakeup(self._multi)

    def dispose(self) -> None:
        """Hand the handle pair back to the transport; only once no thread drives the transfer."""
        if self._multi is not None and self._curl is not None:
            self._release((self._curl, self._multi), self._reusable)
        self._curl = self._multi = None

    # -- curl callbacks (driving thread) --

    def _on_header(self, line: bytes) -> int:
        if self.aborted:
            return _WRITEFUNC_ERROR
        self._deadline = time.monotonic() + self._read_timeout
        if line.startswith(b"HTTP/"):
            parts = line.split(None, 2)
            self._status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
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
            return _WRITEFUNC_ERROR  # curl fails the transfer with code 23 and closes the connection
        if self.produced - self.consumed >= _HIGH_WATER:
            self.paused = True
            return _WRITEFUNC_PAUSE  # curl keeps this chunk and hands it over again after the resume
        if not self._head_sent:
            self._send_head()
        self.items.append(data)
        self.produced += len(data)
        self._new = True
        self._deadline = time.monotonic() + self._read_timeout
        return len(data)

    # -- internals (driving thread) --

    def _send_head(self) -> None:
        self._head_sent = True
        self.items.append(_Head(self._status, self._lines))
        self._new = True

    def _resume(self) -> None:
        self.paused = False
        self._deadline = time.monotonic() + self._read_timeout
        if self._curl is not None:
            self._curl.pause(_CURLPAUSE_CONT)  # delivers the held chunk to _on_body right away

    def _wait_ms(self) -> int:
        if self.paused:
            return _MAX_POLL_MS  # the read deadline does not run while the reader is behind
        remaining = self._deadline - time.monotonic()
        return 0 if remaining <= 0 else min(_MAX_POLL_MS, int(remaining * 1000) + 1)

    def _result_code(self) -> int:
        pending = self._ffi.new("int *")
        while True:
            message = self._lib.curl_multi_info_read(self._multi, pending)
            if message == self._ffi.NULL:
                return 0
            if message.msg == _CURLMSG_DONE:
                return int(message.data.result)

    def _request_sent(self) -> bool:
        # REQUEST_SIZE counts request bytes written to the socket (the timings are set even on failure).
        return self._curl is not None and int(self._curl.getinfo(self._request_size_info)) > 0

    def _end(self, code: int | None, *, timed_out: bool = False) -> None:
        """Detach the easy handle (dropping an unfinished connection) and queue the `_End`."""
        error = None
        if code and not self.aborted:
            sent = timed_out or self._sent or self._request_sent()
            error = _curl_error(code, self._host, sent=sent, in_body=self._head_sent)
        elif code == 0 and not self._head_sent:
            error = TransportError(f"{self._host} closed the connection without a response")
        if self._curl is not None:
            self._lib.curl_multi_remove_handle(self._multi, self._curl._curl)
            self._curl.clean_handles_and_buffers()
            # After a failure start afresh; after our own abort the pair is clean (its connection is gone).
            self._reusable = code == 0 or self.aborted
        self._fail(error)

    def _fail(self, error: TransportError | None) -> None:
        self.ended = True
        self.items.append(_End(error))
        self._wake()

    def _wake(self) -> None:
        if self.notify is not None:
            self.notify()


class _GeventSignal:
    """Wakes a greenlet from a native thread: `send()` is a thread-safe `async_` watcher send.

    The watcher callback runs in the hub and sets a gevent Event; the reader clears the event *before*
    checking for items, so an item queued between the check and the wait still wakes it (no lost wake-up).
    """

    def __init__(self, hub: Any) -> None:
        from gevent.event import Event

        self._event = Event()
        self._watcher = hub.loop.async_()
        self._watcher.start(self._event.set)
        self.send = self._watcher.send

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def close(self) -> None:
        self._event.set()  # a send still pending when the watcher closes must not strand the reader
        self._watcher.stop()
        self._watcher.close()


class CurlResponse:
    """A response read from a `_CurlTransfer`, driven in place or by a gevent threadpool thread."""

    def __init__(self, transfer: _CurlTransfer, signal: _GeventSignal | None, timeout: tuple[float, float]):
        self._transfer = transfer
        self._signal = signal
        self._timeout = timeout
        self._body: bytes | None = None
        self._end: _End | None = None
        self._closed = False
        self.status_code = 0
        self.headers: Mapping[str, str] = CaseInsensitiveDict()
        self.set_cookies: dict[str, str] = {}

    def iter_bytes(self) -> Iterator[bytes]:
        if self._body is not None:
            if self._body:
                yield self._body
            return
        while not self._closed:
            item = self._next(self._timeout[1])
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item  # type: ignore[misc]

    def read(self, limit: int = 1 << 20) -> bytes:
        return _read_limited(self, limit)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        transfer = self._transfer
        if not transfer.ended:
            transfer.abort()
            if self._signal is None:
                transfer.step()  # no worker thread: drop the connection right here
        if self._signal is None:
            transfer.dispose()
        transfer.items.clear()

    def __del__(self) -> None:
        # A response dropped without close() must not leave a worker thread streaming into nowhere.
        with contextlib.suppress(Exception):
            self.close()

    def _wait_head(self) -> None:
        item = self._next(sum(self._timeout))
        if isinstance(item, _End):
            raise item.error or TransportError("the transfer ended without a response")
        assert isinstance(item, _Head)
        self.status_code, self.headers, self.set_cookies = item.status, item.headers, item.set_cookies

    def _preload(self) -> None:
        self._body = b"".join(self.iter_bytes())

    def _next(self, budget: float) -> _Head | bytes | _End:
        """The next queued item, driving or waiting for the transfer as needed."""
        if self._end is not None:
            return self._end
        transfer = self._transfer
        items = transfer.items
        while not items:
            if self._signal is None:
                transfer.step()
                continue
            self._signal.clear()
            if items:
                break
            if not self._signal.wait(budget + _WATCHDOG_SLACK):
                # The worker enforces the deadlines itself; this only guards against a stuck thread.
                transfer.abort()
                raise UpstreamTimeoutError(f"curl transfer to {transfer._host} stalled")
        item = items.popleft()
        if isinstance(item, bytes):
            transfer.consumed += len(item)
            transfer.wake_if_drained()
        elif isinstance(item, _End):
            self._end = item
        return item


def _gevent_hub() -> Any:
    """The current gevent hub when gevent has monkey-patched sockets, else None (plain blocking calls)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return None
    import gevent

    return gevent.get_hub()


def _encode_request(method: str, url: str, headers: Mapping[str, str], **body: Any) -> requests.PreparedRequest:
    """Build URL, body and content headers exactly as `requests` would, so both transports send the same."""
    return requests.Request(method=method.upper(), url=url, headers=dict(headers), **body).prepare()


def _body_bytes(body: Any) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if hasattr(body, "read"):
        return _body_bytes(body.read())
    return b"".join(_body_bytes(part) or b"" for part in body)


class CurlTransport:
    """curl_cffi with browser impersonation; gevent-cooperative through real threads when patched."""

    def __init__(self, *, impersonate: str = "chrome", pool_size: int = 64, threadpool_size: int | None = None):
        from curl_cffi import Curl
        from curl_cffi.requests.impersonate import resolve_latest_browser_type
        from requests.certs import where

        self.name = f"curl_cffi:{impersonate}"
        self._cainfo = where().encode()  # the same CA bundle requests uses (certifi)
        self._target = resolve_latest_browser_type(impersonate)
        self._pool_size = pool_size
        self._threadpool_size = threadpool_size or pool_size
        self._idle: list[_Pair] = []
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
        prepared = _encode_request(method, url, headers, params=params, json=json, data=data, files=files)
        pair = self._acquire()
        try:
            self._configure(pair[0], prepared, timeout)
            transfer = _CurlTransfer(pair, _host(url), timeout, self._release)
        except BaseException:
            self._release(pair, False)
            raise
        response = self._start(transfer, timeout)
        try:
            response._wait_head()
            if not stream:
                response._preload()
        except BaseException:
            response.close()
            raise
        if not stream:
            response.close()
        return response

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._release(self._idle.pop(), False)

    def _start(self, transfer: _CurlTransfer, timeout: tuple[float, float]) -> CurlResponse:
        """Without gevent the reader drives the transfer; with it, a hub threadpool thread does."""
        hub = _gevent_hub()
        if hub is None:
            return CurlResponse(transfer, None, timeout)
        signal = _GeventSignal(hub)
        transfer.notify = signal.send
        pool = hub.threadpool
        if pool.maxsize < self._threadpool_size:
            pool.maxsize = self._threadpool_size
        try:
            result = pool.spawn(transfer.run)  # waits (cooperatively) for a free thread
        except BaseException:
            transfer.aborted = True
            transfer.step()
            transfer.dispose()
            signal.close()
            raise

        def finished(_result: Any) -> None:
            # Runs in the hub once `run` has returned: no thread touches the handles or the watcher now.
            transfer.dispose()
            signal.close()

        result.rawlink(finished)
        return CurlResponse(transfer, signal, timeout)

    def _configure(self, curl: Curl, prepared: requests.PreparedRequest, timeout: tuple[float, float]) -> None:
        from curl_cffi import CurlHttpVersion, CurlOpt

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
        curl.setopt(CurlOpt.NOSIGNAL, 1)  # required when libcurl runs in threads
        curl.setopt(CurlOpt.CONNECTTIMEOUT_MS, max(1, int(timeout[0] * 1000)))
        curl.setopt(CurlOpt.FOLLOWLOCATION, 0)
        curl.setopt(CurlOpt.PROXY, b"")  # ignore *_proxy environment variables, like trust_env=False
        curl.setopt(CurlOpt.CAINFO, self._cainfo)
        # Impersonation sends the browser's Accept-Encoding; this option makes curl decode the body too.
        curl.setopt(CurlOpt.ACCEPT_ENCODING, b"gzip, deflate, br, zstd")
        if curl.impersonate(self._target) != 0:
            raise ConfigurationError(f"curl_cffi cannot impersonate {self._target!r}")
        if url.startswith("http:"):
            # Chrome never sends the h2c upgrade headers the impersonation would add on plain http.
            curl.setopt(CurlOpt.HTTP_VERSION, CurlHttpVersion.V1_1)

    def _acquire(self) -> _Pair:
        from curl_cffi import Curl, lib

        if self._closed:
            raise TransportError("the transport is closed")
        try:
            return self._idle.pop()  # list.pop is atomic: safe across threads and greenlets
        except IndexError:
            return Curl(), lib.curl_multi_init()

    def _release(self, pair: _Pair, reusable: bool) -> None:
        """Keep a handle pair (and its live connection) for the next request, or free it."""
        from curl_cffi import lib

        curl, multi = pair
        if reusable and not self._closed and len(self._idle) < self._pool_size:
            curl.reset()
            self._idle.append(pair)
        else:
            curl.close()
            lib.curl_multi_cleanup(multi)
