"""The `requests` transport: one pooled Session, no cookie jar, every error mapped in one function."""

from __future__ import annotations

import contextlib
import errno
import http.cookiejar
import queue
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from perplexity.errors import (
    ConfigurationError,
    TransportError,
    UpstreamConnectError,
    UpstreamTimeoutError,
    redact,
)

from .extract import dumps_json
from .proxy import ProxyURL, parse_proxy
from .transport import _gevent_patched, _host, _read_limited, parse_set_cookies

__all__ = ["RequestsResponse", "RequestsTransport", "prepare_request"]

_READ_SIZE = 64 * 1024


def _exception_graph(exc: BaseException) -> Iterator[BaseException]:
    """Walk an exception, its causes and the exceptions it wraps (urllib3 nests them in args / `reason`)."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < 32:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        stack.extend(item for item in linked if isinstance(item, BaseException))


_CONNECT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


def _is_connect_failure(exc: BaseException) -> bool:
    """True when the graph shows the TCP connection (or the name lookup) itself failed."""
    for item in _exception_graph(exc):
        if isinstance(item, socket.gaierror):
            return True
        if isinstance(item, OSError) and item.errno in _CONNECT_ERRNOS:
            return True
    return False


def _is_timeout(exc: BaseException) -> bool:
    return any(isinstance(item, TimeoutError) for item in _exception_graph(exc))


def _reason(exc: BaseException) -> str:
    """A short description of the innermost cause, safe to log."""
    innermost = exc
    for item in _exception_graph(exc):
        innermost = item
    text = str(innermost.strerror) if isinstance(innermost, OSError) and innermost.strerror else str(innermost)
    return redact(f"{type(innermost).__name__}: {text}"[:200])


# --- requests ----------------------------------------------------------------------------------------


class _RefuseCookies(http.cookiejar.CookiePolicy):
    """A jar policy that stores nothing and sends nothing: the caller owns the Cookie header."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


def _is_proxy_failure(exc: BaseException) -> bool:
    """True when the graph shows the proxy refused or could not be reached (before anything reached the host)."""
    for item in _exception_graph(exc):
        name = type(item).__name__
        if isinstance(item, requests.exceptions.ProxyError) or name in ("ProxyError", "NewConnectionError"):
            return True
        if type(item).__module__ == "socks":  # PySocks: a SOCKS handshake or its authentication failed
            return True
    return False


def _map_requests_error(
    exc: Exception, url: str, *, in_body: bool, proxy: ProxyURL | None = None
) -> TransportError | None:
    """The one place `requests`/urllib3 failures become `TransportError`s, for the request and the body.

    Returns None for an exception that is not an HTTP failure (a bug), which the caller re-raises as is.
    With a `proxy`, messages name it (masked) and never carry its credentials, whatever the library wrote.
    """
    # Body reads go through urllib3 directly: its exceptions (and socket errors) are not requests'.
    from_http_stack = type(exc).__module__.startswith(("urllib3", "http.client", "socks"))
    if not (isinstance(exc, requests.RequestException) or from_http_stack or (in_body and isinstance(exc, OSError))):
        return None
    host = _host(url) + (f" through the proxy {proxy.masked}" if proxy is not None else "")
    error = _mapped_error(exc, host, in_body=in_body, proxy=proxy is not None)
    if proxy is not None:
        error.message = proxy.scrub(error.message)
        error.args = (error.message,)
    return error


def _mapped_error(exc: Exception, host: str, *, in_body: bool, proxy: bool) -> TransportError:
    if isinstance(exc, requests.ConnectTimeout):
        return UpstreamConnectError(f"timed out connecting to {host}")
    if isinstance(exc, requests.ReadTimeout) or _is_timeout(exc):
        where = "while reading the response body" if in_body else "waiting for the response"
        return UpstreamTimeoutError(f"read timed out {where} from {host}")
    connect_failed = isinstance(exc, requests.exceptions.SSLError) or _is_connect_failure(exc)
    if not in_body and (connect_failed or (proxy and _is_proxy_failure(exc))):
        return UpstreamConnectError(f"could not connect to {host}: {_reason(exc)}")
    where = "while reading the response body" if in_body else "before the response"
    return TransportError(f"connection to {host} failed {where}: {_reason(exc)}")


class _Failure:
    """An exception the body reader hit, handed to the consumer to map and raise."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()  # the body reader reached the end of the body
_QUEUE_ITEMS = 4  # body chunks the reader may hold ahead of the consumer (each at most _READ_SIZE)
_PUT_RECHECK = 1.0  # seconds between checks, by a reader held up by a full queue, that its consumer still exists


class _BodyReader:
    """Reads the body beside the consumer into a small bounded queue, so the consumer can wait with a timeout.

    urllib3 cannot time a read out and carry on (a socket timeout mid-read leaves http.client broken), so idle
    ticks need the read to happen elsewhere: a bare greenlet under gevent, an OS thread otherwise. `stop()` shuts
    the socket down, which ends a read in progress at once; the reader then closes the response itself (closing
    the buffered reader under a read in progress is not allowed). A reader whose consumer was dropped without
    close() notices when its queue is full or its read returns (at the latest after the read timeout) and ends.
    """

    def __init__(self, chunks: Iterator[bytes], response: requests.Response, owner: Callable[[], Any]) -> None:
        self._chunks = chunks
        self._response = response
        self._owner = owner  # a weak reference to the consumer's response object
        self._stopped = False
        self._done = False
        self._lock = threading.Lock()
        if _gevent_patched():
            import gevent
            import gevent.queue

            self.queue: Any = gevent.queue.Queue(maxsize=_QUEUE_ITEMS)
            gevent.spawn(self._run)
        else:
            self.queue = queue.Queue(maxsize=_QUEUE_ITEMS)
            threading.Thread(target=self._run, daemon=True, name="upstream-body-reader").start()

    def get(self, timeout: float) -> Any:
        """The next chunk, `_END` or a `_Failure`; raises queue.Empty after `timeout` seconds without one."""
        return self.queue.get(timeout=timeout)

    def stop(self) -> None:
        """End the reader now (the consumer closed the response): it releases the connection as it leaves."""
        with self._lock:
            self._stopped = True
            done = self._done
            if not done:
                _shutdown(self._response)
        if done:
            self._response.close()
        while True:  # a reader blocked on a full queue can then put its last item and see `_stopped`
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):  # a consumer waiting in another greenlet ends at once
            self.queue.put_nowait(_END)

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(chunk):
                    return
            self._put(_END)
        except Exception as exc:
            self._put(_Failure(exc))
        finally:
            with self._lock:
                self._done = True
                close = self._stopped or self._owner() is None
            if close:
                self._response.close()

    def _put(self, item: Any) -> bool:
        while not self._stopped:
            try:
                self.queue.put(item, timeout=_PUT_RECHECK)
                return True
            except queue.Full:
                if self._owner() is None:  # dropped without close(): nobody will read on
                    self._stopped = True
        return False


def _shutdown(response: requests.Response) -> None:
    """Shut the response's socket down (a read in progress returns); a no-op once the body was read whole."""
    with contextlib.suppress(ValueError, RuntimeError, OSError):  # already released to the pool, or gone
        response.raw.shutdown()


class RequestsResponse:
    """A `requests` response whose body is read straight from urllib3, as soon as bytes arrive.

    `iter_bytes()` reads in the caller. `iter_bytes(next_tick=f)` reads through a `_BodyReader` beside it, so the
    caller gets b"" whenever `f()` seconds pass with no byte (the read timeout still applies).
    """

    supports_idle = True

    def __init__(self, response: requests.Response, url: str, proxy: ProxyURL | None = None) -> None:
        self._response = response
        self._url = url
        self._proxy = proxy
        self._body: bytes | None = None
        self._closed = False
        self._reading = False
        self._reader: _BodyReader | None = None
        self.status_code = response.status_code
        self.headers: Mapping[str, str] = response.headers
        cookies = response.raw.headers.getlist("Set-Cookie")
        self.set_cookies = parse_set_cookies(cookies) if cookies else {}

    @property
    def buffered(self) -> bool:
        """True when more of the body has already arrived (the next chunk will not wait)."""
        reader = self._reader
        return reader is not None and not reader.queue.empty()

    def iter_bytes(self, next_tick: Callable[[], float] | None = None) -> Iterator[bytes]:
        """Body chunks as they arrive; with `next_tick`, b"" whenever the caller's tick falls due first."""
        if self._body is not None:
            if self._body:
                yield self._body
            return
        if next_tick is not None:
            yield from self._ticking(next_tick)
            return
        chunks = self._raw_chunks()
        try:
            while not self._closed:
                self._reading = True
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                except Exception as exc:
                    if self._closed:  # closed under us by another greenlet: end quietly
                        return
                    raise self._mapped(exc) from exc
                finally:
                    self._reading = False
                if chunk:
                    yield chunk
        finally:
            if self._closed:
                self._response.close()  # the close() that arrived mid-read left this to us

    def _ticking(self, next_tick: Callable[[], float]) -> Iterator[bytes]:
        if self._reader is None:
            self._reader = _BodyReader(self._raw_chunks(), self._response, weakref.ref(self))
        reader = self._reader
        while not self._closed:
            wait = next_tick()
            if wait <= 0:
                yield b""
                continue
            try:
                item = reader.get(wait)
            except queue.Empty:
                yield b""
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                if self._closed:
                    return
                raise self._mapped(item.exc) from item.exc
            if item:
                yield item

    def _mapped(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, Exception):
            return exc
        error = _map_requests_error(exc, self._url, in_body=True, proxy=self._proxy)
        return exc if error is None else error

    def _raw_chunks(self) -> Iterator[bytes]:
        """Body pieces as they arrive, decoded.

        A chunked body is read one HTTP chunk at a time; any other body through read1, which returns what one
        recv gave. `read(n)` would wait for n bytes, and `iter_content(None)` for the whole of a non-chunked body.
        """
        raw = self._response.raw
        if raw.chunked and raw.supports_chunked_reads():
            return raw.read_chunked(None, decode_content=True)
        return iter(lambda: raw.read1(_READ_SIZE, decode_content=True), b"")

    def read(self, limit: int = 1 << 20) -> bytes:
        return _read_limited(self, limit)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.stop()
            return
        if self._reading:
            # Another greenlet is inside a read on this socket: closing the buffered reader under it
            # raises "reentrant call". Shut the socket down instead; that read then returns and the
            # reader finishes the close (urllib3 >= 2.3).
            _shutdown(self._response)
            return
        # Response.close() closes the socket of a half-read body instead of pooling it.
        self._response.close()

    def _preload(self) -> None:
        self._body = b"".join(self.iter_bytes())


def prepare_request(
    method: str, url: str, headers: Mapping[str, str], params: Any, json: Any, data: Any, files: Any
) -> requests.PreparedRequest:
    """A `PreparedRequest`, built directly for the client's own requests (a JSON or bytes body, ASCII URL).

    Both transports send what this builds, so they put the same bytes on the wire.

    `Request.prepare()` re-parses and re-quotes the URL, encodes the JSON with the stdlib and hooks up a
    cookie jar, on every ask. Forms, files and other URLs go through it.
    """
    if files is not None or not (data is None or isinstance(data, (bytes, str))) or not url.isascii():
        request = requests.Request(method, url, headers=dict(headers), params=params, json=json, data=data, files=files)
        return request.prepare()
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}" if params else url
    prepared.headers = CaseInsensitiveDict(headers)
    if json is not None:
        # An exact-size copy: orjson's bytes keep its whole output buffer allocated, and the body lives as long
        # as the transfer (curl reads it from there), which for an answer stream is minutes.
        body: bytes | None = bytes(memoryview(dumps_json(json)))
        prepared.headers.setdefault("Content-Type", "application/json")
    else:
        body = data.encode("utf-8") if isinstance(data, str) else data
    if body is not None:
        prepared.headers["Content-Length"] = str(len(body))
    elif method in ("POST", "PUT", "PATCH"):
        prepared.headers["Content-Length"] = "0"
    prepared.body = body
    prepared.hooks = {"response": []}
    return prepared


class _Adapter(HTTPAdapter):
    """An HTTPAdapter that checks an https:// proxy's certificate for plain-http targets too.

    requests sets up certificate checks from the target's scheme alone: through an https:// proxy, an https target
    gets the proxy checked with it (urllib3 wraps the tunnel with the target's settings), a plain-http one gets
    CERT_NONE on the pool, which is the proxy's own connection.
    """

    proxy_tls = False

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if self.proxy_tls and verify and url.lower().startswith("http:"):
            super().cert_verify(conn, "https:" + url[5:], verify, cert)


class RequestsTransport:
    """`requests` (urllib3) with pooled connections, no proxies from the environment and no cookie jar.

    For a base URL that is not impersonated (the fake upstream, a local proxy). `ca_bundle` is the CA file to
    trust (requests' `verify`; default: certifi's bundle), for an https:// proxy too. `proxy` carries every
    request (see `perplexity.proxy`); socks5:// and socks5h:// need PySocks (`requests[socks]`).
    """

    name = "requests"

    def __init__(self, *, pool_size: int = 64, ca_bundle: str | None = None, proxy: str | None = None) -> None:
        self.proxy: ProxyURL | None = parse_proxy(proxy) if proxy else None
        if self.proxy is not None and self.proxy.is_socks:
            try:
                import urllib3.contrib.socks  # noqa: F401  (needs PySocks)
            except ImportError:
                raise ConfigurationError(
                    f"a {self.proxy.scheme}:// proxy needs the PySocks package (pip install PySocks)"
                ) from None
        # One proxy for both schemes; an empty mapping sends directly (the environment is never read).
        self._proxies = {"http": self.proxy.url, "https": self.proxy.url} if self.proxy is not None else {}
        session = requests.Session()
        # trust_env=False skips proxy/.netrc lookups on every request.
        session.trust_env = False
        session.cookies.set_policy(_RefuseCookies())
        adapter = _Adapter(pool_connections=4, pool_maxsize=pool_size, pool_block=False, max_retries=0)
        adapter.proxy_tls = self.proxy is not None and self.proxy.scheme == "https"
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        self.adapter = adapter
        self._verify: bool | str = ca_bundle or True

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
    ) -> RequestsResponse:
        try:
            # Always stream=True: the body is then read by our own loop, with the same error mapping.
            # Sent with the adapter directly: Session.send would add hooks, cookie extraction and redirect
            # bookkeeping, none of which apply (no jar, no redirects followed, no hooks).
            prepared = prepare_request(method.upper(), url, headers, params, json, data, files)
            response = self.adapter.send(
                prepared, stream=True, timeout=timeout, verify=self._verify, proxies=self._proxies
            )
            # The request (orjson's output buffer is ~16 KB whatever the body size) would otherwise live as
            # long as the response: for an answer stream, minutes.
            response.request = None
        except Exception as exc:
            error = _map_requests_error(exc, url, in_body=False, proxy=self.proxy)
            if error is None:
                raise
            raise error from exc
        if response.status_code == 407 and self.proxy is not None:
            # A plain-http request is forwarded, not tunnelled: the proxy's refusal comes back as the response.
            response.close()
            raise UpstreamConnectError(
                f"could not connect to {_host(url)}: the proxy {self.proxy.masked} refused the request "
                "(HTTP 407, check its user and password)"
            )
        result = RequestsResponse(response, url, self.proxy)
        if not stream:
            try:
                result._preload()
            finally:
                result.close()
        return result

    def close(self) -> None:
        self._session.close()
