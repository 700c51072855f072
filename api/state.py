"""Per-app server state (client, models, conversations, counters), built lazily in each worker process."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from flask import Flask, current_app

from perplexity.client import PerplexityClient
from perplexity.errors import PerplexityError
from perplexity.types import SessionInfo

from .core.continuity import Continuity
from .core.modelmap import BUILTIN_CATALOGUE, ModelMap
from .core.service import ChatService
from .edge import redact
from .edge.metrics import Metrics
from .stores import open_stores
from .stores.redis_store import redis_reachable
from .stores.streams import StreamLeases, open_stream_leases
from .stores.token_file import TokenFile

__all__ = ["ServerState", "init_app", "state"]

log = logging.getLogger(__name__)


class ServerState:
    """Everything a worker shares between requests; the Perplexity client is made on first use."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.started = time.time()
        self.metrics = Metrics()
        # Conversations and stored Responses API objects (caller-scoped, expiring with CONVERSATION_TIMEOUT).
        self.store, self.responses = open_stores(config)
        self.continuity = Continuity(self.store, self.responses)
        self.counters: Counter[str] = Counter()
        self.upstream_errors: Counter[str] = Counter()
        self.open_streams = 0
        self.streams_by_caller: Counter[str] = Counter()
        # The callers' stream slots shared through Redis (None: each worker's own count is the cap).
        self.stream_leases: StreamLeases | None = open_stream_leases(config)
        self._client: PerplexityClient | None = None
        self._lock = threading.Lock()
        # Models: the built-in list until the account's catalogue has been loaded.
        self._models = ModelMap(BUILTIN_CATALOGUE)
        self.models_source = "builtin"
        self.models_loaded_at: float | None = None
        self.models_error: str | None = None
        self._refreshing = threading.Lock()
        # Session check, cached: (checked at, result or None, error message).
        self._session: tuple[float, SessionInfo | None, str | None] = (0.0, None, None)

    # ---- the Perplexity client ------------------------------------------------------------

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
        """The chat service over the current model map (cheap: made per request)."""
        return ChatService(self.client, self.models, self.continuity, self.config)

    def _make_client(self) -> PerplexityClient:
        c = self.config
        token, on_rotated = c["PERPLEXITY_SESSION_TOKEN"], None
        if token and c.get("PERPLEXITY_TOKEN_FILE"):
            store = TokenFile(str(c["PERPLEXITY_TOKEN_FILE"]), token)
            token, on_rotated = store.load() or token, store.save
        client = PerplexityClient(
            token,
            on_token_rotated=on_rotated,
            base_url=c["PERPLEXITY_BASE_URL"],
            impersonate=c["PERPLEXITY_IMPERSONATE"],
            pool_size=int(c["PERPLEXITY_POOL_SIZE"]),
            ca_bundle=c.get("PERPLEXITY_CA_BUNDLE"),
            connect_timeout=float(c["PERPLEXITY_CONNECT_TIMEOUT"]),
            read_timeout=float(c["PERPLEXITY_READ_TIMEOUT"]),
            max_retries=int(c["PERPLEXITY_MAX_RETRIES"]),
        )
        redact.register_source(client.cookie.secrets)  # the live cookie: Perplexity rotates it
        return client

    def store_problems(self) -> list[str]:
        """Why the shared stores cannot be used now (for readiness): a Redis that does not answer a PING."""
        client = getattr(self.store, "redis", None)  # one Redis holds both stores
        if client is None or redis_reachable(client):
            return []
        return ["the conversation store (Redis) is unreachable: follow-ups start new threads"]

    def record_upstream_error(self, exc: PerplexityError) -> None:
        """Count a Perplexity failure by kind (for /stats and /metrics)."""
        self.upstream_errors[exc.kind] += 1
        self.metrics.upstream_errors.labels(exc.kind).inc()

    # ---- models ---------------------------------------------------------------------------

    @property
    def models(self) -> ModelMap:
        """The current model map; starts a background refresh when it is stale, never waits for it."""
        ttl = float(self.config["MODELS_REFRESH_SECONDS"])
        stale = self.models_loaded_at is None or time.time() - self.models_loaded_at > ttl
        if stale and self.config.get("PERPLEXITY_SESSION_TOKEN") and not self._refreshing.locked():
            threading.Thread(target=self.refresh_models, daemon=True, name="models-refresh").start()
        return self._models

    def refresh_models(self) -> bool:
        """Load the account's catalogue now; on failure keep the last good (or built-in) list."""
        if not self._refreshing.acquire(blocking=False):
            return False
        try:
            catalogue = self.client.catalogue()
            if not catalogue.models:
                raise ValueError("the catalogue listed no models")
            self._models = ModelMap(catalogue)
            self.models_source = f"upstream ({catalogue.schema})"
            self.models_error = None
            return True
        except (PerplexityError, ValueError) as exc:
            self.models_error = redact.redact(getattr(exc, "message", str(exc)))
            if isinstance(exc, PerplexityError):
                self.record_upstream_error(exc)
            if self.models_source == "builtin":
                self.models_source = "builtin (catalogue unavailable)"
            log.warning("model catalogue refresh failed: %s", self.models_error)
            return False
        finally:
            # A failure waits for the next TTL too, so a dead upstream is not hammered.
            self.models_loaded_at = time.time()
            self._refreshing.release()

    # ---- session --------------------------------------------------------------------------

    def session(self, *, max_age: float) -> tuple[SessionInfo | None, str | None]:
        """The cached session check, redone when older than `max_age` seconds."""
        checked, info, error = self._session
        if time.time() - checked <= max_age and (info is not None or error is not None):
            return info, error
        try:
            info, error = self.client.session(), None
            if not info.valid:
                error = "Perplexity says the session cookie is not logged in (expired or wrong token)"
        except PerplexityError as exc:
            self.record_upstream_error(exc)
            info, error = None, redact.redact(exc.message)
        self._session = (time.time(), info, error)
        return info, error

    # ---- streams --------------------------------------------------------------------------

    def stream_opened(self, caller: str) -> None:
        """Count an open stream (globally and for its caller)."""
        self.open_streams += 1
        self.streams_by_caller[caller] += 1
        self.metrics.open_streams.inc()

    def stream_closed(self, caller: str) -> None:
        """Undo stream_opened."""
        self.open_streams -= 1
        self.streams_by_caller[caller] -= 1
        if self.streams_by_caller[caller] <= 0:
            del self.streams_by_caller[caller]
        self.metrics.open_streams.dec()

    def close(self) -> None:
        """Release the connection pool and any stream slots still leased."""
        if self._client is not None:
            self._client.close()
        if self.stream_leases is not None:
            self.stream_leases.close()


def init_app(app: Flask) -> ServerState:
    """Attach a ServerState to `app`."""
    server = ServerState(app.config)  # type: ignore[arg-type]
    app.extensions["perplexity"] = server
    return server


def state() -> ServerState:
    """The current app's ServerState."""
    return current_app.extensions["perplexity"]
