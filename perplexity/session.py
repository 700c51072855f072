"""The Perplexity session cookie: held in memory, sent on each request, updated when the server rotates it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

__all__ = ["COOKIE_NAME", "SessionCookie"]

COOKIE_NAME = "__Secure-next-auth.session-token"

log = logging.getLogger(__name__)


class SessionCookie:
    """The session token (possibly split by NextAuth into `.0`, `.1`, ... chunks); never printed."""

    def __init__(self, token: str | None, *, on_rotate: Callable[[str], None] | None = None) -> None:
        self._parts: dict[str, str] = {COOKIE_NAME: token.strip()} if token and token.strip() else {}
        self._on_rotate = on_rotate
        self._lock = threading.Lock()
        self.rotations = 0

    def __repr__(self) -> str:
        return f"SessionCookie({'set' if self._parts else 'missing'}, rotations={self.rotations})"

    @property
    def present(self) -> bool:
        """True when a token is configured."""
        return bool(self._parts)

    @property
    def value(self) -> str | None:
        """The whole token (chunks joined in order); only for persisting it, never for logs."""
        if COOKIE_NAME in self._parts:
            return self._parts[COOKIE_NAME]
        chunks = sorted((k for k in self._parts if k.startswith(COOKIE_NAME + ".")), key=_chunk_index)
        return "".join(self._parts[k] for k in chunks) or None

    def secrets(self) -> list[str]:
        """Every cookie value, for redaction."""
        return list(self._parts.values())

    def header(self) -> str:
        """The `Cookie` header value."""
        return "; ".join(f"{name}={value}" for name, value in self._parts.items())

    def update_from(self, set_cookies: Mapping[str, str]) -> bool:
        """Adopt a rotated token from a response's cookies; True when it changed."""
        fresh = {k: v for k, v in set_cookies.items() if k == COOKIE_NAME or k.startswith(COOKIE_NAME + ".")}
        fresh = {k: v for k, v in fresh.items() if v}  # an empty value is a deletion, not a new token
        if not fresh:
            return False
        with self._lock:
            if all(self._parts.get(k) == v for k, v in fresh.items()):
                return False
            if COOKIE_NAME in fresh:
                self._parts = {COOKIE_NAME: fresh[COOKIE_NAME]}
            else:  # a new chunked cookie replaces the whole token
                self._parts = dict(fresh)
            self.rotations += 1
            value = self.value
        log.info("Perplexity rotated the session cookie (rotation %d); using the new one", self.rotations)
        if self._on_rotate is not None and value:
            try:
                self._on_rotate(value)
            except Exception:  # persisting is best effort; the in-memory token already works
                log.exception("could not persist the rotated session cookie")
        return True


def _chunk_index(name: str) -> int:
    suffix = name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0
