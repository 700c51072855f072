"""Legacy completions: POST /v1/completions as `text_completion` objects (JSON or SSE) on the chat core.

Decisions, for clients of the old endpoint:
- `max_tokens` has no default. OpenAI's spec says 16, but Perplexity writes the whole answer anyway and
  cutting every answer to ~64 characters would make the endpoint useless; an explicit `max_tokens` is
  honoured (approximately, 4 characters a token) with `finish_reason: "length"`.
- `prompt` is one text (a string, or a list with one string); `suffix` (fill-in-the-middle) is refused;
  see schemas/completions.py for why.
- `echo` puts the prompt before the answer; `stop` and `max_tokens` apply to the answer only.
- Reasoning is not part of the text (the legacy format has no place for it); it counts in usage.
- Stateless: each request is a new Perplexity thread and none is remembered.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response

from schemas.completions import CompletionRequestSchema

from ..core.completion import REQUESTED_MODEL_HEADER, CompletionMeta, ModelNaming, extras, usage
from ..core.errors import APIError
from ..core.service import PreparedAsk
from ..core.streaming import turn_pieces
from ..core.turn import ChatTurn
from ..edge.auth import caller
from ..edge.sse import DONE, PING, encode
from ..state import state
from ..steps import StreamHooks, answer, completion_meta, json_body, json_response, permit_model, turn_limits

if TYPE_CHECKING:
    from perplexity.stream import AskStream

__all__ = ["bp", "text_chunks", "text_completion"]

bp = Blueprint("completions", __name__)
_schema = CompletionRequestSchema()


def _prepare(body: dict[str, Any]) -> tuple[PreparedAsk, dict[str, Any]]:
    """Prepare the prompt as a one-message chat on a new thread (no anchor, never remembered)."""
    permit_model(body.get("model"))
    chat = {**body, "messages": [{"role": "user", "content": body["prompt"]}]}
    try:
        return state().service.prepare(chat, caller(body)), chat
    except APIError as exc:
        if (exc.param or "").startswith("messages"):
            raise replace(exc, param="prompt") from exc
        raise


def _choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def _object(meta: CompletionMeta, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    }


def text_completion(turn: ChatTurn, meta: CompletionMeta, prompt_text: str, echo: str) -> dict[str, Any]:
    """The whole `text_completion` of a finished turn, naming the model that answered it."""
    meta = meta.served(turn.model)
    body = _object(meta, [_choice(echo + turn.content, turn.finish_reason or "stop")])
    return {**body, "usage": usage(prompt_text, turn), **extras(turn, meta, final=True)}


def _chunk(meta: CompletionMeta, text: str, fields: dict[str, Any], finish: str | None = None) -> bytes:
    # No `"usage": null` on every chunk as in chat: the spec's completion object has no nullable usage.
    return encode({**_object(meta, [_choice(text, finish)]), **fields})


def text_chunks(
    stream: AskStream,
    turn: ChatTurn,
    meta: CompletionMeta,
    hooks: StreamHooks,
    *,
    prompt_text: str,
    echo: str,
    include_usage: bool,
) -> Iterator[bytes]:
    """The SSE body: the echoed prompt, text chunks, a finish chunk, an optional usage chunk, then [DONE].

    Every chunk names the model of the first one: the echo goes at once, naming the model asked; without it the
    first chunk waits for Perplexity's first pieces and names the model answering (as chat's stream does).
    """
    yield encode(_object(meta, [_choice(echo, None)])) if echo else PING  # flushes the headers at once
    named = bool(echo)
    fields: dict[str, Any] = {}
    first_token = False
    for pieces in turn_pieces(stream, turn, hooks.heartbeat, hooks.gone):
        if pieces is None:
            yield PING
            continue
        out = []
        for piece in pieces:
            if piece.kind == "sources":
                fields = extras(turn, meta, final=False)
            elif piece.kind == "content":
                if not named:
                    named, meta = True, meta.served(turn.model)
                out.append(_chunk(meta, piece.text, fields))
                if not first_token:
                    first_token = True
                    hooks.first_token()
        if out:
            yield b"".join(out)
    yield _closing(turn, meta if named else meta.served(turn.model), prompt_text, include_usage)


def _closing(turn: ChatTurn, meta: CompletionMeta, prompt_text: str, include_usage: bool) -> bytes:
    parts = [_chunk(meta, "", extras(turn, meta, final=True), turn.finish_reason or "stop")]
    if include_usage:
        parts.append(encode({**_object(meta, []), "usage": usage(prompt_text, turn)}))
    return b"".join([*parts, DONE])


@bp.post("/v1/completions")
def create_completion() -> Response:
    """Complete a prompt with Perplexity, streamed or whole."""
    body = _schema.load(json_body())
    prepared, chat = _prepare(body)
    naming = ModelNaming(prepared.model.id, prepared.options.model, state().models)  # `model`: what answered
    meta = replace(completion_meta(prepared, chat), id="cmpl-" + secrets.token_hex(12), naming=naming)
    turn = ChatTurn(turn_limits(chat))
    echo = body["prompt"] if body.get("echo") else ""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def sse(upstream: AskStream, hooks: StreamHooks) -> Iterator[bytes]:
        return text_chunks(
            upstream, turn, meta, hooks, prompt_text=prepared.prompt_text, echo=echo, include_usage=include_usage
        )

    def whole() -> Response:
        return json_response(text_completion(turn, meta, prepared.prompt_text, echo))

    headers = {REQUESTED_MODEL_HEADER: prepared.model.id}
    return answer(prepared, turn, stream=sse if body.get("stream") else None, whole=whole, headers=headers)
