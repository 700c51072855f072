"""Every setting the server reads, with its default, declared once and read from the environment in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SETTINGS", "Setting", "defaults", "settings_from_env"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its Flask config key is the same name."""

    name: str
    default: Any
    kind: type
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("PERPLEXITY_SESSION_TOKEN", None, str, "Value of the __Secure-next-auth.session-token cookie", True),
    Setting("PERPLEXITY_TOKEN_FILE", None, str, "File that keeps the rotated session cookie across restarts"),
    Setting("PERPLEXITY_BASE_URL", "https://www.perplexity.ai", str, "Perplexity web app URL (a fake for tests)"),
    Setting("PERPLEXITY_IMPERSONATE", "auto", str, "curl_cffi browser to impersonate: auto, off, chrome, ..."),
    Setting("PERPLEXITY_CONNECT_TIMEOUT", 10.0, float, "Seconds to connect to Perplexity"),
    Setting("PERPLEXITY_READ_TIMEOUT", 60.0, float, "Longest silence (seconds) accepted from Perplexity mid-answer"),
    Setting("PERPLEXITY_POOL_SIZE", 256, int, "Upstream connections kept per worker"),
    Setting("PERPLEXITY_HTTP_ADAPTER", "lean", str, "Engine under requests (not curl_cffi): lean or urllib3"),
    Setting("PERPLEXITY_MAX_RETRIES", 2, int, "Retries of connect errors, 429 and 5xx before the answer starts"),
    Setting("PERPLEXITY_INCOGNITO", True, bool, "Keep asks out of the account's library"),
    Setting("OPENAI_API_KEY", None, str, "Key clients must send as Bearer token (one key)", True),
    Setting("API_KEYS", None, str, "Comma-separated keys clients may send (several callers)", True),
    Setting("DEFAULT_MODEL", "perplexity-auto", str, "Model used when a request names none"),
    Setting("DEFAULT_CITATION_MODE", "default", str, "default keeps [n], markdown links them, clean drops them"),
    Setting("CONVERSATION_TIMEOUT", 3600, int, "Seconds a conversation's thread is remembered after its last turn"),
    Setting("CONVERSATION_STORE_URI", "memory://", str, "Conversations: memory:// or a redis:// URL (shared)"),
    Setting("HEARTBEAT_INTERVAL", 10.0, float, "Seconds of upstream silence before a ': ping' comment is sent"),
    Setting("MAX_REQUEST_BYTES", 25 * 1024 * 1024, int, "Largest request body accepted (attachments included)"),
    Setting("ENABLE_RATE_LIMITING", False, bool, "Enforce REQUESTS_PER_MINUTE per caller"),
    Setting("REQUESTS_PER_MINUTE", 60, int, "Requests per minute per caller when rate limiting is on"),
    Setting("RATELIMIT_STORAGE_URI", "memory://", str, "Quota counters: memory:// or a redis:// URL (shared)"),
    Setting("MAX_CONCURRENT_STREAMS", 0, int, "Open streams one caller may hold at once (0: no cap)"),
    Setting("TRUST_PROXY", 0, int, "Proxies in front whose X-Forwarded-For is trusted (0: none)"),
    Setting("MODELS_REFRESH_SECONDS", 3600, int, "Seconds the model catalogue is cached before a refresh"),
    Setting("SESSION_CHECK_SECONDS", 300, int, "Seconds the readiness probe caches the session check"),
    Setting("LOG_LEVEL", "INFO", str, "Python log level"),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def defaults() -> dict[str, Any]:
    """Every setting at its default."""
    return {s.name: s.default for s in SETTINGS}


def _parse(setting: Setting, raw: str) -> Any:
    if setting.kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise ValueError(f"{setting.name} must be true or false, not {raw!r}")
    if setting.kind in (int, float):
        return setting.kind(raw.strip())
    return raw.strip() or None


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Read each declared setting from `environ`; a bad value keeps the default and logs why."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name)
        if raw is None:
            continue
        try:
            values[setting.name] = _parse(setting, raw)
        except ValueError:
            shown = "<hidden>" if setting.secret else repr(raw)
            log.warning("ignoring %s=%s: expected %s", setting.name, shown, setting.kind.__name__)
    return values
