"""What the stores keep: conversations (a chat mapped to its Perplexity thread) and stored responses, and the
store interfaces every backend (memory, Redis) implements."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import orjson

from perplexity.types import ThreadIds

__all__ = ["MAX_CHAIN", "Conversation", "ConversationStore", "ResponseStore", "StoredResponse", "account_of"]

# How many stored responses a Responses follow-up replays as history when its Perplexity thread is gone (the one it
# names and those it continued, `Continuity.response_chain`): so also how far up a chain a store's eviction looks.
MAX_CHAIN = 32


def account_of(caller: str) -> str:
    """The account a caller belongs to: its key or address, without the end user that narrows it.

    A caller is `<key or address>[/<end user>]` (`api.edge.auth.caller`). Records are scoped to the whole caller;
    the stores' caps count per account, so an end user cannot escape them by naming another `user`.
    """
    return caller.partition("/")[0]


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
    # The label of the account whose thread this is: follow-ups must go to it (its ids are that account's).
    account: str | None = None

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


class ConversationStore(Protocol):
    """Where conversations live; every method is scoped to one caller (exactly: key or address and end user)."""

    def get(self, caller: str, conversation_id: str) -> Conversation | None: ...
    def find(self, caller: str, key: str) -> Conversation | None: ...
    def save(self, conversation: Conversation) -> None: ...
    def list(self, caller: str) -> list[Conversation]: ...
    def delete(self, caller: str, conversation_id: str) -> bool: ...
    def count(self) -> int: ...


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
    """Where stored responses live; every method is scoped to one caller (exactly: key or address and end user).

    A store may evict records or refuse one to stay within its byte caps: `get` then answers None, as for an
    expired or deleted one. Instead of the least recently used record it evicts that record's oldest ancestor still
    held (looking at most MAX_CHAIN up), so the history a held response replays only loses its oldest turns.
    """

    def get(self, caller: str, response_id: str) -> StoredResponse | None: ...
    def save(self, record: StoredResponse) -> None: ...
    def delete(self, caller: str, response_id: str) -> bool: ...
    def count(self) -> int: ...
