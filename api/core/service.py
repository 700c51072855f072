"""The chat service: OpenAI-shaped request dicts in, Perplexity asks out, conversation state kept in between."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from perplexity.client import PerplexityClient
from perplexity.errors import ThreadNotFoundError
from perplexity.stream import AskStream
from perplexity.types import AskOptions, ThreadIds

from .continuity import Continuity, Placement
from .errors import APIError
from .messages import Transcript, flatten_query, read_messages
from .modelmap import ModelMap, PublicModel
from .tools import AgentSpec

__all__ = ["ChatService", "PreparedAsk"]

log = logging.getLogger(__name__)

_SEARCH_MODES = {"web": ("web",), "academic": ("scholar",), "sec": ("finance",)}
_RECENCY = {"hour": "day", "day": "day", "week": "week", "month": "month", "year": "year"}
_DEEP_EFFORT = {"high", "xhigh", "max"}
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
        return f"{query}\n\n{section}" if section else query

    @property
    def prompt_text(self) -> str:
        """The text usage counts as prompt: instructions, every turn sent and the agent section."""
        texts = [text for _, text in self.transcript.keyed_turns()]
        return "\n".join([*texts, self.agent.section()] if self.agent is not None else texts)


class ChatService:
    """Prepares asks from chat messages, opens them, and remembers the threads they created."""

    def __init__(self, client: PerplexityClient, models: ModelMap, continuity: Continuity, config: dict[str, Any]):
        self.client = client
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
        prepared = PreparedAsk(model, transcript, query, options, placement, agent)
        prepared.query = prepared.with_section(query)
        return prepared

    def open(self, prepared: PreparedAsk) -> AskStream:
        """Upload inline files and open the ask; a vanished thread falls back to a new one."""
        if prepared.transcript.attachments:
            urls = [self.client.upload(a.filename, a.content, a.content_type) for a in prepared.transcript.attachments]
            prepared.options = replace(prepared.options, attachments=tuple(urls))
        try:
            return self.client.ask(prepared.query, prepared.options)
        except ThreadNotFoundError:
            if not prepared.is_follow_up:
                raise
            self.continuity.restart(prepared.placement)
            prepared.options = replace(prepared.options, follow_up=None)
            prepared.query = prepared.with_section(flatten_query(prepared.transcript))
            return self.client.ask(prepared.query, prepared.options)

    def follow_up(self, prepared: PreparedAsk, thread: ThreadIds, query: str) -> AskStream:
        """Ask `query` on `thread` (a repair turn on the thread the first answer created or continued)."""
        return self.client.ask(query, replace(prepared.options, follow_up=thread, attachments=()))

    def remember(self, prepared: PreparedAsk, thread: ThreadIds | None, answer: str, title: str | None) -> None:
        """Keep the thread so the client's next turn (history + this answer) continues it."""
        turns = prepared.transcript.keyed_turns()
        self.continuity.remember(prepared.placement, turns, prepared.model.id, thread, answer, title)

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
        return AskOptions(
            model=upstream,
            sources=sources,
            search_focus="writing" if body.get("disable_search") else "internet",
            recency=_RECENCY.get(body.get("search_recency_filter") or ""),
            timezone=approx.get("timezone") or "UTC",
            latitude=float(latitude) if isinstance(latitude, int | float) else None,
            longitude=float(longitude) if isinstance(longitude, int | float) else None,
            incognito=bool(self.config.get("PERPLEXITY_INCOGNITO", True)),
            compare_models=compare,
        )
