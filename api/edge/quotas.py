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

__all__ = ["check_stream_cap", "init_app", "refuse_stream"]

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
