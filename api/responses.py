"""Responses blueprint: POST /v1/responses (JSON or SSE) on the chat core, and the caller's stored responses."""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from schemas.responses import CreateResponseRequestSchema

from .auth import caller
from .chat import completion_meta, json_body, read_whole, reserve_stream, stream_response, transcript_text, turn_limits
from .conversations import StoredResponse
from .errors import APIError
from .response_events import ResponseEvents, response_events
from .response_input import chain_history, locate_error, read_input, stored_items
from .response_objects import ResponseMeta, echo_fields, response_object, response_status, response_usage, whole_output
from .service import PreparedAsk
from .sse import client_watcher
from .state import ServerState, state
from .turn import ChatTurn

__all__ = ["bp"]

bp = Blueprint("responses", __name__)
_schema = CreateResponseRequestSchema()
_MAX_PAGE = 100


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), mimetype="application/json", headers=headers)


def _stored(server: ServerState, response_id: str, param: str | None = None) -> StoredResponse:
    """The caller's stored response; 404 when it is unknown, expired, not stored, or someone else's."""
    record = server.responses.get(caller(), response_id)
    if record is None:
        label = "Previous response" if param == "previous_response_id" else "Response"
        code = "previous_response_not_found" if param == "previous_response_id" else "response_not_found"
        raise APIError(404, f"{label} with id '{response_id}' not found.", code=code, param=param)
    return record


def _chat_body(server: ServerState, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The chat-completions-shaped body the chat core takes, and where each of its messages came from."""
    previous_id = body.get("previous_response_id")
    previous = _stored(server, previous_id, "previous_response_id") if previous_id else None
    history = chain_history(server.responses, caller(), previous) if previous else []
    read = read_input(body, history)
    chat = {
        **body,  # Perplexity's options and any extras keep their chat names
        "messages": read.messages,
        "max_completion_tokens": body.get("max_output_tokens"),
        "reasoning_effort": (body.get("reasoning") or {}).get("effort"),
        # A follow-up continues the previous response's thread; instructions are not carried over.
        "conversation_id": previous.conversation_id if previous else body.get("conversation_id"),
    }
    return chat, read.origins


def _prepare(server: ServerState, body: dict[str, Any]) -> tuple[PreparedAsk, dict[str, Any]]:
    chat, origins = _chat_body(server, body)
    try:
        return server.service.prepare(chat, caller(body)), chat
    except APIError as exc:
        raise locate_error(exc, origins) from exc


def _keeper(server: ServerState, body: dict[str, Any], prepared: PreparedAsk) -> Any:
    """A function that stores a finished response (a no-op for `store: false`)."""
    items = stored_items(body["input"])
    who = caller()

    def keep(response: dict[str, Any]) -> None:
        if body.get("store") is not False:
            record = StoredResponse(response["id"], who, time.time(), prepared.conversation_id, response, items)
            server.responses.save(record)

    return keep


@bp.post("/v1/responses")
def create_response() -> Response:
    """Answer `input` with Perplexity as a Responses API `response`, streamed as events or whole."""
    body = _schema.load(json_body())
    server = state()
    if body.get("stream"):
        reserve_stream()
    prepared, chat = _prepare(server, body)
    meta = ResponseMeta(completion_meta(prepared, chat), echo_fields(body))
    stream = server.service.open(prepared)  # opened here so errors before the first byte get a real status
    turn = ChatTurn(turn_limits(chat))
    prompt_text = transcript_text(prepared)
    keep = _keeper(server, body, prepared)
    headers = {"X-Conversation-ID": prepared.conversation_id}

    def done(finished: ChatTurn, response: dict[str, Any]) -> None:
        server.service.remember(prepared, finished.thread, finished.content, finished.title)
        keep(response)

    if body.get("stream"):
        started = g.started
        events = response_events(
            stream,
            turn,
            ResponseEvents(meta),
            prompt_text=prompt_text,
            heartbeat=float(current_app.config["HEARTBEAT_INTERVAL"]),
            gone=client_watcher(request.environ),
            on_done=done,
            on_failed=keep,
            on_error=server.record_stream_failure,
            on_first_token=lambda: server.metrics.ttft.observe(time.perf_counter() - started),
        )
        return stream_response(events, stream, headers)
    read_whole(stream, turn)
    output = whole_output(meta, turn)
    usage = response_usage(prompt_text, turn)
    response = response_object(meta, turn, status=response_status(turn), output=output, usage=usage)
    done(turn, response)
    return _json(response, headers)


@bp.get("/v1/responses/<response_id>")
def retrieve_response(response_id: str) -> Response:
    """One of the caller's stored responses, as it was sent."""
    return _json(_stored(state(), response_id).response)


@bp.delete("/v1/responses/<response_id>")
def delete_response(response_id: str) -> Response:
    """Forget one of the caller's stored responses."""
    if not state().responses.delete(caller(), response_id):
        raise APIError(404, f"Response with id '{response_id}' not found.", code="response_not_found")
    return _json({"id": response_id, "object": "response.deleted", "deleted": True})


@bp.get("/v1/responses/<response_id>/input_items")
def list_input_items(response_id: str) -> Response:
    """The input items of a stored response, a page at a time (`limit`, `order`, `after`)."""
    items = list(_stored(state(), response_id).input_items)
    if _query_order() == "desc":  # OpenAI's default: newest first
        items.reverse()
    after = request.args.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(400, f"No input item '{after}' in this response.", code="invalid_value", param="after")
        items = items[ids.index(after) + 1 :]
    limit = _query_limit()
    page = items[:limit]
    first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    return _json({"object": "list", "data": page, "first_id": first, "last_id": last, "has_more": len(items) > limit})


def _query_order() -> str:
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(
            400, "Invalid value for 'order': must be one of: asc, desc.", code="invalid_value", param="order"
        )
    return order


def _query_limit() -> int:
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_PAGE:
        message = f"Invalid value for 'limit': must be an integer between 1 and {_MAX_PAGE}."
        raise APIError(400, message, code="invalid_value", param="limit")
    return int(raw)
