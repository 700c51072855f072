"""In-process stores: conversations and stored responses in this worker's memory, expiring and capped on their own."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .records import MAX_CHAIN, Conversation, StoredResponse, account_of

__all__ = ["MemoryConversationStore", "MemoryResponseStore"]

log = logging.getLogger(__name__)


class _Ledger:
    """What a store holds in least-recently-used order, with sizes summed in total and per account, against a total
    cap and a per-account cap (None: no cap). Sizes are bytes for responses, 1 for conversations."""

    def __init__(self, limit: int | None, per_account: int | None) -> None:
        self.limit = limit
        self.per_account = per_account
        self.total = 0
        self._order: OrderedDict[str, tuple[str, int]] = OrderedDict()  # key -> (account, size), oldest first
        self._accounts: dict[str, OrderedDict[str, None]] = {}
        self._account_totals: dict[str, int] = {}

    def fits(self, size: int) -> bool:
        """Whether an item of `size` can be held at all."""
        return (self.limit is None or size <= self.limit) and (self.per_account is None or size <= self.per_account)

    def add(self, key: str, account: str, size: int) -> None:
        self._order[key] = (account, size)
        self._accounts.setdefault(account, OrderedDict())[key] = None
        self._account_totals[account] = self._account_totals.get(account, 0) + size
        self.total += size

    def touch(self, key: str) -> None:
        entry = self._order.get(key)
        if entry is not None:
            self._order.move_to_end(key)
            self._accounts[entry[0]].move_to_end(key)

    def remove(self, key: str) -> None:
        entry = self._order.pop(key, None)
        if entry is None:
            return
        account, size = entry
        mine = self._accounts[account]
        del mine[key]
        self.total -= size
        if mine:
            self._account_totals[account] -= size
        else:
            del self._accounts[account], self._account_totals[account]

    def victim(self, account: str, size: int) -> str | None:
        """The key to evict before `size` more fits under `account`: the account's least recently used while the
        account is over its cap, then the store's; None once it fits (`fits(size)` must hold)."""
        if self.per_account is not None and self._account_totals.get(account, 0) + size > self.per_account:
            return next(iter(self._accounts[account]))
        if self.limit is not None and self.total + size > self.limit:
            return next(iter(self._order))
        return None


class MemoryConversationStore:
    """A per-process store with expiry after `ttl` seconds of inactivity, and at most `max_items` conversations
    (`max_items_per_caller` per account), the least recently used evicted first: an evicted conversation's next
    turn starts a new thread from the flattened history, as an expired one's does."""

    def __init__(
        self, ttl: float, *, max_items: int | None = None, max_items_per_caller: int | None = None,
        clock: Any = time.time,
    ) -> None:  # fmt: skip
        self.ttl = ttl
        self._clock = clock
        self._items: dict[str, Conversation] = {}
        self._keys: dict[str, str] = {}
        self._ledger = _Ledger(max_items, max_items_per_caller)
        self._lock = threading.Lock()
        self._purged = float("-inf")
        self.evicted = 0

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
        self._ledger.remove(conversation_id)
        for key in conversation.history_keys if conversation else ():
            if self._keys.get(key) == conversation_id:
                del self._keys[key]

    def get(self, caller: str, conversation_id: str) -> Conversation | None:
        conversation = self._alive(self._items.get(conversation_id))
        if conversation is None or conversation.caller != caller:
            return None
        with self._lock:
            self._ledger.touch(conversation_id)
        return conversation

    def find(self, caller: str, key: str) -> Conversation | None:
        conversation_id = self._keys.get(key)
        return self.get(caller, conversation_id) if conversation_id else None

    def save(self, conversation: Conversation) -> None:
        account = account_of(conversation.caller)
        with self._lock:
            self._purge()
            old = self._items.get(conversation.id)
            if old is not None and old.caller != conversation.caller:
                raise PermissionError("conversation id belongs to another caller")
            # Dropped and added again: it becomes the most recent, and digests it no longer carries are forgotten.
            self._drop(conversation.id)
            while (victim := self._ledger.victim(account, 1)) is not None:
                self._drop(victim)
                self.evicted += 1
            self._items[conversation.id] = conversation
            self._ledger.add(conversation.id, account, 1)
            for key in conversation.history_keys:
                self._keys[key] = conversation.id

    def list(self, caller: str) -> list[Conversation]:
        with self._lock:
            self._purge()
            mine = (c for c in self._items.values() if c.caller == caller and self._alive(c))
            return sorted(mine, key=lambda c: -c.updated)

    def delete(self, caller: str, conversation_id: str) -> bool:
        with self._lock:
            conversation = self._alive(self._items.get(conversation_id))
            if conversation is None or conversation.caller != caller:
                return False
            self._drop(conversation_id)
            return True

    def count(self) -> int:
        with self._lock:
            self._purge()
            return sum(1 for c in self._items.values() if self._alive(c))


@dataclass(frozen=True, slots=True)
class _Kept:
    """A stored response as held: its owner and links beside the record as JSON, which is compact (a dict of
    small objects takes several times its JSON's size) and whose length is what the caps count."""

    caller: str
    created: float
    previous: str | None
    raw: bytes


class MemoryResponseStore:
    """A per-process response store; a response expires `ttl` seconds after it was created.

    At most `max_bytes` of records are held (`max_bytes_per_caller` per account); a record over either cap is not
    kept. To make room, the least recently used record's chain goes first, from its oldest held ancestor: so the
    history a held response replays only gets shorter at its old end (as with MAX_CHAIN and expiry), and the
    newest response of a running chain goes last. An evicted response is simply not found.
    """

    def __init__(
        self, ttl: float, *, max_bytes: int | None = None, max_bytes_per_caller: int | None = None,
        clock: Any = time.time,
    ) -> None:  # fmt: skip
        self.ttl = ttl
        self._clock = clock
        self._items: dict[str, _Kept] = {}
        self._ledger = _Ledger(max_bytes, max_bytes_per_caller)
        self._lock = threading.Lock()
        self._purged = float("-inf")
        self.evicted = 0

    def held_bytes(self) -> int:
        """The bytes of the records held (expired ones included until the next purge)."""
        return self._ledger.total

    def _alive(self, kept: _Kept | None, caller: str) -> _Kept | None:
        return kept if kept is not None and kept.caller == caller and self._clock() - kept.created <= self.ttl else None

    def _purge(self) -> None:
        # At most once a minute, as in MemoryConversationStore: reads check the age anyway.
        now = self._clock()
        if now - self._purged < min(60.0, self.ttl):
            return
        self._purged = now
        for rid in [rid for rid, kept in self._items.items() if now - kept.created > self.ttl]:
            self._drop(rid)

    def _drop(self, response_id: str) -> None:
        self._items.pop(response_id, None)
        self._ledger.remove(response_id)

    def _root(self, response_id: str) -> str:
        """The oldest ancestor of a held response that is still held, looking at most MAX_CHAIN up: further up,
        neither it nor anything that continues it would replay the ancestor."""
        previous = self._items[response_id].previous
        for _ in range(MAX_CHAIN):
            if previous is None or previous not in self._items:
                break
            response_id, previous = previous, self._items[previous].previous
        return response_id

    def get(self, caller: str, response_id: str) -> StoredResponse | None:
        kept = self._alive(self._items.get(response_id), caller)
        if kept is None:
            return None
        with self._lock:
            self._ledger.touch(response_id)
        return StoredResponse.from_json(kept.raw)

    def save(self, record: StoredResponse) -> None:
        raw, account = record.to_json(), account_of(record.caller)
        with self._lock:
            self._purge()
            old = self._items.get(record.id)
            if old is not None and old.caller != record.caller:
                raise PermissionError("response id belongs to another caller")
            self._drop(record.id)
            if not self._ledger.fits(len(raw)):
                log.warning("a stored response of %d bytes is over the response store's cap: not kept", len(raw))
                return
            while (victim := self._ledger.victim(account, len(raw))) is not None:
                self._drop(self._root(victim))
                self.evicted += 1
            self._items[record.id] = _Kept(record.caller, record.created, record.previous_id, raw)
            self._ledger.add(record.id, account, len(raw))

    def delete(self, caller: str, response_id: str) -> bool:
        with self._lock:
            if self._alive(self._items.get(response_id), caller) is None:
                return False
            self._drop(response_id)
            return True

    def count(self) -> int:
        with self._lock:
            self._purge()
            now = self._clock()
            return sum(1 for kept in self._items.values() if now - kept.created <= self.ttl)
