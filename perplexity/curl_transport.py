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

from .requests_transport import prepare_request
from .transport import _host, _read_limited, parse_set_cookies

if TYPE_CHECKING:
    from curl_cffi import Curl

__all__ = ["CurlResponse", "CurlTransport"]


# libcurl ABI constants (curl/curl.h); returning _WRITEFUNC_ERROR from a write callback fails the transfer.
_WRITEFUNC_ERROR = 0xFFFFFFFF
_CURLMSG_DONE = 1
_CURLE_OPERATION_TIMEDOUT = 28
_CURL_SOCKET_TIMEOUT = -1
_CSELECT_IN, _CSELECT_OUT = 0x01, 0x02
# Failures before anything was sent: proxy/host lookup, TCP connect, TLS handshake and certificate checks.
_CURL_CONNECT_CODES = frozenset({5, 6, 7, 35, 45, 58, 59, 60, 77, 83, 90, 91})
_MAX_POLL_MS = 1000


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


class _Timer:
    """A libcurl timer as `_HubDriver.call_later` hands it out: `when` is None once cancelled."""

    __slots__ = ("when",)

    def __init__(self, when: float | None) -> None:
        self.when = when

    def cancel(self) -> None:
        self.when = None


class _HubDriver:
    """Lets a greenlet wait on the gevent hub for what one multi handle waits for: no thread per transfer.

    libcurl's event interface says which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to call
    back anyway (CURLMOPT_TIMERFUNCTION); `curl_multi_socket_action` then runs the transfer without
    blocking. curl_cffi compiles both callbacks for its asyncio `AsyncCurl`; they touch only `loop`
    (`add_reader`, `add_writer`, `remove_reader`, `remove_writer`, `call_later`), `_sockfds`, `_timer`
    and `process_data` of the object registered with them, so this class offers exactly those, backed
    by gevent io watchers. A watcher that fires only records readiness, stops (no busy loop while the
    reader is away writing to its client) and wakes the reader; every libcurl call happens in the
    reader's greenlet, which also gives natural back-pressure: curl reads the socket only when asked.
    """

    def __init__(self, multi: Any, hub: Any) -> None:
        from curl_cffi import CurlMOpt, ffi, lib
        from gevent.event import Event

        try:
            import curl_cffi.aio  # noqa: F401  (defines the Python side of the compiled callbacks)

            callbacks = lib.socket_function, lib.timer_function
        except (ImportError, AttributeError) as exc:
            # A curl_cffi release without AsyncCurl's callbacks: say so instead of failing mid-request.
            raise ConfigurationError(
                f"this curl_cffi cannot drive transfers from the gevent hub ({exc}); use curl-cffi==0.17.0"
            ) from exc

        self.hub = hub
        self.loop = self  # the compiled callbacks call `self.loop.add_reader(...)` and so on
        self._sockfds: set[int] = set()
        self._timer: _Timer | None = None
        self._io_loop = hub.loop
        self._watchers: dict[tuple[int, int], Any] = {}  # (fd, CSELECT bit) -> io watcher
        self.ready: dict[int, int] = {}  # fd -> CSELECT bits seen since the last socket_action
        self.wakeup = Event()
        self._handle = ffi.new_handle(self)  # must outlive the multi handle's use of it
        for option, value in (
            (CurlMOpt.SOCKETFUNCTION, callbacks[0]),
            (CurlMOpt.TIMERFUNCTION, callbacks[1]),
            (CurlMOpt.SOCKETDATA, self._handle),
            (CurlMOpt.TIMERDATA, self._handle),
        ):
            if lib.curl_multi_setopt(multi, option, value) != 0:
                raise ConfigurationError("this libcurl cannot drive transfers from the gevent hub")

    # -- what the compiled callbacks call --

    def add_reader(self, fd: int, _callback: Any, *_args: Any) -> None:
        self._watch(fd, _CSELECT_IN)

    def add_writer(self, fd: int, _callback: Any, *_args: Any) -> None:
        self._watch(fd, _CSELECT_OUT)

    def remove_reader(self, fd: int) -> None:
        self._unwatch(fd, _CSELECT_IN)

    def remove_writer(self, fd: int) -> None:
        self._unwatch(fd, _CSELECT_OUT)

    def call_later(self, delay: float, _callback: Any, *_args: Any) -> _Timer:
        # curl_cffi passes timeout_ms / 1000, so libcurl's "-1: delete the timer" arrives as -0.001.
        return _Timer(time.monotonic() + delay if delay >= 0 else None)

    def process_data(self, fd: int, bit: int) -> None:
        """A watched socket is ready (run in the hub): note it, rest the watcher, wake the reader."""
        self.ready[fd] = self.ready.get(fd, 0) | bit
        watcher = self._watchers.get((fd, bit))
        if watcher is not None:
            watcher.stop()
        self.wakeup.set()

    # -- reader side --

    def timer_due(self, now: float) -> bool:
        """Whether libcurl's timer has run out (it is then consumed)."""
        timer = self._timer
        if timer is None or timer.when is None or timer.when > now:
            return False
        timer.when = None
        return True

    def timer_left(self, now: float) -> float | None:
        timer = self._timer
        return None if timer is None or timer.when is None else timer.when - now

    def rearm(self) -> None:
        """Watch again the sockets libcurl still wants (a fired watcher rests until the reader caught up)."""
        for (fd, bit), watcher in self._watchers.items():
            if not watcher.active:
                watcher.start(self.process_data, fd, bit)

    def reset(self) -> None:
        """Stop watching everything (before the multi handle is cleaned up and closes its sockets).

        Between transfers the watchers stay as libcurl left them: it announces a socket once and may keep
        a pooled connection's socket registered, so only its own CURL_POLL_REMOVE ends a watch.
        """
        for watcher in self._watchers.values():
            watcher.stop()
            watcher.close()
        self._watchers.clear()
        self._sockfds.clear()
        self.ready.clear()
        self._timer = None

    def _watch(self, fd: int, bit: int) -> None:
        key = (fd, bit)
        if key not in self._watchers:
            watcher = self._io_loop.io(fd, 1 if bit == _CSELECT_IN else 2)
            self._watchers[key] = watcher
            watcher.start(self.process_data, fd, bit)

    def _unwatch(self, fd: int, bit: int) -> None:
        watcher = self._watchers.pop((fd, bit), None)
        if watcher is not None:
            watcher.stop()
            watcher.close()
        if fd in self.ready:
            self.ready[fd] &= ~bit


class _Handles:
    """A pooled easy handle, the multi handle that runs it (and keeps its connection alive between
    transfers), and, under gevent, the hub driver bound to that multi handle."""

    __slots__ = ("curl", "multi", "driver")

    def __init__(self, curl: Curl, multi: Any, driver: _HubDriver | None) -> None:
        self.curl = curl
        self.multi = multi
        self.driver = driver


class _CurlTransfer:
    """One transfer of a pooled `_Handles`, advanced by its reader only: curl reads when the reader asks.

    `advance(wait)` runs libcurl on whatever is ready and, if that produced nothing, waits up to `wait`
    seconds: without gevent in `curl_multi_poll`; under gevent on the hub (`_HubDriver`), so other
    greenlets run meanwhile. The curl callbacks append a `_Head`, body bytes and finally one `_End` to
    `items`. The read deadline is enforced here, counted from the last byte received.
    """

    def __init__(self, handles: _Handles, host: str, timeout: tuple[float, float]) -> None:
        from curl_cffi import CurlInfo, CurlOpt, ffi, lib

        self.items: deque[_Head | bytes | _End] = deque()
        self.ended = False
        self._handles: _Handles | None = handles
        self._curl: Curl | None = handles.curl
        self._multi = handles.multi
        self._driver = handles.driver
        self._reusable = False
        self._host = host
        self._read_timeout = timeout[1]
        self._deadline = time.monotonic() + timeout[0] + timeout[1]
        self._status = 0
        self._lines: list[bytes] = []
        self._head_sent = False
        self._sent = False
        self.aborted = False
        # Looked up once: advance() runs for every chunk.
        self._lib, self._ffi, self._request_size_info = lib, ffi, CurlInfo.REQUEST_SIZE
        self._running = self._ffi.new("int *")
        self._running[0] = 1
        curl = handles.curl
        curl.setopt(CurlOpt.HEADERFUNCTION, self._on_header)
        curl.setopt(CurlOpt.WRITEFUNCTION, self._on_body)
        self._lib.curl_multi_add_handle(self._multi, curl._curl)  # under gevent: sets a timer of 0 ms

    def advance(self, wait: float | None) -> None:
        """Run the transfer on; when nothing new came, wait up to `wait` s (None: the transfer's deadline)."""
        if self.ended:
            return
        if self.aborted:
            self._end(None)
            return
        if self._driver is not None:
            self._advance_on_hub(wait)
            return
        self._lib.curl_multi_perform(self._multi, self._running)
        if self._check_progress() or self.items:
            return
        left = self._time_left(wait)
        if left > 0:
            wait_ms = min(_MAX_POLL_MS, int(left * 1000) + 1)
            self._lib.curl_multi_poll(self._multi, self._ffi.NULL, 0, wait_ms, self._ffi.NULL)

    def abort(self) -> None:
        """Stop the transfer now: its unfinished connection is dropped."""
        self.aborted = True
        if not self.ended:
            self._end(None)

    def dispose(self, release: Callable[[_Handles, bool], None]) -> None:
        """Hand the handles back to the transport (once the transfer has ended)."""
        if self._handles is not None:
            handles, self._handles, self._curl = self._handles, None, None
            release(handles, self._reusable)

    # -- driving --

    def _advance_on_hub(self, wait: float | None) -> None:
        driver = self._driver
        assert driver is not None
        driver.wakeup.clear()  # before running curl: a socket that gets ready later still wakes the wait
        ready, driver.ready = driver.ready, {}
        action, multi, running = self._lib.curl_multi_socket_action, self._multi, self._running
        for fd, bits in ready.items():
            if bits:
                action(multi, fd, bits, running)
        if driver.timer_due(time.monotonic()):
            action(multi, _CURL_SOCKET_TIMEOUT, 0, running)
        progressed = self._check_progress() or bool(self.items)
        driver.rearm()
        if progressed:
            return
        bound = driver.timer_left(time.monotonic())  # libcurl wants to run again by then
        if wait is not None and (bound is None or wait < bound):
            bound = wait
        left = self._time_left(bound)
        if left > 0:
            driver.wakeup.wait(left)

    def _check_progress(self) -> bool:
        """After libcurl ran: note the request going out, and end the transfer if curl is done."""
        if not self._sent and self._request_sent():
            # Like requests: the read timer starts once the request is out, not when connecting began.
            self._sent = True
            self._deadline = time.monotonic() + self._read_timeout
        if not self._running[0]:
            self._end(self._result_code())
            return True
        return False

    def _time_left(self, wait: float | None) -> float:
        """Seconds to wait for curl: `wait` at most, never past the read deadline; 0 once that has passed,
        and the transfer is then ended as timed out."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._end(_CURLE_OPERATION_TIMEDOUT, timed_out=True)
            return 0.0
        return wait if wait is not None and wait < remaining else remaining

    # -- curl callbacks (inside curl calls made by advance) --

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
        if not self._head_sent:
            self._send_head()
        self.items.append(data)
        self._deadline = time.monotonic() + self._read_timeout
        return len(data)

    # -- internals --

    def _send_head(self) -> None:
        self._head_sent = True
        self.items.append(_Head(self._status, self._lines))

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
        if self.ended:
            return
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
        self.ended = True
        self.items.append(_End(error))


class CurlResponse:
    """A response read from a `_CurlTransfer`, which the reader advances (on the hub under gevent)."""

    supports_idle = True  # advance() waits with a timeout and carries on

    def __init__(self, transfer: _CurlTransfer, release: Callable[[_Handles, bool], None]) -> None:
        self._transfer = transfer
        self._release = release
        self._body: bytes | None = None
        self._end: _End | None = None
        self._closed = False
        self.status_code = 0
        self.headers: Mapping[str, str] = CaseInsensitiveDict()
        self.set_cookies: dict[str, str] = {}

    @property
    def buffered(self) -> bool:
        """True when more of the body has already arrived (the next chunk will not wait)."""
        return bool(self._transfer.items)

    def iter_bytes(self, next_tick: Callable[[], float] | None = None) -> Iterator[bytes]:
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
        transfer = self._transfer
        transfer.abort()  # a no-op once the transfer has ended
        transfer.dispose(self._release)
        transfer.items.clear()

    def __del__(self) -> None:
        # A response dropped without close() must not keep its connection (or a hub watcher) alive.
        with contextlib.suppress(Exception):
            self.close()

    def _wait_head(self) -> None:
        item = self._next(None)
        if isinstance(item, _End):
            raise item.error or TransportError("the transfer ended without a response")
        assert isinstance(item, _Head)
        self.status_code, self.headers, self.set_cookies = item.status, item.headers, item.set_cookies

    def _preload(self) -> None:
        self._body = b"".join(self.iter_bytes())

    def _next(self, next_tick: Callable[[], float] | None) -> _Head | bytes | _End:
        """The next queued item, advancing the transfer as needed; b"" when the caller's tick is due."""
        if self._end is not None:
            return self._end
        transfer = self._transfer
        items = transfer.items
        while not items:
            wait = None
            if next_tick is not None:
                wait = next_tick()
                if wait <= 0:
                    return b""
            transfer.advance(wait)
        item = items.popleft()
        if isinstance(item, _End):
            self._end = item
            transfer.dispose(self._release)  # the connection is free for the next request right away
        return item


def _gevent_hub() -> Any:
    """The current gevent hub when gevent has monkey-patched sockets, else None (plain blocking calls)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
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
    """curl_cffi with browser impersonation; under gevent its transfers wait on the hub (no thread each)."""

    def __init__(self, *, impersonate: str = "chrome", pool_size: int = 64):
        from curl_cffi import Curl
        from curl_cffi.requests.impersonate import resolve_latest_browser_type
        from requests.certs import where

        self.name = f"curl_cffi:{impersonate}"
        self._cainfo = where().encode()  # the same CA bundle requests uses (certifi)
        self._target = resolve_latest_browser_type(impersonate)
        self._pool_size = pool_size
        self._idle: list[_Handles] = []
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
        prepared = prepare_request(method.upper(), url, headers, params, json, data, files)
        handles = self._acquire(_gevent_hub())
        try:
            self._configure(handles.curl, prepared, timeout)
            transfer = _CurlTransfer(handles, _host(url), timeout)
        except BaseException:
            self._release(handles, False)
            raise
        response = CurlResponse(transfer, self._release)
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
        curl.setopt(CurlOpt.UPLOAD_BUFFERSIZE, 16384)
        curl.setopt(CurlOpt.NOSIGNAL, 1)  # no SIGALRM for timeouts: libcurl shares the process with gevent
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

    def _acquire(self, hub: Any) -> _Handles:
        """A pooled handle set made for this hub (None: no gevent), or a new one."""
        from curl_cffi import Curl, lib

        if self._closed:
            raise TransportError("the transport is closed")
        while True:
            try:
                handles = self._idle.pop()  # list.pop is atomic: safe across threads and greenlets
            except IndexError:
                break
            if (handles.driver.hub if handles.driver is not None else None) is hub:
                return handles
            self._release(handles, False)  # made for another hub (or none): its watchers live there
        curl, multi = Curl(), lib.curl_multi_init()
        try:
            return _Handles(curl, multi, _HubDriver(multi, hub) if hub is not None else None)
        except BaseException:
            curl.close()
            lib.curl_multi_cleanup(multi)
            raise

    def _release(self, handles: _Handles, reusable: bool) -> None:
        """Keep a handle set (and its live connection) for the next request, or free it."""
        from curl_cffi import lib

        if reusable and not self._closed and len(self._idle) < self._pool_size:
            handles.curl.reset()
            self._idle.append(handles)
            return
        if handles.driver is not None:
            handles.driver.reset()  # no watcher may outlive the sockets the cleanup closes
        handles.curl.close()
        lib.curl_multi_cleanup(handles.multi)
