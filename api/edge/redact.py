"""One redaction for every string that leaves the server: the live session token(s), every API key, and the
cookie, Bearer and key patterns, masked before text reaches a client or a log line.

The secrets are registered once (`register`: the configured keys and token) plus sources read on each use
(`register_source`: the client's live cookie, which Perplexity rotates). Each is matched as it is, in any case,
and URL-encoded, so `Cookie: __Secure-next-auth.session-token=...`, `sk-...` keys echoed in lower case or as
`?api_key=sk%2D...` are all caught. `RedactFilter` applies it to every log record of the process.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

from perplexity.errors import redact as redact_patterns

__all__ = ["RedactFilter", "redact", "register", "register_source", "reset"]

MASK = "***"
# Shorter values would mask ordinary words; keys and tokens are far longer than this.
_MIN_SECRET = 8
# Secret-looking values after a key name, beyond the cookie/JWT patterns of `perplexity.errors.redact`.
_PATTERNS = (
    re.compile(r"(\bbearer\s+)[^\s\"',;]+", re.I),
    re.compile(r"(\bx-api-key\"?\s*[:=]\s*\"?)[^\s\"',;]+", re.I),
    re.compile(r"((?:[?&]|\b)(?:api[_-]?key|access[_-]?token|auth[_-]?token|token|key)=)[^&\s\"',;]+", re.I),
)

_lock = threading.Lock()
_static: set[str] = set()
_sources: list[Callable[[], Iterable[str]]] = []
_compiled: tuple[tuple[str, ...], re.Pattern[str] | None] = ((), None)


def register(*secrets: str | None) -> None:
    """Mask these values from now on (API keys, the configured session token)."""
    with _lock:
        _static.update(s.strip() for s in secrets if s and len(s.strip()) >= _MIN_SECRET)


def register_source(source: Callable[[], Iterable[str]]) -> None:
    """Mask the values `source()` returns at each use (a secret that changes, such as a rotated cookie)."""
    with _lock:
        _sources.append(source)


def reset() -> None:
    """Forget every secret and source (a new app in the same process, tests)."""
    global _compiled
    with _lock:
        _static.clear()
        _sources.clear()
        _compiled = ((), None)


def _secrets() -> tuple[str, ...]:
    values = set(_static)
    for source in list(_sources):
        try:
            values.update(s for s in source() if s and len(s) >= _MIN_SECRET)
        except Exception:  # a source must never break logging or an error response
            continue
    return tuple(sorted(values, key=len, reverse=True))


def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    global _compiled
    cached_for, pattern = _compiled
    if cached_for == secrets:
        return pattern
    forms = {form for secret in secrets for form in (secret, quote(secret, safe=""), quote_plus(secret))}
    # Longest first, so a secret is masked whole rather than a shorter one inside it.
    alternatives = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    pattern = re.compile(alternatives, re.I) if alternatives else None
    _compiled = (secrets, pattern)
    return pattern


def redact(text: str) -> str:
    """`text` with every known secret (any case, URL-encoded) and every secret-looking value masked."""
    if not text:
        return text
    pattern = _pattern(_secrets())
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for key_pattern in _PATTERNS:
        text = key_pattern.sub(lambda m: m.group(1) + MASK, text)
    return redact_patterns(text)


class RedactFilter(logging.Filter):
    """Masks secrets in every record that passes (message and arguments, rendered once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned is not message:
            record.msg, record.args = cleaned, ()
        return True
