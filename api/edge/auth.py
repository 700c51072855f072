"""API keys: who may call, the caller identity that scopes conversations and quotas, and each key's policy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import g, request

from ..core.keys import KeyEntry, KeyRing
from . import redact
from .errors import APIError

__all__ = ["authenticate", "caller", "check_model", "configured_keys", "key_entry", "key_ring", "stream_cap"]

log = logging.getLogger(__name__)


def configured_keys(config: Mapping[str, Any]) -> tuple[bytes, ...]:
    """OPENAI_API_KEY plus the comma-separated API_KEYS, de-duplicated."""
    keys = []
    for raw in (config.get("OPENAI_API_KEY"), *(config.get("API_KEYS") or "").split(",")):
        key = (raw or "").strip()
        if key and key.encode() not in keys:
            keys.append(key.encode())
    return tuple(keys)


def key_ring(config: Mapping[str, Any]) -> KeyRing:
    """The keys of OPENAI_API_KEY / API_KEYS and API_KEYS_FILE (KeyFileError when the file cannot be used); every
    key the file lists, now or after a reload, is masked in logs and errors from then on."""
    return KeyRing(
        configured_keys(config),
        config.get("API_KEYS_FILE"),
        on_load=lambda keys: redact.register(*(key.decode() for key in keys)),
    )


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _offered() -> bytes:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    offered = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not offered:  # Anthropic clients send the key as x-api-key (Claude Code's ANTHROPIC_API_KEY)
        offered = request.headers.get("x-api-key", "").strip().encode()
    return offered


def authenticate(ring: KeyRing) -> None:
    """Check the key (Bearer, else x-api-key; looked up by digest, constant time) and record the caller and the
    key's entry on `g`; 401 when it matches no key or has expired."""
    table = ring.table()
    if table.open:
        g.caller = "ip:" + _client_address()
        return
    offered = _offered()
    entry = table.lookup(offered)
    if entry is None:
        message = (
            "Incorrect API key provided."
            if offered
            else "Missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')."
        )
        raise APIError(401, message, "invalid_request_error", "invalid_api_key")
    request.environ["pplx.key"] = entry.label  # for the access log (gunicorn.conf.py)
    g.key = entry
    if entry.expired():
        when = entry.expires.strftime("%Y-%m-%dT%H:%M:%SZ") if entry.expires else ""
        message = f"This API key expired at {when}; ask for a new one."
        raise APIError(401, message, "invalid_request_error", "invalid_api_key")
    g.caller = entry.caller


def key_entry() -> KeyEntry | None:
    """The request's key (None on an open server or a public path)."""
    return g.get("key")


def check_model(asked: str | None, resolved: str) -> None:
    """403 `model_not_allowed` unless the request's key may use the model: the id it asked for (an alias, a Sonar
    or Anthropic name) or the public id that resolved to matches one of the key's `models`."""
    entry = key_entry()
    refusal = entry.refusal(asked, resolved) if entry is not None else None
    if refusal is not None:
        raise APIError(403, refusal, "permission_error", "model_not_allowed", param="model")


def stream_cap(default: int) -> int:
    """The caller's concurrent stream cap: its key's `streams`, else MAX_CONCURRENT_STREAMS (0: no cap)."""
    entry = key_entry()
    return entry.streams if entry is not None and entry.streams is not None else default


def caller(body: Mapping[str, Any] | None = None) -> str:
    """The caller id: the key (or address), narrowed by the request's `user`/`safety_identifier`."""
    base = g.get("caller") or "ip:" + _client_address()
    end_user = (body or {}).get("safety_identifier") or (body or {}).get("user")
    return f"{base}/{end_user}" if isinstance(end_user, str) and end_user else base
