"""API keys: who may call, and the caller identity that scopes conversations and quotas."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from flask import g, request

from .errors import APIError

__all__ = ["authenticate", "caller", "configured_keys"]

log = logging.getLogger(__name__)


def configured_keys(config: Mapping[str, Any]) -> tuple[bytes, ...]:
    """OPENAI_API_KEY plus the comma-separated API_KEYS, de-duplicated."""
    keys = []
    for raw in (config.get("OPENAI_API_KEY"), *(config.get("API_KEYS") or "").split(",")):
        key = (raw or "").strip()
        if key and key.encode() not in keys:
            keys.append(key.encode())
    return tuple(keys)


def _key_id(key: bytes) -> str:
    return "key:" + hashlib.sha256(key).hexdigest()[:16]


def _client_address() -> str:
    return request.remote_addr or "unknown"


def authenticate(keys: tuple[bytes, ...]) -> None:
    """Check the key (Bearer, else x-api-key; constant time) and record the caller on `g`; 401 when it does not
    match."""
    if not keys:
        g.caller = "ip:" + _client_address()
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    offered = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not offered:  # Anthropic clients send the key as x-api-key (Claude Code's ANTHROPIC_API_KEY)
        offered = request.headers.get("x-api-key", "").strip().encode()
    # Compare against every key so the time taken does not tell which one (or how much) matched.
    matched = None
    for key in keys:
        if hmac.compare_digest(offered, key) and matched is None:
            matched = key
    if matched is None:
        message = (
            "Incorrect API key provided."
            if offered
            else "Missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')."
        )
        raise APIError(401, message, "invalid_request_error", "invalid_api_key")
    g.caller = _key_id(matched)


def caller(body: Mapping[str, Any] | None = None) -> str:
    """The caller id: the key (or address), narrowed by the request's `user`/`safety_identifier`."""
    base = g.get("caller") or "ip:" + _client_address()
    end_user = (body or {}).get("safety_identifier") or (body or {}).get("user")
    return f"{base}/{end_user}" if isinstance(end_user, str) and end_user else base
