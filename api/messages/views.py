"""Anthropic Messages endpoints: POST /v1/messages (JSON or SSE events) and POST /v1/messages/count_tokens.

Served on the chat core like every family: the request becomes a chat-shaped body (`inputs`), tools and
structured output an AgentSpec (`api.core.tools`), and the settled turn an Anthropic message (`objects`) or
event stream (`events`). Errors take Anthropic's shape (`api.edge.errors`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, g

from schemas.anthropic import CountTokensRequestSchema, MessagesRequestSchema

from ..config import parse_model_map
from ..core.agent import AgentOutcome, AgentStream, settle
from ..core.completion import REQUESTED_MODEL_HEADER, ModelNaming
from ..core.errors import APIError
from ..core.messages import locate_error, read_messages
from ..core.modelmap import PublicModel
from ..core.service import PreparedAsk
from ..core.tools import AgentSpec, anthropic_agent_spec
from ..core.turn import ChatTurn, count_tokens
from ..edge.auth import caller, check_model
from ..edge.sse import encode
from ..state import ServerState, state
from ..steps import StreamHooks, answer, json_body, json_response, turn_limits
from .events import MessageEvents, error_event, message_events
from .inputs import chat_input, is_web_search, system_text, wants_thinking
from .objects import MessageMeta, message_object, usage

if TYPE_CHECKING:
    from perplexity.stream import AskStream

__all__ = ["bp"]

bp = Blueprint("messages", __name__)
_schema = MessagesRequestSchema()
_count_schema = CountTokensRequestSchema()
_MAX_QUERY = 500  # characters of the question a server_tool_use block repeats as its query
_PROBE_TOKENS = 1  # max_tokens at or below this: a probe (Claude Code's /model and /context), answered here


def _model(server: ServerState, name: str) -> PublicModel:
    """The model an Anthropic model name selects (`ModelMap.resolve_anthropic`); 404 for a name that is none."""
    overrides = parse_model_map(current_app.config.get("ANTHROPIC_MODEL_MAP") or "")  # checked at start-up
    model = server.models.resolve_anthropic(name, overrides, current_app.config["DEFAULT_MODEL"])
    if model is None:
        shown = name if len(name) <= 100 else name[:100] + "…"
        raise APIError(404, f"model: {shown}", code="model_not_found", param="model")
    check_model(name, model.id)  # the Anthropic name asked for, or the model it maps to
    return model


def _prepare(server: ServerState, body: dict[str, Any], agent: AgentSpec | None) -> tuple[PreparedAsk, dict[str, Any]]:
    model = _model(server, body["model"])
    read = chat_input(body, model.id)
    try:
        return server.service.prepare(read.chat, caller(read.chat), agent=agent), read.chat
    except APIError as exc:
        raise locate_error(exc, read.origins, "messages") from exc


def _meta(server: ServerState, body: dict[str, Any], prepared: PreparedAsk) -> MessageMeta:
    thinking = wants_thinking(body)
    # The model that serves it, named in the response: the thinking variant when thinking picked it.
    served = prepared.model
    if prepared.options.model != served.upstream:
        served = server.models.resolve(prepared.options.model) or served
    display = (body.get("thinking") or {}).get("display")
    search = None
    if any(is_web_search(tool) for tool in body.get("tools") or ()) and not body.get("disable_search"):
        last = prepared.transcript.turns[-1][1] if prepared.transcript.turns else ""
        search = last if len(last) <= _MAX_QUERY else last[:_MAX_QUERY] + "…"
    naming = ModelNaming(served.id, prepared.options.model, server.models)  # a finished message names what answered
    return MessageMeta(served.id, thinking, display != "omitted", search, naming=naming)


@bp.post("/v1/messages")
def create_message() -> Response:
    """Answer an Anthropic Messages request with Perplexity, as a message or its event stream."""
    body = _schema.load(json_body())
    server = state()
    agent = anthropic_agent_spec(body)
    prepared, chat = _prepare(server, body, agent)
    meta = _meta(server, body, prepared)
    headers = {"X-Conversation-ID": prepared.conversation_id, REQUESTED_MODEL_HEADER: meta.model}
    if body["max_tokens"] <= _PROBE_TOKENS:
        return _probe(meta, prepared, stream=bool(body.get("stream")), headers=headers)
    turn = ChatTurn(turn_limits(chat, agent))

    def done(outcome: AgentOutcome) -> None:
        finished = outcome.turn
        server.service.remember(prepared, finished.thread, outcome.history_text, finished.title)

    def sse(upstream: AskStream, hooks: StreamHooks) -> Iterator[bytes]:
        events = MessageEvents(meta, prepared.prompt_text)
        agent_stream = AgentStream(server.service, prepared, hooks.heartbeat, hooks.gone) if agent else None
        return message_events(upstream, turn, events, hooks, on_done=done, agent=agent_stream)

    def whole() -> Response:
        outcome = settle(server.service, prepared, turn) if agent is not None else AgentOutcome(turn)
        done(outcome)
        return json_response(message_object(meta, outcome, prepared.prompt_text), headers)

    request_id = g.get("request_id")  # the stream's error event is written after the request context is gone

    def fail(exc: BaseException) -> bytes:
        return error_event(exc, request_id)

    stream = sse if body.get("stream") else None
    return answer(prepared, turn, stream=stream, whole=whole, fail=fail, headers=headers)


def _probe(meta: MessageMeta, prepared: PreparedAsk, *, stream: bool, headers: dict[str, str]) -> Response:
    """A `max_tokens: 1` request (Claude Code checks a model with one on /model and /context): an empty answer
    cut at max_tokens, with the prompt's usage, without spending a Perplexity search on one token."""
    use = usage(prepared.prompt_text, None, meta)
    message = {
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": [{"type": "text", "text": ""}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": use,
    }
    if not stream:
        return json_response(message, headers)
    start = {**message, "content": [], "stop_reason": None}
    events = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None}, "usage": use},
        {"type": "message_stop"},
    ]
    data = b"".join(encode(event, event=event["type"]) for event in events)
    return Response(data, mimetype="text/event-stream", headers={"Cache-Control": "no-cache", **headers})


@bp.post("/v1/messages/count_tokens")
def count_message_tokens() -> Response:
    """The estimated input tokens of a request, counted as `usage.input_tokens` counts them (nothing is asked)."""
    body = _count_schema.load(json_body())
    server = state()
    _model(server, body["model"])
    agent = anthropic_agent_spec(body)
    read = chat_input(body, body["model"])
    try:
        transcript = read_messages(read.chat["messages"])
        texts = [text for _, text in transcript.keyed_turns()]
    except APIError:  # e.g. a conversation that ends with the assistant's turn: count its text as it is
        texts = [system_text(body.get("system"))] + [str(m.get("content") or "") for m in read.chat["messages"]]
    if agent is not None:
        texts.append(agent.section())
    return json_response({"input_tokens": count_tokens("\n".join(texts))})
