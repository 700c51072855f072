"""The HTTP transport seam: plain `requests`, or curl_cffi with a browser TLS fingerprint, behind one interface.

The client sends every request through `Transport.request` and reads bodies through `TransportResponse`.
Two implementations:

- `CurlTransport`, the production engine: curl_cffi (libcurl-impersonate) for Cloudflare, which answers
  plain `requests` with a 403 challenge. It speaks as Chrome does: its TLS fingerprint, HTTP/2 negotiated by
  ALPN, and every stream to one origin multiplexed over a shared connection. libcurl is C code that monkey
  patching cannot make cooperative, so under gevent no curl call ever blocks: one multi handle per hub, driven
  through libcurl's event interface from a greenlet of its own (`curl_hub`), and each reader waits on the hub.
  No OS thread per stream, so no cap on concurrent streams.
- `RequestsTransport`, the fallback for a base URL that is not impersonated (the fake upstream in tests, a
  local proxy): one `requests.Session` on urllib3, cooperative under gevent through monkey patching.

Both can time a wait and carry on (`supports_idle`): the caller reads a silent stream and still acts on its
own ticks, with no reader greenlet and queue of its own.

Error mapping (the same for both): the connection could not be made, including a connect timeout and a
failed TLS handshake → `UpstreamConnectError` (nothing reached the server, so a retry is safe; a connect
timeout is mapped here rather than to `UpstreamTimeoutError` for that reason); no byte for `read` seconds,
before or during the body → `UpstreamTimeoutError`; anything else that breaks the exchange after the
request may have been sent (reset, truncated body, bad chunking or content encoding) → `TransportError`.
Messages name the host and the failure, never header values.

Neither transport keeps cookies: the caller sends its `Cookie` header on every request, and
`TransportResponse.set_cookies` reports what a response set. Redirects are not followed.

Proxy (`perplexity.proxy`): with one, every request goes through it (an https target through a CONNECT tunnel
or SOCKS, so the proxy never sees the cookie; a plain-http one is forwarded as is), and the environment's
*_proxy and no_proxy variables are ignored either way. A failure to reach or pass the proxy (refused,
unreachable, its 407) is an `UpstreamConnectError` naming the proxy with its password masked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from perplexity.errors import ConfigurationError

__all__ = [  # RequestsTransport and CurlTransport are importable from here too (module __getattr__)
    "Transport",
    "TransportResponse",
    "make_transport",
    "parse_set_cookies",
    "resolve_impersonation",
]

_READ_SIZE = 64 * 1024
_OFF_VALUES = frozenset({"off", "false", "0", "none", "no"})
_AUTO_VALUES = frozenset({"", "auto"})


class TransportResponse(Protocol):
    """An HTTP response whose status and headers have arrived; the body is read on demand."""

    status_code: int
    headers: Mapping[str, str]
    set_cookies: dict[str, str]

    def iter_bytes(self) -> Iterator[bytes]:
        """Yield body chunks (content-encoding removed) as soon as they arrive.

        A response whose `supports_idle` attribute is true also takes `iter_bytes(next_tick=f)`: it then
        yields b"" whenever `f()` (seconds until the caller's next tick) runs out with no byte in (the read
        timeout still applies), and its `buffered` property tells whether the next chunk has arrived.
        """
        ...

    def read(self, limit: int = 1 << 20) -> bytes:
        """Return the whole body, cut at `limit` bytes."""
        ...

    def close(self) -> None:
        """Release the response; a body not read to the end aborts its connection. Idempotent."""
        ...


class Transport(Protocol):
    """Sends one HTTP request and returns the response once its headers are in."""

    name: str

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
    ) -> TransportResponse:
        """Send a request; `timeout` is (connect, read) seconds, read being the longest gap between bytes."""
        ...

    def close(self) -> None:
        """Close pooled connections."""
        ...


# --- choosing a transport ----------------------------------------------------------------------------


def resolve_impersonation(setting: str | None, base_url: str) -> str | None:
    """Turn the PERPLEXITY_IMPERSONATE setting into a curl_cffi target, or None for plain `requests`.

    Unset, "" or "auto": "chrome" when `base_url` is perplexity.ai (or a subdomain) and curl_cffi can be
    imported, else None. "off"/"false"/"0"/"none"/"no": None. Anything else is a target name such as
    "chrome", "chrome131" or "safari", and needs curl_cffi.
    """
    value = (setting or "").strip()
    if value.lower() in _OFF_VALUES:
        return None
    if value.lower() in _AUTO_VALUES:
        host = (urlsplit(base_url).hostname or "").lower()
        on_perplexity = host == "perplexity.ai" or host.endswith(".perplexity.ai")
        return "chrome" if on_perplexity and _curl_cffi_available() else None
    if not _curl_cffi_available():
        raise ConfigurationError(f"PERPLEXITY_IMPERSONATE={value!r} needs the curl_cffi package")
    return value


def make_transport(
    *,
    base_url: str,
    impersonate: str | None = None,
    pool_size: int = 64,
    ca_bundle: str | None = None,
    proxy: str | None = None,
) -> Transport:
    """Build the transport for `base_url`: curl_cffi impersonating `impersonate`, or `requests` if None.

    `impersonate` is a resolved target, as `resolve_impersonation` returns it (None means plain
    `requests`, even for perplexity.ai). `pool_size` bounds the idle connections kept (for curl, the
    idle easy handles). `ca_bundle` is the CA file to trust (default: certifi's bundle), for an
    `https://` proxy too. `proxy` (http://, https://, socks5:// or socks5h://, with optional
    user:password) carries every request, whatever the environment's *_proxy variables say.
    """
    if urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigurationError(f"base URL must be http(s), got {base_url!r}")
    if pool_size < 1:
        raise ConfigurationError("pool_size must be at least 1")
    if impersonate is None:
        from .requests_transport import RequestsTransport

        return RequestsTransport(pool_size=pool_size, ca_bundle=ca_bundle, proxy=proxy)
    if not _curl_cffi_available():
        raise ConfigurationError(f"impersonating {impersonate!r} needs the curl_cffi package")
    from .curl_transport import CurlTransport

    return CurlTransport(impersonate=impersonate, pool_size=pool_size, ca_bundle=ca_bundle, proxy=proxy)


def _curl_cffi_available() -> bool:
    try:
        import curl_cffi  # noqa: F401
    except ImportError:
        return False
    return True


# --- shared helpers ----------------------------------------------------------------------------------


def parse_set_cookies(values: Iterable[str]) -> dict[str, str]:
    """Map cookie name to value for each `Set-Cookie` header value (attributes are dropped).

    Only the cookie-pair before the first ";" matters to the caller (RFC 6265 section 5.2), so this does
    not use a cookie jar, which would silently refuse cookies for a "foreign" domain.
    """
    cookies: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.split(";", 1)[0].partition("=")
        name = name.strip()
        if sep and name:
            cookies[name] = rest.strip()
    return cookies


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url[:64]


def _gevent_patched() -> bool:
    """True when gevent has monkey-patched sockets (a gevent worker): waits then belong on the hub."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("socket"))


def _read_limited(response: TransportResponse, limit: int) -> bytes:
    """Collect the body up to `limit` bytes; a longer body is cut and its connection closed."""
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    finally:
        response.close()
    return b"".join(parts)[:limit]


def __getattr__(name: str) -> Any:
    # The implementations live in their own modules (and curl_cffi loads only when used); these names
    # stay importable from here.
    if name in ("RequestsTransport", "RequestsResponse"):
        from . import requests_transport

        return getattr(requests_transport, name)
    if name in ("CurlTransport", "CurlResponse"):
        from . import curl_transport

        return getattr(curl_transport, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
