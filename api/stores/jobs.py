"""Background responses' events and cancel flags, in this worker's memory or in the response store's Redis."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

__all__ = ["MemoryJobs", "RedisJobs", "open_jobs"]

# Each stored event is `<sequence number>\n<SSE frame>`: the number is kept apart because the cap drops events
# past it (all but the final one), so a position in the list is not always the sequence number.
Frame = tuple[int, bytes]


def _pack(frame: Frame) -> bytes:
    return b"%d\n" % frame[0] + frame[1]


def _unpack(raw: bytes) -> Frame:
    number, _, data = raw.partition(b"\n")
    return int(number), data


class MemoryJobs:
    """Events and cancel flags of this worker's jobs (a memory response store is per worker too)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._events: dict[str, list[bytes]] = {}
        self._cancelled: set[str] = set()
        self._running: dict[str, tuple[str, float]] = {}  # response id -> (account, lease expiry)
        self._born: dict[str, float] = {}  # when each job's events or flag were first kept, for expiry
        self._purged = float("-inf")
        self._lock = threading.Lock()

    def _note(self, response_id: str) -> None:
        """Remember when a job's state was first kept, and drop what is past `ttl` (a scan at most once a minute),
        as the stored responses they belong to expire."""
        now = time.time()
        self._born.setdefault(response_id, now)
        if now - self._purged < min(60.0, self.ttl):
            return
        self._purged = now
        for rid in [rid for rid, born in self._born.items() if now - born > self.ttl]:
            self._events.pop(rid, None)
            self._cancelled.discard(rid)
            del self._born[rid]

    def admit(self, response_id: str, account: str, lease: float, max_total: int, max_per_account: int) -> bool:
        """Take a running slot with a lease of `lease` seconds, unless a cap (0: none) is reached."""
        with self._lock:
            now = time.time()
            self._running = {rid: held for rid, held in self._running.items() if held[1] > now}
            if max_total and len(self._running) >= max_total:
                return False
            if max_per_account and sum(1 for held in self._running.values() if held[0] == account) >= max_per_account:
                return False
            self._running[response_id] = (account, now + lease)
            return True

    def renew(self, response_id: str, account: str, lease: float) -> None:
        with self._lock:
            if response_id in self._running:
                self._running[response_id] = (account, time.time() + lease)

    def finish(self, response_id: str, account: str) -> None:
        with self._lock:
            self._running.pop(response_id, None)

    def alive(self, response_id: str) -> bool:
        """Whether the job's runner renewed its lease in time."""
        held = self._running.get(response_id)
        return held is not None and held[1] > time.time()

    def append(self, response_id: str, frames: list[Frame]) -> None:
        with self._lock:
            self._note(response_id)
            self._events.setdefault(response_id, []).extend(_pack(frame) for frame in frames)

    def read(self, response_id: str, start: int) -> list[Frame]:
        """The stored events from position `start` on."""
        with self._lock:
            return [_unpack(raw) for raw in self._events.get(response_id, [])[start:]]

    def cancel(self, response_id: str) -> None:
        with self._lock:
            self._note(response_id)
            self._cancelled.add(response_id)

    def cancelled(self, response_id: str) -> bool:
        return response_id in self._cancelled

    def forget(self, response_id: str) -> None:
        with self._lock:
            self._events.pop(response_id, None)
            self._cancelled.discard(response_id)
            self._born.pop(response_id, None)


# Running jobs are sorted sets (all, and per account) of response ids scored by lease expiry; admission drops the
# lapsed ones and checks both caps atomically, so workers and instances cannot slip past them together.
_LUA_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
if tonumber(ARGV[5]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""


class RedisJobs:
    """The same in Redis (`job:<id>:events` a list, `job:<id>:cancel` a flag, `jobs:running[:<account>]` the
    leases), so any worker follows, cancels or judges a job; all expire. Redis errors propagate: the callers'
    requests fail as any other Redis failure of theirs would."""

    def __init__(self, client: redis.Redis, ttl: float, prefix: str = "pplx:") -> None:
        self.redis = client
        self.ttl = max(1, int(ttl))
        self.prefix = prefix
        self._admit = client.register_script(_LUA_ADMIT)

    def _sets(self, account: str) -> list[str]:
        return [f"{self.prefix}jobs:running", f"{self.prefix}jobs:running:{account}"]

    def admit(self, response_id: str, account: str, lease: float, max_total: int, max_per_account: int) -> bool:
        now = time.time()
        args = [now, now + lease, response_id, max_total, max_per_account, self.ttl]
        return bool(self._admit(keys=self._sets(account), args=args))

    def renew(self, response_id: str, account: str, lease: float) -> None:
        expiry = time.time() + lease
        with self.redis.pipeline() as pipe:
            for key in self._sets(account):
                pipe.zadd(key, {response_id: expiry}, xx=True)
            pipe.execute()

    def finish(self, response_id: str, account: str) -> None:
        with self.redis.pipeline() as pipe:
            for key in self._sets(account):
                pipe.zrem(key, response_id)
            pipe.execute()

    def alive(self, response_id: str) -> bool:
        expiry = self.redis.zscore(f"{self.prefix}jobs:running", response_id)
        return expiry is not None and expiry > time.time()

    def append(self, response_id: str, frames: list[Frame]) -> None:
        key = f"{self.prefix}job:{response_id}:events"
        with self.redis.pipeline() as pipe:
            pipe.rpush(key, *(_pack(frame) for frame in frames))
            pipe.expire(key, self.ttl)
            pipe.execute()

    def read(self, response_id: str, start: int) -> list[Frame]:
        return [_unpack(raw) for raw in self.redis.lrange(f"{self.prefix}job:{response_id}:events", start, -1)]

    def cancel(self, response_id: str) -> None:
        self.redis.set(f"{self.prefix}job:{response_id}:cancel", b"1", ex=self.ttl)

    def cancelled(self, response_id: str) -> bool:
        return bool(self.redis.exists(f"{self.prefix}job:{response_id}:cancel"))

    def forget(self, response_id: str) -> None:
        self.redis.delete(f"{self.prefix}job:{response_id}:events", f"{self.prefix}job:{response_id}:cancel")


def open_jobs(responses: Any, ttl: float) -> MemoryJobs | RedisJobs:
    """Jobs beside the response store: in its Redis when it has one, so polls and cancels reach any worker."""
    client = getattr(responses, "redis", None)
    return RedisJobs(client, ttl) if client is not None else MemoryJobs(ttl)
