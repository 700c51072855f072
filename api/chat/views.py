"""Chat endpoints: POST /v1/chat/completions (JSON or SSE), GET /conversations, DELETE /conversations/<id>."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from flask import Blueprint, Response, request

from schemas import ChatCompletionRequestSchema, ConversationDeletedSchema, ConversationListSchema

from ..core.agent import AgentOutcome, AgentStream, settle
from ..core.completion import REQUESTED_MODEL_HEADER, ModelNaming, completion
from ..core.errors import APIError
from ..core.tools import chat_agent_spec
from ..core.turn import ChatTurn
from ..edge.auth import caller
from ..state import state
from ..steps import StreamHooks, answer, completion_meta, json_body, json_response, permit_model, turn_limits
from .chunks import chat_chunks

if TYPE_CHECKING:
    from perplexity.stream import AskStream

__all__ = ["bp"]

bp = Blueprint("chat", __name__)
_schema = ChatCompletionRequestSchema()
# Other response bodies are dumped through their schemas. The completion and its stream chunks are built by
# hand on the hot path (a schema dump costs more than the rest of a chunk's work), and test_response_schemas
# checks that ChatCompletionSchema / ChatCompletionChunkSchema dump them unchanged.
_conversations_schema = ConversationListSchema()
_deleted_schema = ConversationDeletedSchema()


@bp.post("/v1/chat/completions")
def create_chat_completion() -> Response:
    """Answer a chat with Perplexity, streamed or whole."""
    body = _schema.load(json_body())
    permit_model(body.get("model"))
    service = state().service
    agent = chat_agent_spec(body)
    prepared = service.prepare(body, caller(body), anchor=body.get("conversation_id"), agent=agent)
    naming = ModelNaming(prepared.model.id, prepared.options.model, service.models)  # `model`: what answered
    meta, turn = replace(completion_meta(prepared, body), naming=naming), ChatTurn(turn_limits(body, agent))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def remember(outcome: AgentOutcome) -> None:
        done = outcome.turn
        service.remember(prepared, done.thread, outcome.history_text, done.title)

    def sse(upstream: AskStream, hooks: StreamHooks) -> Iterator[bytes]:
        agent_stream = AgentStream(service, prepared, hooks.heartbeat, hooks.gone) if agent is not None else None
        return chat_chunks(
            upstream, turn, meta, hooks, prompt_text=prepared.prompt_text, include_usage=include_usage,
            on_done=remember, agent=agent_stream,
        )  # fmt: skip

    def whole() -> Response:
        outcome = settle(service, prepared, turn) if agent is not None else AgentOutcome(turn)
        remember(outcome)
        done = outcome.turn
        body = completion(done, meta, prepared.prompt_text, calls=outcome.calls, content=outcome.json_text)
        return json_response(body, headers)

    headers = {"X-Conversation-ID": prepared.conversation_id, REQUESTED_MODEL_HEADER: prepared.model.id}
    return answer(prepared, turn, stream=sse if body.get("stream") else None, whole=whole, headers=headers)


@bp.get("/conversations")
def list_conversations() -> Response:
    """The caller's own conversations."""
    # An end user's conversations (`?user=` / `?safety_identifier=`), as the requests that made them named it.
    items = [c.public() for c in state().store.list(caller(request.args))]
    return json_response(_conversations_schema.dump({"object": "list", "data": items}))


@bp.delete("/conversations/<conversation_id>")
def delete_conversation(conversation_id: str) -> Response:
    """Forget one of the caller's conversations."""
    if not state().store.delete(caller(request.args), conversation_id):
        raise APIError(404, f"No conversation '{conversation_id}'.", code="conversation_not_found")
    body = _deleted_schema.dump({"id": conversation_id, "object": "conversation.deleted", "deleted": True})
    return json_response(body)
