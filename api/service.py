"""The chat service: OpenAI-shaped request dicts in, Perplexity asks out, conversation state kept in between."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from perplexity.client import PerplexityClient
from perplexity.errors import ThreadNotFoundError
from perplexity.stream import AskStream
from perplexity.types import AskOptions, ThreadIds

from .conversations import Conversation, ConversationStore, history_key, new_conversation_id
from .errors import APIError
from .messages import Transcript, flatten_query, read_messages
from .modelmap import ModelMap, PublicModel

__all__ = ["ChatService", "PreparedAsk"]

log = logging.getLogger(__name__)

_SEARCH_MODES = {"web": ("web",), "academic": ("scholar",), "sec": ("finance",)}
_RECENCY = {"hour": "day", "day": "day", "week": "week", "month": "month", "year": "year"}
_DEEP_EFFORT = {"high", "xhigh", "max"}


@dataclass(slots=True)
class PreparedAsk:
    """Everything needed to run one turn and to remember it afterwards."""

    caller: str
    model: PublicModel
    transcript: Transcript
    query: str
    options: AskOptions
    conversation: Conversation | None
    conversation_id: str

    @property
    def is_follow_up(self) -> bool:
        """True when this turn continues an existing Perplexity thread."""
        return self.options.follow_up is not None


class ChatService:
    """Prepares asks from chat messages, opens them, and remembers the threads they created."""

    def __init__(self, client: PerplexityClient, models: ModelMap, store: ConversationStore, config: dict[str, Any]):
        self.client = client
        self.models = models
        self.store = store
        self.config = config

    def resolve_model(self, model_id: str | None) -> PublicModel:
        """The public model for an id (DEFAULT_MODEL when empty); 404 model_not_found when unknown."""
        model_id = model_id or self.config["DEFAULT_MODEL"]
        model = self.models.resolve(model_id)
        if model is None:
            raise APIError(
                404, f"The model '{model_id}' does not exist; GET /v1/models lists them.", code="model_not_found",
                param="model",
            )  # fmt: skip
        return model

    def prepare(self, body: dict[str, Any], caller: str, transcript: Transcript | None = None) -> PreparedAsk:
        """Resolve the model, read the messages and decide: follow-up on a known thread, or a new one."""
        model = self.resolve_model(body.get("model"))
        transcript = transcript or read_messages(body["messages"])
        options = self._options(body, model)
        conversation, conversation_id = self._conversation(body, caller, transcript)
        if conversation is not None:
            options = replace(options, follow_up=conversation.thread)
            query = transcript.turns[-1][1]
        else:
            query = flatten_query(transcript)
        return PreparedAsk(caller, model, transcript, query, options, conversation, conversation_id)

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
            log.info("conversation %s: its thread is gone; starting a new one", prepared.conversation_id)
            prepared.conversation = None
            prepared.options = replace(prepared.options, follow_up=None)
            prepared.query = flatten_query(prepared.transcript)
            return self.client.ask(prepared.query, prepared.options)

    def remember(self, prepared: PreparedAsk, thread: ThreadIds | None, answer: str, title: str | None) -> None:
        """Store the thread so the client's next turn (history + this answer) continues it."""
        if thread is None:
            return
        turns = [*prepared.transcript.keyed_turns(), ("assistant", answer)]
        key = history_key(prepared.caller, turns)
        if prepared.conversation is not None:
            conversation = prepared.conversation.advanced(thread, key, title)
        else:
            now = time.time()
            conversation = Conversation(
                prepared.conversation_id, prepared.caller, thread, prepared.model.id, now, now, 1, title, (key,)
            )
        try:
            self.store.save(conversation)
        except PermissionError:
            log.warning("conversation id collision for caller; not remembered")

    # ---- helpers --------------------------------------------------------------------------

    def _conversation(
        self, body: dict[str, Any], caller: str, transcript: Transcript
    ) -> tuple[Conversation | None, str]:
        pinned = body.get("conversation_id")
        if isinstance(pinned, str) and pinned:
            return self.store.get(caller, pinned), pinned
        if len(transcript.turns) >= 3:
            key = history_key(caller, transcript.keyed_turns()[:-1])
            found = self.store.find(caller, key)
            if found is not None:
                return found, found.id
        return None, new_conversation_id()

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
