"""The `requests` transport: one pooled Session, no cookie jar, every error mapped in one function."""

from __future__ import annotations

import errno
import http.cookiejar
import socket
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
from .lean_http import LeanBody, LeanHTTPAdapter
from .transport import _host, _read_limited, parse_set_cookies

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


def _map_requests_error(exc: Exception, url: str, *, in_body: bool) -> TransportError | None:
    """The one place `requests`/urllib3 failures become `TransportError`s, for the request and the body.

    Returns None for an exception that is not an HTTP failure (a bug), which the caller re-raises as is.
    """
    # Body reads go through urllib3 directly: its exceptions (and socket errors) are not requests'.
    from_http_stack = type(exc).__module__.startswith(("urllib3", "http.client"))
    if not (isinstance(exc, requests.RequestException) or from_http_stack or (in_body and isinstance(exc, OSError))):
        return None
    host = _host(url)
    if isinstance(exc, requests.ConnectTimeout):
        return UpstreamConnectError(f"timed out connecting to {host}")
    if isinstance(exc, requests.ReadTimeout) or _is_timeout(exc):
        where = "while reading the response body" if in_body else "waiting for the response"
        return UpstreamTimeoutError(f"read timed out {where} from {host}")
    if not in_body and (isinstance(exc, requests.exceptions.SSLError) or _is_connect_failure(exc)):
        return UpstreamConnectError(f"could not connect to {host}: {_reason(exc)}")
    where = "while reading the response body" if in_body else "before the response"
    return TransportError(f"connection to {host} failed {where}: {_reason(exc)}")


class RequestsResponse:
    """A `requests` response whose body is read straight from urllib3, as soon as bytes arrive."""

    def __init__(self, response: requests.Response, url: str) -> None:
        self._response = response
        self._url = url
        self._body: bytes | None = None
        self._closed = False
        self._reading = False
        self.status_code = response.status_code
        self.headers: Mapping[str, str] = response.headers
        raw = response.raw
        lean = isinstance(raw, LeanBody)
        cookies = raw.set_cookies if lean else raw.headers.getlist("Set-Cookie")
        self.set_cookies = parse_set_cookies(cookies) if cookies else {}
        # Idle ticks need a socket read that can time out and carry on: the lean adapter's.
        self.supports_idle = lean

    @property
    def buffered(self) -> bool:
        """True when more of the body has already arrived (the next chunk will not wait)."""
        raw = self._response.raw
        return raw.buffered if isinstance(raw, LeanBody) else False

    def iter_bytes(self, next_tick: Callable[[], float] | None = None) -> Iterator[bytes]:
        """Body chunks as they arrive; with `next_tick` (see `supports_idle`), b"" when a tick falls due."""
        if self._body is not None:
            if self._body:
                yield self._body
            return
        if next_tick is not None and not self.supports_idle:
            raise ValueError("idle ticks need the lean HTTP adapter")
        chunks = self._raw_chunks(next_tick)
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
                    error = _map_requests_error(exc, self._url, in_body=True)
                    if error is None:
                        raise
                    raise error from exc
                finally:
                    self._reading = False
                if chunk or next_tick is not None:
                    yield chunk
        finally:
            if self._closed:
                self._response.close()  # the close() that arrived mid-read left this to us

    def _raw_chunks(self, next_tick: Callable[[], float] | None = None) -> Iterator[bytes]:
        """Body pieces as they arrive, decoded (perf-and-reliability.md section 4).

        A chunked body is read one HTTP chunk at a time (about 3 times cheaper than read1 per 4 KB
        frame); any other body through read1, which returns what one recv gave. `read(n)` would wait
        for n bytes, and `iter_content(None)` for the whole of a non-chunked body.
        """
        raw = self._response.raw
        if isinstance(raw, LeanBody):
            return raw.iter_chunks(next_tick)
        if raw.chunked and raw.supports_chunked_reads():
            return raw.read_chunked(None, decode_content=True)
        return iter(lambda: raw.read1(_READ_SIZE, decode_content=True), b"")

    def read(self, limit: int = 1 << 20) -> bytes:
        return _read_limited(self, limit)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reading:
            # Another greenlet is inside a read on this socket: closing the buffered reader under it
            # raises "reentrant call". Shut the socket down instead; that read then returns and the
            # reader finishes the close (urllib3 >= 2.3).
            self._response.raw.shutdown()
            return
        # Response.close() closes the socket of a half-read body instead of pooling it.
        self._response.close()

    def _preload(self) -> None:
        self._body = b"".join(self.iter_bytes())


HTTP_ADAPTERS = ("lean", "urllib3")


def prepare_request(
    method: str, url: str, headers: Mapping[str, str], params: Any, json: Any, data: Any, files: Any
) -> requests.PreparedRequest:
    """A `PreparedRequest`, built directly for the client's own requests (a JSON or bytes body, ASCII URL).

    Both transports send what this builds, so they put the same bytes on the wire.

    `Request.prepare()` re-parses and re-quotes the URL, encodes the JSON with the stdlib and hooks up a
    cookie jar: about 0.3 ms per ask on the benchmark machine. Forms, files and other URLs go through it.
    """
    if files is not None or not (data is None or isinstance(data, (bytes, str))) or not url.isascii():
        request = requests.Request(method, url, headers=dict(headers), params=params, json=json, data=data, files=files)
        return request.prepare()
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}" if params else url
    prepared.headers = CaseInsensitiveDict(headers)
    if json is not None:
        body: bytes | None = dumps_json(json)
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


class RequestsTransport:
    """`requests` with pooled connections, no proxies from the environment and no cookie jar.

    `http_adapter` picks the engine under `requests`: "lean" (default, `lean_http.LeanHTTPAdapter`:
    pooled sockets parsed by llhttp, several times cheaper per request and per open stream) or "urllib3"
    (requests' stock `HTTPAdapter`). `verify` is requests' `verify`: True (certifi's CA bundle), False or
    the path of a CA bundle.
    """

    name = "requests"

    def __init__(self, *, pool_size: int = 64, http_adapter: str = "lean", verify: bool | str = True) -> None:
        if http_adapter not in HTTP_ADAPTERS:
            raise ConfigurationError(f"http_adapter must be one of {', '.join(HTTP_ADAPTERS)}, got {http_adapter!r}")
        session = requests.Session()
        # trust_env=False skips proxy/.netrc lookups on every request (about 0.7 ms each, perf doc 4).
        session.trust_env = False
        session.cookies.set_policy(_RefuseCookies())
        stock = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, pool_block=False, max_retries=0)
        adapter = LeanHTTPAdapter(pool_maxsize=pool_size, fallback=stock) if http_adapter == "lean" else stock
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        self.adapter = adapter
        self.http_adapter = http_adapter
        self.name = "requests" if http_adapter == "lean" else f"requests/{http_adapter}"
        self._verify = verify

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
            response = self.adapter.send(prepared, stream=True, timeout=timeout, verify=self._verify, proxies={})
            # The request (orjson's output buffer is ~16 KB whatever the body size) would otherwise live as
            # long as the response: for an answer stream, minutes.
            response.request = None
        except Exception as exc:
            error = _map_requests_error(exc, url, in_body=False)
            if error is None:
                raise
            raise error from exc
        result = RequestsResponse(response, url)
        if not stream:
            try:
                result._preload()
            finally:
                result.close()
        return result

    def close(self) -> None:
        self._session.close()
