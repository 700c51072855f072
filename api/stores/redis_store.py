"""Conversations and stored responses in Redis, so every worker and instance continues the same threads."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from .records import MAX_CHAIN, Conversation, StoredResponse, account_of

__all__ = ["RedisConversationStore", "RedisResponseStore", "redis_client"]

log = logging.getLogger(__name__)


def redis_client(url: str) -> redis.Redis:
    """A client with short timeouts: a hung Redis must not hang requests (the stores degrade instead)."""
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5, health_check_interval=30)


class _Outage:
    """Whether the stores' Redis answered its last call: one warning when it stops, one line when it is back."""

    down_since: float | None = None

    @classmethod
    def failed(cls, what: str, exc: Exception) -> None:
        if cls.down_since is None:
            cls.down_since = time.monotonic()
            log.warning(
                "redis store unreachable (%s failed: %s): follow-ups start new threads and stored responses are "
                "not found until it answers again",
                what,
                type(exc).__name__,  # no details: they could hold data
            )

    @classmethod
    def answered(cls) -> None:
        if cls.down_since is not None:
            log.info("redis store reachable again after %.0fs", time.monotonic() - cls.down_since)
            cls.down_since = None


def _guarded(what: str, default: Any, call: Any) -> Any:
    """Run a Redis call; on a Redis failure note the outage (one warning per outage) and return `default`."""
    try:
        result = call()
    except redis.RedisError as exc:
        _Outage.failed(what, exc)
        return default
    _Outage.answered()
    return result


def redis_reachable(client: redis.Redis) -> bool:
    """Ask Redis now (readiness): True when it answers a PING."""
    return bool(_guarded("ping", False, client.ping))


class RedisConversationStore:
    """The ConversationStore interface over Redis keys that expire with the conversation.

    `conv:<id>` holds the conversation, `hist:<key>` points a history digest at it, and
    `caller:<caller>` is a sorted set (by last update) for listing. Redis failures are logged and
    degrade to "not found" / "not saved": the chat still works, as a new thread.
    """

    def __init__(self, client: redis.Redis, ttl: float, *, prefix: str = "pplx:") -> None:
        self.redis = client
        self.ttl = max(1, int(ttl))
        self.prefix = prefix

    def _k(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def _guard(self, what: str, default: Any, call: Any) -> Any:
        return _guarded(what, default, call)

    def get(self, caller: str, conversation_id: str) -> Conversation | None:
        raw = self._guard("get", None, lambda: self.redis.get(self._k("conv", conversation_id)))
        conversation = Conversation.from_json(raw) if raw else None
        return conversation if conversation and conversation.caller == caller else None

    def find(self, caller: str, key: str) -> Conversation | None:
        conversation_id = self._guard("find", None, lambda: self.redis.get(self._k("hist", key)))
        return self.get(caller, conversation_id.decode()) if conversation_id else None

    def save(self, conversation: Conversation) -> None:
        existing = self._guard("save", None, lambda: self.redis.get(self._k("conv", conversation.id)))
        if existing and Conversation.from_json(existing).caller != conversation.caller:
            raise PermissionError("conversation id belongs to another caller")

        def write() -> None:
            pipe = self.redis.pipeline()
            pipe.set(self._k("conv", conversation.id), conversation.to_json(), ex=self.ttl)
            for key in conversation.history_keys:
                pipe.set(self._k("hist", key), conversation.id, ex=self.ttl)
            listing = self._k("caller", conversation.caller)
            pipe.zadd(listing, {conversation.id: conversation.updated})
            pipe.zremrangebyscore(listing, 0, time.time() - self.ttl)
            pipe.expire(listing, self.ttl)
            pipe.execute()

        self._guard("save", None, write)

    def list(self, caller: str) -> list[Conversation]:
        ids = self._guard("list", [], lambda: self.redis.zrevrange(self._k("caller", caller), 0, 199))
        if not ids:
            return []
        raws = self._guard("list", [], lambda: self.redis.mget([self._k("conv", i.decode()) for i in ids]))
        found = [Conversation.from_json(raw) for raw in raws if raw]
        return [c for c in found if c.caller == caller]

    def delete(self, caller: str, conversation_id: str) -> bool:
        conversation = self.get(caller, conversation_id)
        if conversation is None:
            return False

        def remove() -> None:
            pipe = self.redis.pipeline()
            pipe.delete(self._k("conv", conversation_id))
            pipe.zrem(self._k("caller", caller), conversation_id)
            for key in conversation.history_keys:
                pipe.delete(self._k("hist", key))
            pipe.execute()

        self._guard("delete", None, remove)
        return True

    def count(self) -> int:
        def scan() -> int:
            return sum(1 for _ in self.redis.scan_iter(match=self._k("conv", "*"), count=1000))

        return self._guard("count", 0, scan)


# Stored responses' accounting, kept by Lua scripts so that every worker's save, read and delete updates it
# atomically (one Redis, not Redis Cluster: the scripts reach keys they are not given). Under the prefix:
#   resp:<id>             the record as JSON, expiring `ttl` seconds after its creation
#   rstore:meta           hash id -> {"c": caller, "a": account, "s": bytes, "p": previous id}
#   rstore:lru            ids by last use (a tick of rstore:tick); rstore:acct:<account> the same per account
#   rstore:exp            ids by creation time, to drop expired records from the accounting
#   rstore:total          bytes held in all; rstore:bytes hash account -> bytes held
# Each save first drops up to 256 expired records, then evicts while the account is over its cap (starting from
# its least recently used record), then while the total is (from the store's): each time the oldest held
# ancestor of that record (at most MAX_CHAIN up), so the history a held response replays only loses its oldest
# turns, as in memory.
_LUA_COMMON = """
local P = ARGV[1]
local META, LRU, EXP = P .. 'rstore:meta', P .. 'rstore:lru', P .. 'rstore:exp'
local TOTAL, BYTES, TICK = P .. 'rstore:total', P .. 'rstore:bytes', P .. 'rstore:tick'
local function acct(a) return P .. 'rstore:acct:' .. a end
local function forget(rid, account)
  redis.call('DEL', P .. 'resp:' .. rid)
  redis.call('ZREM', LRU, rid)
  redis.call('ZREM', EXP, rid)
  if account then redis.call('ZREM', acct(account), rid) end
  local info = redis.call('HGET', META, rid)
  if not info then return end
  local m = cjson.decode(info)
  redis.call('HDEL', META, rid)
  redis.call('ZREM', acct(m.a), rid)
  redis.call('DECRBY', TOTAL, m.s)
  if redis.call('HINCRBY', BYTES, m.a, -m.s) <= 0 then redis.call('HDEL', BYTES, m.a) end
end
local function touch(rid, account)
  local tick = redis.call('INCR', TICK)
  redis.call('ZADD', LRU, 'XX', tick, rid)
  redis.call('ZADD', acct(account), 'XX', tick, rid)
end
local function root(rid, limit)
  for _ = 1, limit do
    local info = redis.call('HGET', META, rid)
    local parent = info and cjson.decode(info).p
    if not parent or redis.call('HEXISTS', META, parent) == 0 then return rid end
    rid = parent
  end
  return rid
end
"""

# ARGV: prefix, id, caller, account, record, created, previous id or '', now, ttl, max bytes, max bytes per
# account (-1: no cap), MAX_CHAIN. Returns 1 (kept), 0 (over a cap: not kept), -1 (the id is another caller's).
_LUA_SAVE = """
local id, caller, account, raw = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local created, prev, now, ttl = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local max_total, max_account, chain = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local size = string.len(raw)
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', EXP, '-inf', now - ttl, 'LIMIT', 0, 256)) do forget(rid) end
local old = redis.call('HGET', META, id)
if old and cjson.decode(old).c ~= caller then return -1 end
forget(id, account)
if (max_total >= 0 and size > max_total) or (max_account >= 0 and size > max_account) then return 0 end
while max_account >= 0 and (tonumber(redis.call('HGET', BYTES, account)) or 0) + size > max_account do
  local victim = redis.call('ZRANGE', acct(account), 0, 0)[1]
  if not victim then redis.call('HDEL', BYTES, account) break end
  forget(root(victim, chain), account)
end
while max_total >= 0 and (tonumber(redis.call('GET', TOTAL)) or 0) + size > max_total do
  local victim = redis.call('ZRANGE', LRU, 0, 0)[1]
  if not victim then redis.call('DEL', TOTAL) break end
  forget(root(victim, chain))
end
redis.call('SET', P .. 'resp:' .. id, raw, 'EX', ttl)
local meta = {c = caller, a = account, s = size}
if prev ~= '' then meta.p = prev end
redis.call('HSET', META, id, cjson.encode(meta))
redis.call('ZADD', EXP, created, id)
redis.call('INCRBY', TOTAL, size)
redis.call('HINCRBY', BYTES, account, size)
local tick = redis.call('INCR', TICK)
redis.call('ZADD', LRU, tick, id)
redis.call('ZADD', acct(account), tick, id)
for _, key in ipairs({META, LRU, EXP, TOTAL, BYTES, TICK, acct(account)}) do redis.call('EXPIRE', key, ttl) end
return 1
"""

# ARGV: prefix, id, caller. The record, if it is the caller's (then marked as used), else nil.
_LUA_GET = """
local id, caller = ARGV[2], ARGV[3]
local raw = redis.call('GET', P .. 'resp:' .. id)
if not raw then return false end
local info = redis.call('HGET', META, id)
if not info then return raw end
local m = cjson.decode(info)
if m.c ~= caller then return false end
touch(id, m.a)
return raw
"""

# ARGV: prefix, id, caller. 1 when the caller's record was deleted, else 0.
_LUA_DELETE = """
local id, caller = ARGV[2], ARGV[3]
local info = redis.call('HGET', META, id)
local raw = redis.call('GET', P .. 'resp:' .. id)
local owner = info and cjson.decode(info).c or (raw and cjson.decode(raw).caller)
if owner ~= caller then return 0 end
forget(id)
return raw and 1 or 0
"""


class RedisResponseStore:
    """Stored Responses API objects in Redis (`resp:<id>`), expiring `ttl` seconds after creation, at most
    `max_bytes` of them in this Redis and `max_bytes_per_caller` per account, least recently used evicted first
    (see the scripts above). Redis failures degrade to "not found" / "not saved", as for conversations."""

    def __init__(
        self, client: redis.Redis, ttl: float, *, prefix: str = "pplx:", max_bytes: int | None = None,
        max_bytes_per_caller: int | None = None,
    ) -> None:  # fmt: skip
        self.redis = client
        self.ttl = max(1, int(ttl))
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_bytes_per_caller = max_bytes_per_caller
        self._save = client.register_script(_LUA_COMMON + _LUA_SAVE)
        self._get = client.register_script(_LUA_COMMON + _LUA_GET)
        self._delete = client.register_script(_LUA_COMMON + _LUA_DELETE)

    def _key(self, response_id: str) -> str:
        return f"{self.prefix}resp:{response_id}"

    def _guard(self, what: str, default: Any, call: Any) -> Any:
        return _guarded(what, default, call)

    def held_bytes(self) -> int:
        """The bytes of the records held, by the accounting (expired ones included until a save drops them)."""
        raw = self._guard("count response bytes", None, lambda: self.redis.get(f"{self.prefix}rstore:total"))
        return int(raw or 0)

    def get(self, caller: str, response_id: str) -> StoredResponse | None:
        args = [self.prefix, response_id, caller]
        raw = self._guard("get response", None, lambda: self._get(args=args))
        record = StoredResponse.from_json(raw) if raw else None
        return record if record is not None and record.caller == caller else None

    def save(self, record: StoredResponse) -> None:
        caps = [-1 if cap is None else cap for cap in (self.max_bytes, self.max_bytes_per_caller)]
        args = [
            self.prefix, record.id, record.caller, account_of(record.caller), record.to_json(), record.created,
            record.previous_id or "", time.time(), self.ttl, *caps, MAX_CHAIN,
        ]  # fmt: skip
        kept = self._guard("save response", 1, lambda: self._save(args=args))
        if kept == -1:
            raise PermissionError("response id belongs to another caller")
        if kept == 0:
            log.warning("a stored response of %d bytes is over the response store's cap: not kept", len(args[4]))

    def delete(self, caller: str, response_id: str) -> bool:
        return bool(self._guard("delete response", 0, lambda: self._delete(args=[self.prefix, response_id, caller])))

    def count(self) -> int:
        def scan() -> int:
            return sum(1 for _ in self.redis.scan_iter(match=self._key("*"), count=1000))

        return self._guard("count responses", 0, scan)
