"""Conversation state in Redis, so every worker and instance continues the same threads."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from .records import Conversation, StoredResponse

__all__ = ["RedisConversationStore", "RedisResponseStore", "redis_client"]

log = logging.getLogger(__name__)


def redis_client(url: str) -> redis.Redis:
    """A client with short timeouts: a hung Redis must not hang requests (the stores degrade instead)."""
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5, health_check_interval=30)


def _guarded(what: str, default: Any, call: Any) -> Any:
    """Run a Redis call; on a Redis failure log it (without details that could hold data) and return `default`."""
    try:
        return call()
    except redis.RedisError as exc:
        log.warning("redis store: %s failed: %s", what, type(exc).__name__)
        return default


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


class RedisResponseStore:
    """Stored Responses API objects in Redis (`resp:<id>`), expiring `ttl` seconds after creation."""

    def __init__(self, client: redis.Redis, ttl: float, *, prefix: str = "pplx:") -> None:
        self.redis = client
        self.ttl = max(1, int(ttl))
        self.prefix = prefix

    def _key(self, response_id: str) -> str:
        return f"{self.prefix}resp:{response_id}"

    def _guard(self, what: str, default: Any, call: Any) -> Any:
        return _guarded(what, default, call)

    def get(self, caller: str, response_id: str) -> StoredResponse | None:
        raw = self._guard("get response", None, lambda: self.redis.get(self._key(response_id)))
        record = StoredResponse.from_json(raw) if raw else None
        return record if record is not None and record.caller == caller else None

    def save(self, record: StoredResponse) -> None:
        existing = self._guard("save response", None, lambda: self.redis.get(self._key(record.id)))
        if existing and StoredResponse.from_json(existing).caller != record.caller:
            raise PermissionError("response id belongs to another caller")
        self._guard("save response", None, lambda: self.redis.set(self._key(record.id), record.to_json(), ex=self.ttl))

    def delete(self, caller: str, response_id: str) -> bool:
        if self.get(caller, response_id) is None:
            return False
        self._guard("delete response", None, lambda: self.redis.delete(self._key(response_id)))
        return True

    def count(self) -> int:
        def scan() -> int:
            return sum(1 for _ in self.redis.scan_iter(match=self._key("*"), count=1000))

        return self._guard("count responses", 0, scan)
