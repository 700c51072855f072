"""Stream slots shared by every worker and instance: per-caller leases in Redis that lapse when a worker dies."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis

from .redis_store import redis_client

__all__ = ["StreamLeases", "open_stream_leases"]

log = logging.getLogger(__name__)

# redis-py's own schemes; limits' `redis+sentinel://` / `redis+cluster://` are not URLs redis-py can open.
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

# Redis's clock, not the instances': hosts whose clocks disagree still agree on when a lease lapses.
# (replicate_commands lets a script write after TIME on Redis < 5; later versions do it anyway.)
_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1]: the caller's slots; ARGV: cap, lease (ms), slot id. Drop lapsed leases, count, add when under the cap.
_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS[1]: one caller's slots; ARGV: lease (ms), then the ids this process still holds. Only ids still in the set
# are extended (XX): one that lapsed and was dropped is not brought back, since its place may have been taken.
_RENEW = (
    _NOW
    + """
local renewed = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return renewed
"""
)


class StreamLeases:
    """Each caller's open streams as a Redis sorted set of slot ids scored by lease expiry (`<prefix>streams:<caller>`).

    Admission is one Lua script (drop lapsed leases, count, add under the cap), so workers and instances racing
    for the last slot cannot both win. One renewer per process extends its slots' leases every third of a lease;
    a release removes the id. A killed worker renews nothing, so its slots come back within one lease. When Redis
    cannot be reached, `acquire` admits (the worker's own count then decides) and Redis is left alone for
    `retry_after` seconds; one warning per outage.
    """

    def __init__(
        self,
        client: redis.Redis,
        lease: float,
        *,
        prefix: str = "pplx:",
        retry_after: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = client
        self.lease_ms = max(1, round(lease * 1000))
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._host = socket.gethostname()
        # Slot id -> caller, the slots this process renews. Touched only by single dict operations, which need no
        # lock: `abandon` runs in finalizers, where taking a lock the interrupted code holds would deadlock.
        self._held: dict[str, str] = {}
        self._starting = threading.Lock()
        self._retry_after = retry_after
        self._clock = clock
        self._retry_at = float("-inf")
        self._down = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def key(self, caller: str) -> str:
        """The Redis key of `caller`'s slots."""
        return f"{self.prefix}streams:{caller}"

    def acquire(self, caller: str, cap: int) -> tuple[bool, str | None]:
        """(admitted, slot id to release). (False, None): the caller holds `cap` slots already. (True, None): Redis
        cannot be reached, so nothing is shared and the worker's own count is all that holds the cap."""
        if self._clock() < self._retry_at:
            return True, None
        # The pid names the worker that holds a slot (for an operator looking at Redis, and for the tests).
        slot = f"{self._host}:{os.getpid()}:{uuid.uuid4().hex[:16]}"
        try:
            admitted = self._acquire(keys=[self.key(caller)], args=[cap, self.lease_ms, slot])
        except redis.RedisError as exc:
            # A reply lost after the script ran leaves an unrenewed id behind: it lapses within one lease.
            self._failed("admitting a stream", exc)
            return True, None
        self._answered()
        if not admitted:
            return False, None
        self._held[slot] = caller
        self._start_renewer()
        return True, slot

    def release(self, caller: str, slot: str) -> None:
        """Give a slot back now (a failure is logged; the unrenewed lease lapses anyway)."""
        self._held.pop(slot, None)
        try:
            self.redis.zrem(self.key(caller), slot)
        except redis.RedisError as exc:
            self._failed("releasing a stream", exc)
            return
        self._answered()

    def abandon(self, slot: str) -> None:
        """Stop renewing a slot without talking to Redis (for finalizers, which must not switch greenlets)."""
        self._held.pop(slot, None)

    def held(self) -> int:
        """Slots this process holds and renews."""
        return len(self._held)

    def renew(self) -> int:
        """Extend the lease of every slot this process holds; how many Redis still had."""
        held = list(self._held.items())
        if not held:
            return 0
        by_caller: dict[str, list[str]] = {}
        for slot, caller in held:
            by_caller.setdefault(caller, []).append(slot)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for caller, slots in by_caller.items():
                self._renew(keys=[self.key(caller)], args=[self.lease_ms, *slots], client=pipe)
            renewed = sum(pipe.execute())
        except redis.RedisError as exc:
            self._failed("renewing stream leases", exc)
            return 0
        self._answered()
        return int(renewed)

    def close(self) -> None:
        """Stop renewing and give back every slot still held (a worker's exit)."""
        self._stop.set()
        atexit.unregister(self.close)
        held, self._held = list(self._held.items()), {}
        if not held:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for slot, caller in held:
                pipe.zrem(self.key(caller), slot)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning(
                "stream cap: could not release %d slots on exit (%s); they lapse", len(held), type(exc).__name__
            )

    # ---- the renewer and outages ---------------------------------------------------------------------------

    def _start_renewer(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            return
        with self._starting:
            # Started on first use, in the worker (after gunicorn's fork), a greenlet under gevent's patching.
            if (self._renewer is None or not self._renewer.is_alive()) and not self._stop.is_set():
                self._renewer = threading.Thread(target=self._run, name="stream-leases", daemon=True)
                self._renewer.start()
                atexit.register(self.close)  # a worker that exits gives its slots back at once

    def _run(self) -> None:
        interval = self.lease_ms / 3000
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception:  # the renewer must outlive any surprise, or every stream's lease would lapse
                log.exception("stream cap: renewing leases failed")

    def _failed(self, what: str, exc: Exception) -> None:
        self._retry_at = self._clock() + self._retry_after
        if not self._down:
            self._down = True
            log.warning(
                "stream cap: Redis unreachable (%s: %s); each worker counts only its own streams until it answers",
                what,
                type(exc).__name__,
            )

    def _answered(self) -> None:
        if self._down:
            self._down = False
            log.info("stream cap: Redis answers again; the cap is shared by workers and instances")


def open_stream_leases(config: Mapping[str, Any]) -> StreamLeases | None:
    """Shared stream slots when a stream cap may apply (MAX_CONCURRENT_STREAMS, or API_KEYS_FILE whose keys may
    have their own `streams`) and RATELIMIT_STORAGE_URI (where quotas live) is a Redis URL; None otherwise (each
    worker counts its own)."""
    if not int(config.get("MAX_CONCURRENT_STREAMS") or 0) and not config.get("API_KEYS_FILE"):
        return None
    uri = str(config.get("RATELIMIT_STORAGE_URI") or "memory://")
    if not uri.startswith(_REDIS_SCHEMES):
        if uri.startswith("redis"):
            log.warning("stream cap: counted per worker; %s URLs are not supported for it", uri.split("://")[0])
        return None
    return StreamLeases(redis_client(uri), float(config["STREAM_LEASE_SECONDS"]))
