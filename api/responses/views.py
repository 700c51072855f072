"""Responses endpoints: POST /v1/responses (JSON or SSE events) on the chat core, and the caller's stored responses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from schemas.responses import WEB_SEARCH_TOOLS, CreateResponseRequestSchema

from ..core.agent import AgentOutcome, AgentStream, settle
from ..core.completion import REQUESTED_MODEL_HEADER, ModelNaming
from ..core.errors import APIError
from ..core.messages import locate_error
from ..core.service import PreparedAsk
from ..core.tools import AgentSpec, responses_agent_spec
from ..core.turn import ChatTurn
from ..edge.auth import caller
from ..state import ServerState, state
from ..steps import StreamHooks, answer, completion_meta, json_body, json_response, permit_model, turn_limits
from ..stores.records import StoredResponse
from . import background
from .events import ResponseEvents, response_events
from .inputs import chain_history, read_input, stored_items
from .objects import ResponseMeta, echo_fields, response_object, response_status, response_usage, whole_output

if TYPE_CHECKING:
    from perplexity.stream import AskStream

__all__ = ["bp"]

bp = Blueprint("responses", __name__)
_schema = CreateResponseRequestSchema()
_MAX_PAGE = 100
_MAX_QUERY = 500  # characters of the asked question a web_search_call item repeats


def _owner(body: dict[str, Any] | None = None) -> str:
    """Whose stored responses a request reaches: the caller of the conversations rule (`caller`), narrowed by the
    `user` / `safety_identifier` of the body, or of the query string on GET and DELETE, which have no body.

    So a response stored with an end user is read back, deleted and continued only by requests naming the same
    end user, and one stored without is reached only by requests naming none.
    """
    return caller(body if body is not None else request.args)


def _stored(server: ServerState, response_id: str, who: str, param: str | None = None) -> StoredResponse:
    """The caller's stored response; 404 when it is unknown, expired, evicted, not stored, or someone else's."""
    record = server.responses.get(who, response_id)
    if record is None:
        label = "Previous response" if param == "previous_response_id" else "Response"
        code = "previous_response_not_found" if param == "previous_response_id" else "response_not_found"
        raise APIError(404, f"{label} with id '{response_id}' not found.", code=code, param=param)
    return record


def _prepare(server: ServerState, body: dict[str, Any], agent: AgentSpec | None) -> tuple[PreparedAsk, dict[str, Any]]:
    """The chat-shaped body the chat core takes, prepared on the thread `previous_response_id` continues.

    The previous response anchors the turn to its conversation (the thread rule, `api.core.continuity`); its chain
    is the history sent when that thread has to be started again. Instructions are not carried over.
    """
    permit_model(body.get("model"))  # before the stored chain is read (a background response too)
    who = _owner(body)
    previous_id = body.get("previous_response_id")
    previous = _stored(server, previous_id, who, "previous_response_id") if previous_id else None
    chain = server.service.continuity.response_chain(who, previous) if previous else []
    read = read_input(body, chain_history(chain))
    chat = {
        **body,  # Perplexity's options and any extras keep their chat names
        "messages": read.messages,
        "max_completion_tokens": body.get("max_output_tokens"),
        "reasoning_effort": (body.get("reasoning") or {}).get("effort"),
    }
    location = next((tool["user_location"] for tool in _web_search_tools(body) if tool.get("user_location")), None)
    if location and not chat.get("web_search_options"):  # the web search tool's location, as chat names it
        chat["web_search_options"] = {"user_location": location}
    anchor = previous.conversation_id if previous else body.get("conversation_id")
    try:
        return server.service.prepare(chat, who, anchor=anchor, agent=agent), chat
    except APIError as exc:
        raise locate_error(exc, read.origins) from exc


def _web_search_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [tool for tool in body.get("tools") or () if tool["type"] in WEB_SEARCH_TOOLS]


def _search_query(body: dict[str, Any], prepared: PreparedAsk) -> str | None:
    """The query a `web_search_call` item reports: the request's last turn, when it offered web search."""
    if not _web_search_tools(body) or body.get("tool_choice") == "none" or body.get("disable_search"):
        return None
    last = prepared.transcript.turns[-1][1] if prepared.transcript.turns else ""
    return last if len(last) <= _MAX_QUERY else last[:_MAX_QUERY] + "…"


@bp.post("/v1/responses")
def create_response() -> Response:
    """Answer `input` with Perplexity as a Responses API `response`, streamed as events or whole."""
    body = _schema.load(json_body())
    if body.get("background") and body.get("store") is False:  # a background response is only read from the store
        raise APIError(400, "Background responses require store=true.", code="invalid_value", param="store")
    server = state()
    agent = responses_agent_spec(body)
    prepared, chat = _prepare(server, body, agent)
    naming = ModelNaming(prepared.model.id, prepared.options.model, server.models)  # `model`: what answered
    completion = replace(completion_meta(prepared, chat), naming=naming)
    echo = {**echo_fields(body), "background": bool(body.get("background"))}
    meta = ResponseMeta(completion, echo, _search_query(body, prepared))
    turn = ChatTurn(turn_limits(chat, agent))
    items, who = stored_items(body["input"]), _owner(body)

    def keep(response: dict[str, Any]) -> None:
        if body.get("store") is not False:
            record = StoredResponse(response["id"], who, time.time(), prepared.conversation_id, response, items)
            server.responses.save(record)

    def done(outcome: AgentOutcome, response: dict[str, Any]) -> None:
        finished = outcome.turn
        server.service.remember(prepared, finished.thread, outcome.history_text, finished.title)
        keep(response)

    if body.get("background"):

        def remember(outcome: AgentOutcome) -> None:
            server.service.remember(prepared, outcome.turn.thread, outcome.history_text, outcome.turn.title)

        streamed, agentic = bool(body.get("stream")), agent is not None
        return background.start(
            server, prepared, turn, meta, who=who, items=items, remember=remember, agent=agentic, stream=streamed
        )

    events = ResponseEvents(meta)

    def sse(upstream: AskStream, hooks: StreamHooks) -> Iterator[bytes]:
        agent_stream = AgentStream(server.service, prepared, hooks.heartbeat, hooks.gone) if agent else None
        return response_events(
            upstream, turn, events, hooks, prompt_text=prepared.prompt_text, on_done=done, agent=agent_stream
        )

    def failed(exc: BaseException) -> bytes:
        return events.failed_event(exc, turn, keep)

    def whole() -> Response:
        outcome = settle(server.service, prepared, turn) if agent is not None else AgentOutcome(turn)
        finished = outcome.turn
        output, usage = whole_output(meta, outcome), response_usage(prepared.prompt_text, finished)
        response = response_object(meta, finished, status=response_status(finished), output=output, usage=usage)
        done(outcome, response)
        return json_response(response, headers)

    headers = {"X-Conversation-ID": prepared.conversation_id, REQUESTED_MODEL_HEADER: prepared.model.id}
    stream = sse if body.get("stream") else None
    return answer(prepared, turn, stream=stream, whole=whole, fail=failed, headers=headers)


@bp.get("/v1/responses/<response_id>")
def retrieve_response(response_id: str) -> Response:
    """One of the caller's stored responses, as it was sent; with `stream=true`, a background response's events
    after `starting_after`, the stored ones and then the live ones."""
    server, who = state(), _owner()
    record = background.judge(server, _stored(server, response_id, who))
    if request.args.get("stream") not in ("true", "True", "1"):
        return json_response(record.response)
    if not record.response.get("background"):
        raise APIError(400, "Only background responses can be streamed again.", code="invalid_value", param="stream")
    raw = request.args.get("starting_after", "-1")
    if not raw.lstrip("-").isdigit():
        message = "Invalid value for 'starting_after': must be an integer."
        raise APIError(400, message, code="invalid_value", param="starting_after")
    return background.follow_response(server, background.jobs_of(server), response_id, who, int(raw))


@bp.post("/v1/responses/<response_id>/cancel")
def cancel_response(response_id: str) -> Response:
    """Cancel one of the caller's background responses while it is queued or running."""
    server = state()
    return json_response(background.cancel(server, _stored(server, response_id, _owner())))


@bp.delete("/v1/responses/<response_id>")
def delete_response(response_id: str) -> Response:
    """Forget one of the caller's stored responses (a background one still running is cancelled first, so its
    runner does not store it again)."""
    server, who = state(), _owner()
    record = server.responses.get(who, response_id)
    if record is not None and record.response.get("background"):
        jobs = background.jobs_of(server)
        if record.response["status"] in ("queued", "in_progress"):
            jobs.cancel(response_id)
        else:
            jobs.forget(response_id)
    if not server.responses.delete(who, response_id):
        raise APIError(404, f"Response with id '{response_id}' not found.", code="response_not_found")
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


@bp.get("/v1/responses/<response_id>/input_items")
def list_input_items(response_id: str) -> Response:
    """The input items of a stored response, a page at a time (`limit`, `order`, `after`)."""
    items = list(_stored(state(), response_id, _owner()).input_items)
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
    body = {"object": "list", "data": page, "first_id": first, "last_id": last, "has_more": len(items) > limit}
    return json_response(body)


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
