"""Where state lives between requests: conversations and stored responses (memory or Redis) and the token file.

`records` defines what is kept and the store interfaces; `memory` and `redis_store` implement them; `open_stores`
picks the backend from the settings. Nothing here imports Flask or the rest of `api`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .memory import MemoryConversationStore, MemoryResponseStore
from .records import Conversation, ConversationStore, ResponseStore, StoredResponse, account_of

__all__ = [
    "Conversation",
    "ConversationStore",
    "MemoryConversationStore",
    "MemoryResponseStore",
    "ResponseStore",
    "StoredResponse",
    "account_of",
    "open_stores",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_stores(config: Mapping[str, Any]) -> tuple[ConversationStore, ResponseStore]:
    """Conversations and stored responses: in memory by default; in one Redis (one connection pool) when
    CONVERSATION_STORE_URI names one, so workers and instances share them. Both are capped by the settings:
    stored responses in bytes (in all, and per key or address) wherever they live; conversations in number
    in memory, while in Redis they are small and expire (Redis's own `maxmemory` bounds the rest)."""
    uri = str(config.get("CONVERSATION_STORE_URI") or "memory://")
    ttl = float(config["CONVERSATION_TIMEOUT"])
    caps = {
        "max_bytes": config.get("RESPONSE_STORE_MAX_BYTES"),
        "max_bytes_per_caller": config.get("RESPONSE_STORE_MAX_BYTES_PER_CALLER"),
    }
    if uri.startswith(_REDIS_SCHEMES):
        from .redis_store import RedisConversationStore, RedisResponseStore, redis_client

        client = redis_client(uri)
        return RedisConversationStore(client, ttl), RedisResponseStore(client, ttl, **caps)
    conversations = MemoryConversationStore(
        ttl,
        max_items=config.get("CONVERSATION_STORE_MAX_ITEMS"),
        max_items_per_caller=config.get("CONVERSATION_STORE_MAX_ITEMS_PER_CALLER"),
    )
    return conversations, MemoryResponseStore(ttl, **caps)
