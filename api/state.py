"""Per-app server state (client, models, conversations, counters), built lazily in each worker process."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from flask import Flask, current_app

from perplexity.client import PerplexityClient

from .conversations import MemoryConversationStore
from .modelmap import BUILTIN_CATALOGUE, ModelMap
from .service import ChatService

__all__ = ["ServerState", "init_app", "state"]

log = logging.getLogger(__name__)


class ServerState:
    """Everything a worker shares between requests; the Perplexity client is made on first use."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.started = time.time()
        self.models = ModelMap(BUILTIN_CATALOGUE)
        self.models_source = "builtin"
        self.store = MemoryConversationStore(float(config["CONVERSATION_TIMEOUT"]))
        self.counters: Counter[str] = Counter()
        self.upstream_errors: Counter[str] = Counter()
        self.open_streams = 0
        self._client: PerplexityClient | None = None
        self._service: ChatService | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> PerplexityClient:
        """The worker's Perplexity client (one connection pool per process)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    @property
    def service(self) -> ChatService:
        """The chat service bound to this worker's client and stores."""
        if self._service is None:
            self._service = ChatService(self.client, self.models, self.store, self.config)
        return self._service

    def _make_client(self) -> PerplexityClient:
        c = self.config
        return PerplexityClient(
            c["PERPLEXITY_SESSION_TOKEN"],
            base_url=c["PERPLEXITY_BASE_URL"],
            impersonate=c["PERPLEXITY_IMPERSONATE"],
            pool_size=int(c["PERPLEXITY_POOL_SIZE"]),
            connect_timeout=float(c["PERPLEXITY_CONNECT_TIMEOUT"]),
            read_timeout=float(c["PERPLEXITY_READ_TIMEOUT"]),
            max_retries=int(c["PERPLEXITY_MAX_RETRIES"]),
        )

    def close(self) -> None:
        """Release the connection pool."""
        if self._client is not None:
            self._client.close()


def init_app(app: Flask) -> ServerState:
    """Attach a ServerState to `app`."""
    server = ServerState(app.config)  # type: ignore[arg-type]
    app.extensions["perplexity"] = server
    return server


def state() -> ServerState:
    """The current app's ServerState."""
    return current_app.extensions["perplexity"]
