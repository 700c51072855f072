"""The account pool's state in Redis, shared by every worker and instance: each account's state and its open asks.

`<prefix>account:<label>` holds the state an account was last set to (`{"state", "until", "reason",
"fingerprint"}`), expiring when a cooldown ends (a day for `ready` and `expired`); a worker adopts what another
found (a 429, an expired session) instead of learning it again at a client's expense. The fingerprint (a digest of
the token, never the token) ties a state to one token: a new token starts clean. Each account's open asks are
leases in `<prefix>streams:account:<label>` (`StreamLeases`, renewed while they run, lapsing when a worker dies),
so "least busy" counts every worker's asks. When Redis cannot be reached, each worker keeps its own view.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import redis

from .streams import StreamLeases

__all__ = ["SharedAccounts"]

log = logging.getLogger(__name__)

_LONG = 24 * 3600  # seconds a ready or expired state is kept (refreshed by every change and session check)
_COUNT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
return redis.call('ZCARD', KEYS[1])
"""


class SharedAccounts:
    """Account states and open asks in one Redis (module docstring)."""

    def __init__(self, client: redis.Redis, leases: StreamLeases, *, prefix: str = "pplx:") -> None:
        self.redis = client
        self.leases = leases
        self.prefix = prefix
        self._count = client.register_script(_COUNT)
        self._down = False

    def _key(self, label: str) -> str:
        return f"{self.prefix}account:{label}"

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._down:
            self._down = True
            log.warning(
                "account pool: Redis unreachable (%s: %s); each worker keeps its own view", what, type(exc).__name__
            )

    def _answered(self) -> None:
        if self._down:
            self._down = False
            log.info("account pool: Redis answers again; the pool's state is shared")

    def publish(self, label: str, fingerprint: str, state: str, until: float, reason: str | None) -> None:
        """Share an account's new state (wall-clock `until` for a cooldown)."""
        ttl = max(1, round(until - time.time())) if state in ("cooling", "blocked") else _LONG
        record = {"state": state, "until": until, "reason": reason, "fingerprint": fingerprint, "at": time.time()}
        try:
            self.redis.set(self._key(label), orjson.dumps(record), ex=ttl)
        except redis.RedisError as exc:
            self._failed("sharing an account state", exc)
            return
        self._answered()

    def read(self, labels: list[str]) -> dict[str, dict[str, Any]]:
        """The shared states of these accounts (those with none are left out)."""
        if not labels:
            return {}
        try:
            raw = self.redis.mget([self._key(label) for label in labels])
        except redis.RedisError as exc:
            self._failed("reading account states", exc)
            return {}
        self._answered()
        return {label: orjson.loads(value) for label, value in zip(labels, raw, strict=True) if value}

    def opened(self, label: str) -> str | None:
        """Count one more open ask on the account; the lease id to give back (None: not shared)."""
        _, lease = self.leases.acquire(f"account:{label}", 10**9)
        return lease

    def closed(self, label: str, lease: str) -> None:
        """The ask ended."""
        self.leases.release(f"account:{label}", lease)

    def busy(self, labels: list[str]) -> dict[str, int]:
        """Open asks per account, every worker's (empty when Redis cannot say)."""
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for label in labels:
                    self._count(keys=[self.leases.key(f"account:{label}")], client=pipe)
                counts = pipe.execute()
        except redis.RedisError as exc:
            self._failed("counting open asks", exc)
            return {}
        self._answered()
        return dict(zip(labels, (int(c) for c in counts), strict=True))

    def close(self) -> None:
        self.leases.close()
