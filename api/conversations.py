"""Conversation state: which Perplexity thread continues which caller's chat, behind one small store interface."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import orjson

from perplexity.types import ThreadIds

__all__ = [
    "Conversation",
    "ConversationStore",
    "MemoryConversationStore",
    "MemoryResponseStore",
    "ResponseStore",
    "StoredResponse",
    "history_key",
    "new_conversation_id",
]


@dataclass(frozen=True, slots=True)
class Conversation:
    """One chat mapped to one Perplexity thread; `thread` names its latest entry."""

    id: str
    caller: str
    thread: ThreadIds
    model: str
    created: float
    updated: float
    turns: int = 1
    title: str | None = None
    history_keys: tuple[str, ...] = field(default=(), repr=False)

    def public(self) -> dict[str, Any]:
        """What the caller may see (never the thread token)."""
        return {
            "id": self.id,
            "object": "conversation",
            "created": int(self.created),
            "updated": int(self.updated),
            "model": self.model,
            "turns": self.turns,
            "title": self.title,
        }

    def to_json(self) -> bytes:
        """Serialize for a shared store."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Conversation:
        """Inverse of to_json."""
        data = orjson.loads(raw)
        data["thread"] = ThreadIds(**data["thread"])
        data["history_keys"] = tuple(data.get("history_keys") or ())
        return cls(**data)

    def advanced(self, thread: ThreadIds, history: str, title: str | None) -> Conversation:
        """This conversation after one more turn on `thread`."""
        keys = (*self.history_keys[-7:], history)  # recent histories suffice: clients resend the latest
        return replace(
            self, thread=thread, updated=time.time(), turns=self.turns + 1, title=self.title or title, history_keys=keys
        )


def new_conversation_id() -> str:
    """A fresh, unguessable conversation id."""
    return "conv_" + secrets.token_urlsafe(18)


def _normalize(text: str) -> str:
    return " ".join(text.split())


def history_key(caller: str, turns: Iterable[tuple[str, str]]) -> str:
    """A digest of (role, text) turns; whitespace-insensitive, and scoped to the caller."""
    digest = hashlib.sha256(caller.encode())
    for role, text in turns:
        digest.update(b"\x00" + role.encode() + b"\x01" + _normalize(text).encode())
    return digest.hexdigest()


class ConversationStore(Protocol):
    """Where conversations live; every method is scoped to one caller."""

    def get(self, caller: str, conversation_id: str) -> Conversation | None: ...
    def find(self, caller: str, key: str) -> Conversation | None: ...
    def save(self, conversation: Conversation) -> None: ...
    def list(self, caller: str) -> list[Conversation]: ...
    def delete(self, caller: str, conversation_id: str) -> bool: ...
    def count(self) -> int: ...


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


# ---- stored Responses API objects -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One `/v1/responses` result kept for retrieval and `previous_response_id`: what was sent, and its thread."""

    id: str
    caller: str
    created: float
    conversation_id: str
    response: dict[str, Any] = field(repr=False)
    input_items: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def previous_id(self) -> str | None:
        """The response this one continued, if any."""
        return self.response.get("previous_response_id")

    def to_json(self) -> bytes:
        """Serialize for a shared store."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> StoredResponse:
        """Inverse of to_json."""
        return cls(**orjson.loads(raw))


class ResponseStore(Protocol):
    """Where stored responses live; every method is scoped to one caller."""

    def get(self, caller: str, response_id: str) -> StoredResponse | None: ...
    def save(self, record: StoredResponse) -> None: ...
    def delete(self, caller: str, response_id: str) -> bool: ...
    def count(self) -> int: ...


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
