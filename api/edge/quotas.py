"""Quotas: requests per minute per caller (flask-limiter; a key's own `rpm` from API_KEYS_FILE replaces
REQUESTS_PER_MINUTE for it) and a cap on each caller's concurrent streams."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, NoReturn

from flask import Flask, Response, g, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from .errors import APIError

__all__ = ["CallerQuota", "check_stream_cap", "init_app", "refuse_stream"]

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = ("/health", "/metrics", "/docs", "/openapi.json", "/console")  # probes, pages and assets


def _caller_key() -> str:
    # Set by authentication, which runs first: the API key's id, or the client address when open.
    return g.get("caller") or request.remote_addr or "unknown"


def _key_rpm() -> int | None:
    entry = g.get("key")  # set by authentication (api.edge.auth)
    return entry.rpm if entry is not None else None


def _storage_options(uri: str) -> dict[str, Any]:
    if uri.startswith(("redis://", "rediss://", "redis+")):
        # A hung Redis must cost at most a fraction of a second per request (limits then fall back to memory).
        return {"socket_connect_timeout": 0.25, "socket_timeout": 0.25, "health_check_interval": 30}
    return {}


class _FallbackLimiter(Limiter):
    """flask-limiter whose in-memory fallback also covers the burst in flight when the storage goes away.

    The library marks the storage dead at the first failure and re-checks that request in memory, but every
    request already waiting on the storage then fails too and was let through (with `swallow_errors`), each
    logging a traceback: a hung Redis opened the quota wide. Policy: from the first failure, every request is
    counted in the worker's memory until the storage answers again (the library probes it and says so); one
    warning per outage, from the library.
    """

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        try:
            super()._check_request_limit(callable_name, in_middleware)
        except RateLimitExceeded:
            raise
        except Exception:
            if not self._storage_dead:  # not a storage outage: a real error
                raise
            self.context.seen_limits.clear()
            super()._check_request_limit(callable_name, in_middleware)  # against the in-memory fallback


def init_app(app: Flask, metrics: Any) -> Limiter | None:
    """Install the per-caller request quota when ENABLE_RATE_LIMITING is on, or when API_KEYS_FILE may give a key
    its own `rpm` (that applies whether or not ENABLE_RATE_LIMITING is on: the file asked for it explicitly)."""
    enabled = bool(app.config["ENABLE_RATE_LIMITING"])
    if not enabled and not app.config.get("API_KEYS_FILE"):
        return None
    default = int(app.config["REQUESTS_PER_MINUTE"])

    def limit() -> str:
        return f"{_key_rpm() or default} per minute"

    def exempt() -> bool:
        return request.path.startswith(EXEMPT_PREFIXES) or (not enabled and _key_rpm() is None)

    uri = str(app.config["RATELIMIT_STORAGE_URI"])
    limiter = _FallbackLimiter(
        _caller_key,
        # One budget per caller across every route (default_limits would count each route apart), read per
        # request: a key's rpm changes with the file. The storage key names the amount, so a changed rpm counts
        # afresh.
        application_limits=[limit],
        application_limits_exempt_when=exempt,
        storage_uri=uri,
        storage_options=_storage_options(uri),
        strategy="moving-window",
        headers_enabled=False,  # OpenAI-named headers are set below
        swallow_errors=False,  # storage errors fail over to memory (_FallbackLimiter), never open the quota
        in_memory_fallback_enabled=True,
    )
    limiter.init_app(app)

    @app.after_request
    def _quota_headers(response: Response) -> Response:
        current = limiter.current_limit
        if current is None or request.path.startswith(EXEMPT_PREFIXES):
            return response
        reset = max(1, math.ceil(current.reset_at - time.time()))
        response.headers["x-ratelimit-limit-requests"] = str(current.limit.amount)
        response.headers["x-ratelimit-remaining-requests"] = str(max(0, current.remaining))
        response.headers["x-ratelimit-reset-requests"] = f"{reset}s"
        if response.status_code == 429 and current.breached:
            response.headers["retry-after"] = str(reset)
            metrics.rate_limited.labels("requests_per_minute").inc()
        return response

    return limiter


class CallerQuota:
    """The same per-caller budget as the HTTP API's, for work that does not pass through Flask (MCP's HTTP mode).

    flask-limiter counts an application limit under (caller, "global") with the moving window in
    RATELIMIT_STORAGE_URI; hitting the same item under the same identifiers in the same storage spends the same
    budget, so a key's `rpm` covers its /v1 requests and its MCP tool calls together (across processes with
    Redis; a memory storage counts this process's calls only). While the storage fails, calls are counted in
    memory, as the HTTP API does.
    """

    def __init__(self, config: Any) -> None:
        from limits import storage as limit_storage
        from limits.strategies import MovingWindowRateLimiter

        uri = str(config["RATELIMIT_STORAGE_URI"])
        self._enabled = bool(config["ENABLE_RATE_LIMITING"])
        self._default = int(config["REQUESTS_PER_MINUTE"])
        self._limiter = MovingWindowRateLimiter(limit_storage.storage_from_string(uri, **_storage_options(uri)))
        self._fallback = MovingWindowRateLimiter(limit_storage.MemoryStorage())
        self._failing = False  # one warning per outage

    def spend(self, caller: str, rpm: int | None) -> None:
        """Count one call of `caller` (its key's `rpm`, else REQUESTS_PER_MINUTE when rate limiting is on); a 429
        APIError with the seconds to wait when the budget is spent."""
        from limits import RateLimitItemPerMinute

        if rpm is None and not self._enabled:
            return
        item = RateLimitItemPerMinute(rpm or self._default)
        try:
            allowed, limiter = self._limiter.hit(item, caller, "global"), self._limiter
            self._failing = False
        except Exception as exc:  # noqa: BLE001 - a storage outage: count in memory, never open the quota
            if not self._failing:
                log.warning("rate-limit storage failed (%s); counting in this process's memory", type(exc).__name__)
            self._failing = True
            allowed, limiter = self._fallback.hit(item, caller, "global"), self._fallback
        if not allowed:
            reset = max(1, math.ceil(limiter.get_window_stats(item, caller, "global").reset_time - time.time()))
            raise APIError(
                429,
                f"Rate limit reached for requests: {item.amount} per minute; retry in {reset}s.",
                "requests",
                "rate_limit_exceeded",
                headers={"retry-after": str(reset)},
            )


def check_stream_cap(open_for_caller: int, cap: int, metrics: Any) -> None:
    """429 when the caller already holds `cap` open streams (0 means no cap)."""
    if cap and open_for_caller >= cap:
        refuse_stream(cap, metrics)


def refuse_stream(cap: int, metrics: Any) -> NoReturn:
    """The 429 of a caller at its stream cap (counted once, whichever count refused it)."""
    metrics.rate_limited.labels("concurrent_streams").inc()
    raise APIError(
        429,
        f"Too many concurrent streams for this key (limit {cap}); close one or retry shortly.",
        "requests",
        "concurrent_streams_exceeded",
        headers={"retry-after": "1"},
    )
