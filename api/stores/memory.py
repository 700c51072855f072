"""In-process stores: conversations and stored responses in this worker's memory, expiring on their own."""

from __future__ import annotations

import threading
import time
from typing import Any

from .records import Conversation, StoredResponse

__all__ = ["MemoryConversationStore", "MemoryResponseStore"]


class MemoryConversationStore:
    """A per-process store with expiry after `ttl` seconds of inactivity."""

    def __init__(self, ttl: float, *, clock: Any = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        self._items: dict[str, Conversation] = {}
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()
        self._purged = float("-inf")

    def _alive(self, conversation: Conversation | None) -> Conversation | None:
        if conversation is None or self._clock() - conversation.updated > self.ttl:
            return None
        return conversation

    def _purge(self) -> None:
        # A full scan at most once a minute (a scan per save was O(stored) on every request); expired
        # entries are invisible in between anyway, since every read checks the age.
        now = self._clock()
        if now - self._purged < min(60.0, self.ttl):
            return
        self._purged = now
        for cid in [c.id for c in self._items.values() if now - c.updated > self.ttl]:
            self._drop(cid)

    def _drop(self, conversation_id: str) -> None:
        conversation = self._items.pop(conversation_id, None)
        for key in conversation.history_keys if conversation else ():
            if self._keys.get(key) == conversation_id:
                del self._keys[key]

    def get(self, caller: str, conversation_id: str) -> Conversation | None:
        conversation = self._alive(self._items.get(conversation_id))
        return conversation if conversation and conversation.caller == caller else None

    def find(self, caller: str, key: str) -> Conversation | None:
        conversation_id = self._keys.get(key)
        return self.get(caller, conversation_id) if conversation_id else None

    def save(self, conversation: Conversation) -> None:
        with self._lock:
            self._purge()
            old = self._items.get(conversation.id)
            if old is not None and old.caller != conversation.caller:
                raise PermissionError("conversation id belongs to another caller")
            self._items[conversation.id] = conversation
            for key in conversation.history_keys:
                self._keys[key] = conversation.id

    def list(self, caller: str) -> list[Conversation]:
        with self._lock:
            self._purge()
            mine = (c for c in self._items.values() if c.caller == caller and self._alive(c))
            return sorted(mine, key=lambda c: -c.updated)

    def delete(self, caller: str, conversation_id: str) -> bool:
        with self._lock:
            if self.get(caller, conversation_id) is None:
                return False
            self._drop(conversation_id)
            return True

    def count(self) -> int:
        with self._lock:
            self._purge()
            return sum(1 for c in self._items.values() if self._alive(c))


class MemoryResponseStore:
    """A per-process response store; a response expires `ttl` seconds after it was created."""

    def __init__(self, ttl: float, *, clock: Any = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        self._items: dict[str, StoredResponse] = {}
        self._lock = threading.Lock()
        self._purged = float("-inf")

    def _alive(self, record: StoredResponse | None) -> StoredResponse | None:
        return record if record is not None and self._clock() - record.created <= self.ttl else None

    def _purge(self) -> None:
        # At most once a minute, as in MemoryConversationStore: reads check the age anyway.
        now = self._clock()
        if now - self._purged < min(60.0, self.ttl):
            return
        self._purged = now
        for rid in [r.id for r in self._items.values() if self._alive(r) is None]:
            del self._items[rid]

    def get(self, caller: str, response_id: str) -> StoredResponse | None:
        record = self._alive(self._items.get(response_id))
        return record if record is not None and record.caller == caller else None

    def save(self, record: StoredResponse) -> None:
        with self._lock:
            self._purge()
            old = self._items.get(record.id)
            if old is not None and old.caller != record.caller:
                raise PermissionError("response id belongs to another caller")
            self._items[record.id] = record

    def delete(self, caller: str, response_id: str) -> bool:
        with self._lock:
            if self.get(caller, response_id) is None:
                return False
            del self._items[response_id]
            return True

    def count(self) -> int:
        with self._lock:
            self._purge()
            return sum(1 for r in self._items.values() if self._alive(r))
