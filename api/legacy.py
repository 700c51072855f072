"""Legacy completions blueprint: POST /v1/completions as `text_completion` objects (JSON or SSE) on the chat core.

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
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from perplexity.stream import AskStream
from schemas.completions import CompletionRequestSchema

from .auth import caller
from .chat import completion_meta, json_body, read_whole, reserve_stream, stream_response, transcript_text, turn_limits
from .completion import CompletionMeta, extras, usage
from .errors import APIError
from .service import PreparedAsk
from .sse import DONE, PING, client_watcher, encode, guarded, turn_pieces
from .state import ServerState, state
from .turn import ChatTurn

__all__ = ["bp", "text_chunks", "text_completion"]

bp = Blueprint("legacy", __name__)
_schema = CompletionRequestSchema()


def _prepare(server: ServerState, body: dict[str, Any]) -> tuple[PreparedAsk, dict[str, Any]]:
    """Prepare the prompt as a one-message chat on a new thread."""
    chat = {**body, "messages": [{"role": "user", "content": body["prompt"]}], "conversation_id": None}
    try:
        return server.service.prepare(chat, caller(body)), chat
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
    """The whole `text_completion` of a finished turn."""
    body = _object(meta, [_choice(echo + turn.content, turn.finish_reason or "stop")])
    return {**body, "usage": usage(prompt_text, turn), **extras(turn, meta, final=True)}


def _chunk(meta: CompletionMeta, text: str, fields: dict[str, Any], finish: str | None = None) -> bytes:
    # No `"usage": null` on every chunk as in chat: the spec's completion object has no nullable usage.
    return encode({**_object(meta, [_choice(text, finish)]), **fields})


def text_chunks(
    stream: AskStream,
    turn: ChatTurn,
    meta: CompletionMeta,
    *,
    prompt_text: str,
    echo: str,
    include_usage: bool,
    heartbeat: float,
    on_error: Callable[[BaseException], None] | None = None,
    on_first_token: Callable[[], None] | None = None,
    gone: Callable[[], bool] | None = None,
) -> Iterator[bytes]:
    """The SSE body: the echoed prompt, text chunks, a finish chunk, an optional usage chunk, then [DONE]."""
    body = _text_body(stream, turn, meta, prompt_text, echo, include_usage, heartbeat, on_first_token, gone)
    return guarded(body, stream, on_error)


def _text_body(
    stream: AskStream,
    turn: ChatTurn,
    meta: CompletionMeta,
    prompt_text: str,
    echo: str,
    include_usage: bool,
    heartbeat: float,
    on_first_token: Callable[[], None] | None,
    gone: Callable[[], bool] | None,
) -> Iterator[bytes]:
    yield encode(_object(meta, [_choice(echo, None)])) if echo else PING  # flushes the headers at once
    fields: dict[str, Any] = {}
    first_token = False
    for pieces in turn_pieces(stream, turn, heartbeat, gone):
        if pieces is None:
            yield PING
            continue
        out = []
        for piece in pieces:
            if piece.kind == "sources":
                fields = extras(turn, meta, final=False)
            elif piece.kind == "content":
                out.append(_chunk(meta, piece.text, fields))
                if not first_token and on_first_token is not None:
                    on_first_token()
                first_token = True
        if out:
            yield b"".join(out)
    yield _closing(turn, meta, prompt_text, include_usage)


def _closing(turn: ChatTurn, meta: CompletionMeta, prompt_text: str, include_usage: bool) -> bytes:
    parts = [_chunk(meta, "", extras(turn, meta, final=True), turn.finish_reason or "stop")]
    if include_usage:
        parts.append(encode({**_object(meta, []), "usage": usage(prompt_text, turn)}))
    return b"".join([*parts, DONE])


@bp.post("/v1/completions")
def create_completion() -> Response:
    """Complete a prompt with Perplexity, streamed or whole."""
    body = _schema.load(json_body())
    server = state()
    if body.get("stream"):
        reserve_stream()
    prepared, chat = _prepare(server, body)
    meta = replace(completion_meta(prepared, chat), id="cmpl-" + secrets.token_hex(12))
    stream = server.service.open(prepared)  # opened here so errors before the first byte get a real status
    turn = ChatTurn(turn_limits(chat))
    prompt_text, echo = transcript_text(prepared), body["prompt"] if body.get("echo") else ""
    if body.get("stream"):
        started = g.started
        chunks = text_chunks(
            stream,
            turn,
            meta,
            prompt_text=prompt_text,
            echo=echo,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            heartbeat=float(current_app.config["HEARTBEAT_INTERVAL"]),
            gone=client_watcher(request.environ),
            on_error=server.record_stream_failure,
            on_first_token=lambda: server.metrics.ttft.observe(time.perf_counter() - started),
        )
        return stream_response(chunks, stream, {})
    read_whole(stream, turn)
    return Response(orjson.dumps(text_completion(turn, meta, prompt_text, echo)), mimetype="application/json")
