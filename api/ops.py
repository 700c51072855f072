"""Ops blueprint: liveness and readiness, exempt from keys and quotas."""

from __future__ import annotations

import time

import orjson
from flask import Blueprint, Response

from .state import state

__all__ = ["bp"]

bp = Blueprint("ops", __name__)


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@bp.get("/health")
def health() -> Response:
    """Liveness: the process answers (seed compatible)."""
    server = state()
    return _json({"status": "ok", "uptime": round(time.time() - server.started, 1)})


@bp.get("/health/ready")
def ready() -> Response:
    """Readiness: a session token is configured (the upstream check arrives with the ops issue)."""
    server = state()
    if not server.config.get("PERPLEXITY_SESSION_TOKEN"):
        return _json({"status": "not_ready", "reason": "PERPLEXITY_SESSION_TOKEN is not set"}, 503)
    return _json({"status": "ready"})
