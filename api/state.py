"""Per-app server state (client, models, conversations, counters), built lazily in each worker process."""

from __future__ import annotations

import functools
import logging
import threading
import time
import tomllib
from collections import Counter, deque
from importlib import metadata
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g, has_request_context

from perplexity.client import PerplexityClient
from perplexity.cookies import normalize_session_token
from perplexity.errors import PerplexityError
from perplexity.types import SessionInfo

from .alerts import Alerter
from .core.accounts import Account, AccountPool, AccountSpec, AccountWatcher, account_specs, save_token
from .core.continuity import Continuity
from .core.modelmap import BUILTIN_CATALOGUE, ModelMap
from .core.service import ChatService
from .edge import redact
from .edge.metrics import Metrics
from .stores import open_stores
from .stores.accounts import SharedAccounts
from .stores.redis_store import redis_reachable
from .stores.streams import StreamLeases, open_stream_leases
from .stores.token_file import TokenFile

__all__ = ["ServerState", "init_app", "server_version", "state"]

log = logging.getLogger(__name__)

_RECENT_ERRORS = 20  # upstream failures /stats lists, newest first


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
        # The latest few failures (when, kind, account): what an operator looking at /stats or the console wants
        # beside the counters since start. Never the upstream's message: /stats is public.
        self.recent_upstream_errors: deque[dict[str, Any]] = deque(maxlen=_RECENT_ERRORS)
        self.open_streams = 0
        self.streams_by_caller: Counter[str] = Counter()
        # The callers' stream slots shared through Redis (None: each worker's own count is the cap).
        self.stream_leases: StreamLeases | None = open_stream_leases(config)
        self._pool: AccountPool | None = None
        self._watcher: AccountWatcher | None = None
        self.alerter = Alerter(config.get("ALERT_WEBHOOK_URL"))
        self._client: PerplexityClient | None = None  # only with no account configured
        self._lock = threading.Lock()
        # Models: the built-in list until the account's catalogue has been loaded.
        self._models = ModelMap(BUILTIN_CATALOGUE)
        self.models_source = "builtin"
        self.models_loaded_at: float | None = None
        self.models_error: str | None = None
        self._refreshing = threading.Lock()
        self._refresher: threading.Thread | None = None
        self._closed = False
        # Session check, cached: (checked at, result or None, error message).
        self._session: tuple[float, SessionInfo | None, str | None] = (0.0, None, None)

    # ---- the Perplexity client ------------------------------------------------------------

    @property
    def pool(self) -> AccountPool:
        """The worker's Perplexity accounts, each with its own client (one connection pool per account)."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = AccountPool(
                        account_specs(self.config),
                        self._make_client,
                        on_change=self._account_changed,
                        shared=self._shared_accounts(),
                    )
                    self._watcher = AccountWatcher(self._pool, self.config, self._reload_specs)
                    self._watcher.start()
        return self._pool

    def _shared_accounts(self) -> SharedAccounts | None:
        """The pool's state in the conversation store's Redis (shared by workers and instances), when it is one."""
        client = getattr(self.store, "redis", None)
        if client is None:
            return None
        return SharedAccounts(client, StreamLeases(client, float(self.config["STREAM_LEASE_SECONDS"])))

    def _account_changed(self, account: Account, previous: str, state: str) -> None:
        """One alert per state change: a WARNING line, the alert counter, the webhook (no token in any)."""
        log.warning("account %s: %s -> %s (%s)", account.label, previous, state, account.reason or "")
        self.metrics.account_alerts.labels(account.label, state).inc()
        self.alerter.account_changed(account.label, previous, state, account.reason)

    def _reload_specs(self) -> list[AccountSpec]:
        return account_specs(self.config)

    @property
    def client(self) -> PerplexityClient:
        """A client for account-less calls (the catalogue, session checks): the first usable account's; with no
        account configured, one without a session (its calls say so)."""
        account = self.pool.first()
        if account is not None:
            return account.client
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client(None)
        return self._client

    @property
    def service(self) -> ChatService:
        """The chat service over the current model map (cheap: made per request)."""
        return ChatService(self.pool, self.models, self.continuity, self.config, fallback=self.client)

    def _make_client(self, spec: AccountSpec | None) -> PerplexityClient:
        c = self.config
        token, on_rotated = (spec.token if spec else None), None
        # The single configured token (as the accounts read it: normalised from any pasted form) keeps its rotations.
        if token and c.get("PERPLEXITY_TOKEN_FILE") and token == _configured_token(c.get("PERPLEXITY_SESSION_TOKEN")):
            store = TokenFile(str(c["PERPLEXITY_TOKEN_FILE"]), token)
            token, on_rotated = store.load() or token, store.save
        elif spec is not None and c.get("PERPLEXITY_ACCOUNTS_FILE"):
            on_rotated = functools.partial(self._rotated, spec.label)  # kept in the accounts file
        client = PerplexityClient(
            token,
            on_token_rotated=on_rotated,
            base_url=c["PERPLEXITY_BASE_URL"],
            impersonate=c["PERPLEXITY_IMPERSONATE"],
            pool_size=int(c["PERPLEXITY_POOL_SIZE"]),
            ca_bundle=c.get("PERPLEXITY_CA_BUNDLE"),
            # The account's own proxy, else PERPLEXITY_PROXY (an account-less client has no spec).
            proxy=(spec.proxy if spec is not None else None) or c.get("PERPLEXITY_PROXY"),
            connect_timeout=float(c["PERPLEXITY_CONNECT_TIMEOUT"]),
            read_timeout=float(c["PERPLEXITY_READ_TIMEOUT"]),
            max_retries=int(c["PERPLEXITY_MAX_RETRIES"]),
        )
        redact.register_source(client.cookie.secrets)  # the live cookie: Perplexity rotates it
        return client

    def _rotated(self, label: str, token: str) -> None:
        """Perplexity rotated an account's cookie: the accounts file keeps the new one (0600, atomic), and the pool
        knows it first, so the file's change is not taken for a new token."""
        spec = self.pool.adopt_rotation(label, token)
        if spec is not None:
            save_token(str(self.config["PERPLEXITY_ACCOUNTS_FILE"]), spec)

    def store_problems(self) -> list[str]:
        """Why the shared stores cannot be used now (for readiness): a Redis that does not answer a PING."""
        client = getattr(self.store, "redis", None)  # one Redis holds both stores
        if client is None or redis_reachable(client):
            return []
        return ["the conversation store (Redis) is unreachable: follow-ups start new threads"]

    def record_upstream_error(self, exc: PerplexityError, account: str | None = None) -> None:
        """Count a Perplexity failure by kind (for /stats and /metrics) and keep it among the recent ones, with the
        account it happened on when one had taken the ask."""
        self.upstream_errors[exc.kind] += 1
        self.metrics.upstream_errors.labels(exc.kind).inc()
        if account is None and has_request_context():
            account = g.get("account")  # set once an account answered (api/steps.py)
        self.recent_upstream_errors.appendleft({"at": round(time.time(), 3), "kind": exc.kind, "account": account})

    # ---- models ---------------------------------------------------------------------------

    @property
    def models(self) -> ModelMap:
        """The current model map; starts a background refresh when it is stale, never waits for it."""
        ttl = float(self.config["MODELS_REFRESH_SECONDS"])
        stale = self.models_loaded_at is None or time.time() - self.models_loaded_at > ttl
        if stale and not self._closed and self.pool.accounts and not self._refreshing.locked():
            self._refresher = threading.Thread(target=self.refresh_models, daemon=True, name="models-refresh")
            self._refresher.start()
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
        """Release the connection pools and any stream slots still leased."""
        self._closed = True
        if self._refresher is not None:  # a refresh in flight must not outlive the app and hit a later upstream
            self._refresher.join(timeout=float(self.config.get("PERPLEXITY_CONNECT_TIMEOUT") or 5) + 1)
        if self._watcher is not None:
            self._watcher.stop()
        if self._pool is not None:
            self._pool.close()
        if self._client is not None:
            self._client.close()
        if self.stream_leases is not None:
            self.stream_leases.close()


def _configured_token(value: Any) -> str | None:
    """PERPLEXITY_SESSION_TOKEN's token, whatever form it was pasted in; None when it holds none."""
    try:
        return normalize_session_token(str(value)) if value else None
    except ValueError:
        return None


_DISTRIBUTION = "perplexity-openai-server"


@functools.cache
def server_version() -> str:
    """The server's version: the installed package's metadata, else pyproject.toml beside the code; no network."""
    try:
        return metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout or the image: not pip-installed
        pass
    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def init_app(app: Flask) -> ServerState:
    """Attach a ServerState to `app`."""
    server = ServerState(app.config)  # type: ignore[arg-type]
    app.extensions["perplexity"] = server
    return server


def state() -> ServerState:
    """The current app's ServerState."""
    return current_app.extensions["perplexity"]
