"""Ops endpoints: liveness, readiness, stats and Prometheus metrics; exempt from keys and quotas."""

from __future__ import annotations

import time

from flask import Blueprint, Response

from .. import lifecycle
from ..state import server_version, state
from ..steps import json_response

__all__ = ["bp"]

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health() -> Response:
    """Liveness: the process answers (seed compatible); no upstream call."""
    return json_response({"status": "ok", "uptime": round(time.time() - state().started, 1)})


@bp.get("/health/ready")
def ready() -> Response:
    """Readiness: 503 with the reason until the session is known valid and the catalogue is loaded."""
    server = state()
    reasons = ["draining: the server is shutting down"] if lifecycle.draining() else []
    reasons += server.store_problems()
    now = time.time()
    accounts = server.pool.accounts
    if not accounts:
        reasons.append("no Perplexity account: set PERPLEXITY_SESSION_TOKEN (or _TOKENS, or ACCOUNTS_FILE)")
    elif not any(account.usable(now) for account in accounts):
        reasons.append("no Perplexity account is usable now (see accounts)")
    else:
        info, error = server.session(max_age=float(server.config["SESSION_CHECK_SECONDS"]))
        if error:
            reasons.append(error)
        if server.models_loaded_at is None:
            server.refresh_models()
        if not server.models_source.startswith("upstream"):
            reasons.append(f"model catalogue not loaded ({server.models_error or 'not yet fetched'})")
    body: dict[str, object] = {"status": "not_ready" if reasons else "ready", "models": server.models_source}
    body["accounts"] = [account.public(now) for account in accounts]
    if reasons:
        body["reasons"] = reasons
    return json_response(body, status=503 if reasons else 200)


@bp.get("/stats")
def stats() -> Response:
    """Counters for humans: version, uptime, requests, streams, conversations, model list source, upstream errors."""
    server = state()
    return json_response(
        {
            "version": server_version(),
            "uptime": round(time.time() - server.started, 1),
            "requests": sum(server.counters.values()),
            "requests_by_route": dict(server.counters),
            "open_streams": server.open_streams,
            "conversations": server.store.count(),
            "models": {
                "source": server.models_source,
                "count": len(server.models.models()),
                "error": server.models_error,
            },
            "upstream_errors": dict(server.upstream_errors),
            "recent_upstream_errors": list(server.recent_upstream_errors),
            "transport": server.client.transport.name if server.pool.accounts else None,
            "accounts": [account.public(time.time()) for account in server.pool.accounts],
        }
    )


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format."""
    server = state()
    server.metrics.set_accounts([account.public(time.time()) for account in server.pool.accounts])
    return Response(server.metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/v1/quota")
def quota() -> Response:
    """Each account's state and quota, as Perplexity reports it (refreshed when older than
    QUOTA_REFRESH_SECONDS); labels only, never a token."""
    server = state()
    max_age = float(server.config["QUOTA_REFRESH_SECONDS"])
    for account in server.pool.accounts:
        server.pool.refresh_quota(account, max_age)
    data = [account.public(time.time()) for account in server.pool.accounts]
    return json_response({"object": "list", "data": data})
