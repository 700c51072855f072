"""Chat blueprint: POST /v1/chat/completions (JSON or SSE) and the caller's conversations."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from schemas import (
    ChatCompletionRequestSchema,
    ConversationDeletedSchema,
    ConversationListSchema,
)

from .auth import caller
from .completion import CompletionMeta, completion
from .errors import APIError
from .quotas import check_stream_cap
from .service import PreparedAsk
from .sse import chat_chunks, client_watcher
from .state import state
from .turn import ChatTurn, TurnLimits

if TYPE_CHECKING:  # views hand the stream on; only the service layer works with perplexity/
    from perplexity.stream import AskStream

__all__ = [
    "bp",
    "completion_meta",
    "json_body",
    "read_whole",
    "reserve_stream",
    "stream_response",
    "transcript_text",
    "turn_limits",
]

log = logging.getLogger(__name__)

bp = Blueprint("chat", __name__)
_schema = ChatCompletionRequestSchema()
# Other response bodies are dumped through their schemas. The completion and its stream chunks are built by
# hand on the hot path (a dump costs 18-57 us per chunk, about 0.2 ms per completion), and
# test_response_schemas checks that ChatCompletionSchema / ChatCompletionChunkSchema dump them unchanged.
_conversations_schema = ConversationListSchema()
_deleted_schema = ConversationDeletedSchema()
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def json_body() -> dict[str, Any]:
    """The request's JSON object; 415 when it is not JSON, 400 when it does not parse."""
    if not request.is_json:
        raise APIError(
            415, "The request body must be JSON (Content-Type: application/json).", code="unsupported_media_type"
        )
    try:
        body = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def turn_limits(body: dict[str, Any]) -> TurnLimits:
    """The output limits of a chat-shaped body (also built by the Responses and legacy completions views)."""
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    mode = body.get("citation_mode") or current_app.config["DEFAULT_CITATION_MODE"]
    return TurnLimits(citation_mode=mode, stops=stops, max_tokens=max_tokens)


def completion_meta(prepared: PreparedAsk, body: dict[str, Any]) -> CompletionMeta:
    """Identity and opt-in extras of the answer to a chat-shaped body."""
    return CompletionMeta(
        model=prepared.model.id,
        want_related=bool(body.get("return_related_questions")),
        want_images=bool(body.get("return_images")),
    )


def transcript_text(prepared: PreparedAsk) -> str:
    """The text usage counts as prompt: instructions and every turn sent."""
    return "\n".join(text for _, text in prepared.transcript.keyed_turns())


def reserve_stream() -> None:
    """429 before any upstream work when the caller already holds MAX_CONCURRENT_STREAMS streams."""
    server = state()
    cap = int(current_app.config["MAX_CONCURRENT_STREAMS"])
    check_stream_cap(server.streams_by_caller[g.get("caller", "")], cap, server.metrics)


def stream_response(body: Iterator[bytes], stream: AskStream, headers: dict[str, str]) -> Response:
    """An SSE response over `body`, counted as one of the caller's open streams until it closes."""
    server, key = state(), g.get("caller", "")
    response = Response(body, mimetype="text/event-stream", headers={**_SSE_HEADERS, **headers})
    server.stream_opened(key)
    response.call_on_close(stream.close)  # a generator that never started never runs its finally
    response.call_on_close(lambda: server.stream_closed(key))
    return response


def read_whole(stream: AskStream, turn: ChatTurn) -> None:
    """Feed the whole answer to `turn` (up to its limits), for a non-streamed reply."""
    with stream:
        for event in stream:
            turn.feed(event)
            if turn.finish_reason is not None:
                break
    if turn.completed is not None and turn.completed.revised and turn.finish_reason == "stop":
        turn.rerender(turn.completed.final_answer)  # a whole answer can take Perplexity's revision


@bp.post("/v1/chat/completions")
def create_chat_completion() -> Response:
    """Answer a chat with Perplexity, streamed or whole."""
    body = _schema.load(json_body())
    server = state()
    if body.get("stream"):
        reserve_stream()
    prepared = server.service.prepare(body, caller(body))
    limits, meta = turn_limits(body), completion_meta(prepared, body)
    stream = server.service.open(prepared)  # opened here so errors before the first byte get a real status
    turn = ChatTurn(limits)
    headers = {"X-Conversation-ID": prepared.conversation_id}

    def remember(done: ChatTurn) -> None:
        server.service.remember(prepared, done.thread, done.content, done.title)

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        started = g.started
        chunks = chat_chunks(
            stream,
            turn,
            meta,
            prompt_text=transcript_text(prepared),
            include_usage=include_usage,
            heartbeat=float(current_app.config["HEARTBEAT_INTERVAL"]),
            gone=client_watcher(request.environ),
            on_done=remember,
            on_error=server.record_stream_failure,
            on_first_token=lambda: server.metrics.ttft.observe(time.perf_counter() - started),
        )
        return stream_response(chunks, stream, headers)
    read_whole(stream, turn)
    remember(turn)
    # Not dumped through ChatCompletionSchema on the hot path (about 0.2 ms a request): test_response_schemas
    # checks that the schema dumps completion() to the same bytes and validates it against OpenAI's spec.
    body = completion(turn, meta, transcript_text(prepared))
    return Response(orjson.dumps(body), mimetype="application/json", headers=headers)


@bp.get("/conversations")
def list_conversations() -> Response:
    """The caller's own conversations."""
    items = [c.public() for c in state().store.list(caller())]
    body = _conversations_schema.dump({"object": "list", "data": items})
    return Response(orjson.dumps(body), mimetype="application/json")


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> Response:
    """Forget one of the caller's conversations."""
    if not state().store.delete(caller(), conversation_id):
        raise APIError(404, f"No conversation '{conversation_id}'.", code="conversation_not_found")
    body = _deleted_schema.dump({"id": conversation_id, "object": "conversation.deleted", "deleted": True})
    return Response(orjson.dumps(body), mimetype="application/json")
