"""The chat service: OpenAI-shaped request dicts in, Perplexity asks out, conversation state kept in between."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from perplexity.client import PerplexityClient
from perplexity.errors import PerplexityError, ThreadNotFoundError
from perplexity.stream import AskStream
from perplexity.types import AskOptions, ThreadIds

from .accounts import FAILOVER_ERRORS, Account, AccountPool
from .continuity import Continuity, Placement
from .errors import APIError
from .messages import Transcript, flatten_query, read_messages
from .modelmap import ModelMap, PublicModel
from .sonar import approximated, recency_after, source_filter
from .tools import AgentSpec

__all__ = ["ChatService", "PreparedAsk"]

log = logging.getLogger(__name__)

_SEARCH_MODES = {"web": ("web",), "academic": ("scholar",), "sec": ("finance",), "social": ("social",)}
# Sonar's web_search_options.search_type -> the web app's ask `mode` (concise is its quick search, copilot Pro).
_SEARCH_TYPES = {"fast": "concise", "pro": "copilot"}
_CONTEXT_SIZES = {"low": "fast", "high": "pro"}  # Sonar's search_context_size, as the search type it is nearest
_RECENCY = {"hour": "day", "day": "day", "week": "week", "month": "month", "year": "year"}
_DEEP_EFFORT = {"high", "xhigh", "max"}
# The quota (Perplexity's rate-limit status mode) each model mode uses.
_QUOTA_MODES = {"search": "pro_search", "research": "research", "studio": "labs"}
_SHOWN_MODEL = 100  # characters of an unknown model id a 404 repeats


@dataclass(slots=True)
class PreparedAsk:
    """Everything needed to run one turn and to remember it afterwards."""

    model: PublicModel
    transcript: Transcript
    query: str
    options: AskOptions
    placement: Placement
    agent: AgentSpec | None = None
    account: str | None = None  # the label of the account that took the ask (set by `ChatService.open`)
    fallback_from: str | None = None  # the model asked for, when QUOTA_FALLBACK_MODEL serves instead
    # `site:` operators of search_domain_filter, added to every query text sent (a restarted thread's too).
    operators: str = ""
    approximated: tuple[str, ...] = ()  # the request's parameters this server emulated (X-Perplexity-Approximated)

    @property
    def caller(self) -> str:
        """Who asked (conversations are scoped to it)."""
        return self.placement.caller

    @property
    def conversation_id(self) -> str:
        """The conversation this turn belongs to (sent back as X-Conversation-ID)."""
        return self.placement.conversation_id

    @property
    def is_follow_up(self) -> bool:
        """True when this turn continues an existing Perplexity thread."""
        return self.options.follow_up is not None

    def with_section(self, query: str) -> str:
        """`query` followed by the agent section (tools, output format), if the request has one."""
        section = self.agent.section() if self.agent is not None else ""
        query = f"{query} {self.operators}" if self.operators else query
        return f"{query}\n\n{section}" if section else query

    @property
    def prompt_text(self) -> str:
        """The text usage counts as prompt: instructions, every turn sent and the agent section."""
        texts = [text for _, text in self.transcript.keyed_turns()]
        return "\n".join([*texts, self.agent.section()] if self.agent is not None else texts)


class ChatService:
    """Prepares asks from chat messages, opens them, and remembers the threads they created."""

    def __init__(
        self,
        pool: AccountPool,
        models: ModelMap,
        continuity: Continuity,
        config: dict[str, Any],
        *,
        fallback: PerplexityClient,
    ) -> None:
        self.pool = pool
        self.fallback = fallback  # the client used when no account is configured
        self.models = models
        self.continuity = continuity
        self.config = config

    def resolve_model(self, model_id: str | None) -> PublicModel:
        """The public model for an id (DEFAULT_MODEL when empty); 404 model_not_found when unknown."""
        model_id = model_id or self.config["DEFAULT_MODEL"]
        model = self.models.resolve(model_id)
        if model is None:
            shown = model_id if len(model_id) <= _SHOWN_MODEL else model_id[:_SHOWN_MODEL] + "…"  # echo no megabytes
            raise APIError(
                404, f"The model '{shown}' does not exist; GET /v1/models lists them.", code="model_not_found",
                param="model",
            )  # fmt: skip
        return model

    def prepare(
        self,
        body: dict[str, Any],
        caller: str,
        *,
        anchor: str | None = None,
        transcript: Transcript | None = None,
        agent: AgentSpec | None = None,
    ) -> PreparedAsk:
        """Resolve the model, read the messages and place the turn: a follow-up on a known thread, or a new one.

        `anchor` is the conversation the request names explicitly (see `continuity`), None to match its history.
        `agent` (tools, structured output) adds its section after the conversation on every ask.
        """
        model = self.resolve_model(body.get("model"))
        transcript = transcript or read_messages(body["messages"])
        model, fallback_from = self._within_quota(model)
        options = self._options(body, model)
        placement = self.continuity.place(caller, transcript.keyed_turns(), anchor=anchor)
        if placement.thread is not None:
            options = replace(options, follow_up=placement.thread)
            query = "\n\n".join(text for _, text in transcript.turns[-placement.fresh :] if text)
        else:
            query = flatten_query(transcript)
        if not query.strip():  # Perplexity asks nothing without text (an image alone, an empty turn)
            message = "The conversation has no text to ask Perplexity; add a question to the last message."
            raise APIError(400, message, code="empty_query", param="messages")
        chosen = source_filter(body)
        prepared = PreparedAsk(
            model, transcript, query, options, placement, agent, fallback_from=fallback_from,
            operators=chosen.operators() if chosen is not None else "", approximated=tuple(approximated(body)),
        )  # fmt: skip
        prepared.query = prepared.with_section(query)
        return prepared

    def _within_quota(self, model: PublicModel) -> tuple[PublicModel, str | None]:
        """The model to ask: `model`, unless every usable account is out of its mode's quota (as Perplexity last
        reported it): then QUOTA_FALLBACK_MODEL when set (and the requested id, to say so), else a 429 with a
        Retry-After at the earliest reset Perplexity reported (QUOTA_RETRY_AFTER when it reported none)."""
        mode = _QUOTA_MODES.get(model.mode)
        # Perplexity's word on each account's quota, asked again once older than QUOTA_REFRESH_SECONDS.
        max_age = float(self.config.get("QUOTA_REFRESH_SECONDS") or 60)
        wait = self.pool.out_of(mode, max_age=max_age) if mode and self.pool.accounts else None
        if wait is None:
            return model, None
        fallback = self.config.get("QUOTA_FALLBACK_MODEL")
        if fallback and (substitute := self.models.resolve(str(fallback))) is not None and substitute != model:
            log.info("every account is out of %s quota: serving %s instead of %s", mode, substitute.id, model.id)
            return substitute, model.id
        seconds = max(1, math.ceil(wait or float(self.config.get("QUOTA_RETRY_AFTER") or 3600)))
        message = f"Every Perplexity account is out of its {mode} quota; retry in {seconds}s or pick another model."
        raise APIError(429, message, "requests", "quota_exhausted", headers={"retry-after": str(seconds)})

    def open(self, prepared: PreparedAsk) -> AskStream:
        """Upload inline files and open the ask on an account (the rules of `core.accounts`): a follow-up on its
        thread's account, a new thread on the pool's pick. An account that fails on its own account's grounds
        before the first byte is set aside and the ask moves on; a thread that cannot go on (gone upstream, or its
        account set aside) starts again as a new thread, its history flattened."""
        tried: set[str] = set()
        last: PerplexityError | None = None
        while True:
            account = self._account_for(prepared, tried)
            if account is None:
                if not self.pool.accounts:
                    return self._ask(self.fallback, prepared)  # no account configured: its error says so
                raise self._no_account(last)
            try:
                stream = self._ask(account.client, prepared)
            except FAILOVER_ERRORS as exc:
                self.pool.failed(account, exc)
                tried.add(account.label)
                last = exc
                continue
            prepared.account = account.label
            stream.also_on_close(self.pool.opened(account))  # "least busy" counts every worker's asks
            self._used(account)
            return stream

    def _used(self, account: Account) -> None:
        """An ask went to `account`: refresh its quota in the background, at most every QUOTA_REFRESH_SECONDS
        (under gevent a thread is a greenlet: nothing waits for it)."""
        if time.time() - account.quota_checked < float(self.config.get("QUOTA_REFRESH_SECONDS") or 60):
            return
        account.quota_checked = time.time()  # one refresh in flight, not one per ask
        refresh = threading.Thread(target=self.pool.refresh_quota, args=(account, 0.0), daemon=True)
        refresh.start()

    def _account_for(self, prepared: PreparedAsk, tried: set[str]) -> Account | None:
        """The account for this attempt: a follow-up's own while it can answer, else the pool's pick (a follow-up
        whose account cannot answer first becomes a new thread: a thread cannot move)."""
        if prepared.is_follow_up:
            conversation = prepared.placement.conversation
            label = conversation.account if conversation is not None else None
            # A thread remembered before accounts had labels belongs to the first account.
            pinned = self.pool.get(label) if label else (None if tried else self.pool.first())
            if pinned is not None and pinned.label not in tried and pinned.usable(time.time()):
                return pinned
            self._restart(prepared)
        return self.pool.pick(exclude=tried, mode=_QUOTA_MODES.get(prepared.model.mode))

    def _ask(self, client: PerplexityClient, prepared: PreparedAsk) -> AskStream:
        """Upload the attachments with this account's client (uploads belong to an account) and ask."""
        if prepared.transcript.attachments:
            files = prepared.transcript.attachments
            urls = tuple(client.upload(a.filename, a.content, a.content_type) for a in files)
            prepared.options = replace(prepared.options, attachments=urls)
        try:
            return client.ask(prepared.query, prepared.options)
        except ThreadNotFoundError:
            if not prepared.is_follow_up:
                raise
            self._restart(prepared)
            return client.ask(prepared.query, prepared.options)

    def _restart(self, prepared: PreparedAsk) -> None:
        """Make the turn a new thread with the whole history (`continuity.restart` forgets the old one)."""
        self.continuity.restart(prepared.placement)
        prepared.options = replace(prepared.options, follow_up=None)
        prepared.query = prepared.with_section(flatten_query(prepared.transcript))

    def _no_account(self, last: PerplexityError | None) -> Exception:
        """What a client gets when no account can take the ask: a 429 until the first cooldown ends, else the
        last account's own error (an expired session is the operator's to fix)."""
        if last is not None:
            return last  # this request's own failure says best what happened (its status, its Retry-After)
        wait = self.pool.earliest_return()
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            message = f"Every Perplexity account is rate limited or cooling down; retry in {seconds}s."
            return APIError(429, message, "requests", "accounts_exhausted", headers={"retry-after": str(seconds)})
        return APIError(503, "No Perplexity account can be used (every session expired).", "server_error",
                        "perplexity_auth_failed", headers={"x-should-retry": "false"})  # fmt: skip

    def follow_up(self, prepared: PreparedAsk, thread: ThreadIds, query: str) -> AskStream:
        """Ask `query` on `thread` (a repair turn on the thread the first answer created or continued), with the
        account that answered it."""
        account = self.pool.get(prepared.account)
        client = account.client if account is not None else self.fallback
        return client.ask(query, replace(prepared.options, follow_up=thread, attachments=()))

    def remember(self, prepared: PreparedAsk, thread: ThreadIds | None, answer: str, title: str | None) -> None:
        """Keep the thread so the client's next turn (history + this answer) continues it."""
        turns = prepared.transcript.keyed_turns()
        self.continuity.remember(prepared.placement, turns, prepared.model.id, thread, answer, title, prepared.account)

    def _options(self, body: dict[str, Any], model: PublicModel) -> AskOptions:
        upstream = model.upstream
        if body.get("reasoning_effort") in _DEEP_EFFORT:
            info = self.models.catalogue.get(upstream)
            upstream = info.reasoning_variant if info and info.reasoning_variant else upstream
        web = body.get("web_search_options") or {}
        location = web.get("user_location") or {}
        approx = location.get("approximate") if isinstance(location.get("approximate"), dict) else location
        latitude, longitude = approx.get("latitude"), approx.get("longitude")
        sources = _SEARCH_MODES.get(body.get("search_mode") or "web", ("web",))
        compare = self.models.catalogue.compare_models if upstream == "pplx_agentic_research" else ()
        recency = _RECENCY.get(body.get("search_recency_filter") or "")
        if recency is None and (chosen := source_filter(body)) is not None:
            recency = recency_after(chosen.after)  # the nearest window; the sources are filtered by date afterwards
        language = body.get("language_preference") or self.config.get("PERPLEXITY_LANGUAGE") or "en-US"
        return AskOptions(
            model=upstream,
            sources=sources,
            search_focus="writing" if body.get("disable_search") else "internet",
            recency=recency,
            language=str(language),
            timezone=approx.get("timezone") or "UTC",
            latitude=float(latitude) if isinstance(latitude, int | float) else None,
            longitude=float(longitude) if isinstance(longitude, int | float) else None,
            incognito=bool(self.config.get("PERPLEXITY_INCOGNITO", True)),
            compare_models=compare,
            # search_type, else search_context_size read as one (low: the quick search, high: Pro).
            mode=_SEARCH_TYPES.get(web.get("search_type") or _CONTEXT_SIZES.get(web.get("search_context_size"), "")),
        )
