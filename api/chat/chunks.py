"""The chat completion stream: a ChatTurn's pieces as `chat.completion.chunk` events, built from a template."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from ..core.agent import AgentOutcome, AgentStream, fragments
from ..core.completion import CompletionMeta, chunk, extras, tool_call_object, usage
from ..core.streaming import relay, turn_pieces
from ..core.turn import ChatTurn, Piece
from ..edge.sse import DONE, PING, encode

if TYPE_CHECKING:
    from perplexity.stream import AskStream

    from ..steps import StreamHooks

__all__ = ["ChunkEncoder", "chat_chunks"]


class ChunkEncoder:
    """The SSE bytes of one completion's delta chunks, equal to `encode(chunk(...))` at a fraction of the cost.

    Everything but the delta (id, model, choices scaffolding, usage, citations and search results) is encoded
    once into a prefix and a suffix, and again only when the fields change (new sources); each chunk then
    encodes just its delta. The template comes from `chunk()` itself, so the two cannot drift apart.
    """

    __slots__ = ("_meta", "_with_usage", "_prefix", "_suffix")

    def __init__(self, meta: CompletionMeta, *, with_usage: bool, fields: dict[str, Any] | None = None) -> None:
        self._meta = meta
        self._with_usage = with_usage
        self.set_fields(fields or {})

    def set_fields(self, fields: dict[str, Any]) -> None:
        """Perplexity's top-level fields (citations, search_results) for the chunks from now on."""
        whole = encode(chunk(self._meta, _PLACEHOLDER, fields=fields, with_usage=self._with_usage))
        # A literal {"__delta__":0} can only be the placeholder: inside a JSON string its quotes are escaped.
        self._prefix, self._suffix = whole.split(_PLACEHOLDER_JSON, 1)

    def content(self, text: str) -> bytes:
        return self._prefix + b'{"content":' + orjson.dumps(text) + b"}" + self._suffix

    def delta(self, delta: dict[str, Any]) -> bytes:
        return self._prefix + orjson.dumps(delta) + self._suffix


_PLACEHOLDER: dict[str, Any] = {"__delta__": 0}
_PLACEHOLDER_JSON = orjson.dumps(_PLACEHOLDER)


def chat_chunks(
    stream: AskStream,
    turn: ChatTurn,
    meta: CompletionMeta,
    hooks: StreamHooks,
    *,
    prompt_text: str,
    include_usage: bool,
    on_done: Callable[[AgentOutcome], None],
    agent: AgentStream | None = None,
) -> Iterator[bytes]:
    """The chat completion SSE body: role chunk, deltas, finish chunk, optional usage chunk, [DONE].

    With `agent` (tools or structured output) an answer that may be a call is held back by its gate and sent
    once settled: as `tool_calls` deltas, as the JSON output, or as the text it turned out to be.
    Failures are not handled here: `api.steps.answer` runs this body and ends a broken stream.

    Every chunk names one model: the one answering when the first chunk goes out (`CompletionMeta.served`). That
    chunk waits for Perplexity's first pieces, and every frame names its model, so it is the served one; should
    Perplexity name another later, the chunks keep the first (a client reads the model from any chunk).
    """
    yield PING  # flushes the headers now; the role chunk waits for sources (LangChain reads the first chunk)
    started = first_token = False
    encoder = ChunkEncoder(meta, with_usage=include_usage)
    role = {"role": "assistant"} if agent is not None else {"role": "assistant", "content": ""}
    for pieces in turn_pieces(stream, turn, hooks.heartbeat, hooks.gone):
        if pieces is None:
            yield PING
            continue
        if agent is not None and agent.gate.held:
            pieces = agent.gate.feed(turn, pieces)
        out: list[bytes] = []
        for piece in pieces:
            kind = piece.kind
            if kind == "sources":
                encoder.set_fields(extras(turn, meta, final=False))  # they ride on this and later chunks
            if not started:
                started = True
                meta, encoder = _named(meta, encoder, turn, include_usage)
                out.append(encoder.delta(role))
            if kind == "content":
                out.append(encoder.content(piece.text))
                if not first_token:
                    first_token = True
                    hooks.first_token()
            elif kind == "reasoning":
                out.append(encoder.delta({"reasoning_content": piece.text, "reasoning": piece.text}))
            # "finish" is sent once, by _closing
        if out:
            yield b"".join(out)
    outcome = AgentOutcome(turn)
    if agent is not None:
        outcome = yield from _settled(agent, turn, encoder)
        if not agent.gate.released:  # held to the end: the settled answer goes out now
            if not started:
                started = True
                meta, encoder = _named(meta, encoder, outcome.turn, include_usage)
                yield encoder.delta(role)
            yield b"".join(_settled_deltas(outcome, encoder))
            hooks.first_token()
    if not started:  # nothing was sent yet: the closing chunk is the first
        meta = meta.served(outcome.turn.model)
    yield _closing(outcome, meta, prompt_text, include_usage, started)
    on_done(outcome)


def _named(
    meta: CompletionMeta, encoder: ChunkEncoder, turn: ChatTurn, include_usage: bool
) -> tuple[CompletionMeta, ChunkEncoder]:
    """The meta and encoder of the first chunk on: named after the model answering `turn` (by now Perplexity's
    frames have said), with the fields the chunks carry so far."""
    served = meta.served(turn.model)
    if served is meta:
        return meta, encoder
    return served, ChunkEncoder(served, with_usage=include_usage, fields=extras(turn, served, final=False))


def _settled(agent: AgentStream, turn: ChatTurn, encoder: ChunkEncoder) -> Generator[bytes, None, AgentOutcome]:
    """Run the agent's settling (a repair turn, if any): its reasoning as deltas, pings in its silences."""

    def reasoning(pieces: list[Piece]) -> bytes:
        return b"".join(encoder.delta({"reasoning_content": p.text, "reasoning": p.text}) for p in pieces)

    return (yield from relay(agent.finish(turn), reasoning, PING))


def _settled_deltas(outcome: AgentOutcome, encoder: ChunkEncoder) -> Iterator[bytes]:
    """A held answer's deltas: each tool call (id, name, then its arguments in fragments), or the content."""
    for index, call in enumerate(outcome.calls):
        if call.kind == "custom":  # a freeform call goes whole: the chunk schema has no fragment form for it
            yield encoder.delta({"tool_calls": [{"index": index, **tool_call_object(call)}]})
            continue
        head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield encoder.delta({"tool_calls": [head]})
        for fragment in fragments(call.arguments):
            yield encoder.delta({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    if not outcome.calls:
        for fragment in fragments(outcome.content or ""):
            yield encoder.content(fragment)


def _closing(
    outcome: AgentOutcome, meta: CompletionMeta, prompt_text: str, include_usage: bool, started: bool
) -> bytes:
    turn = outcome.turn
    parts = []
    if not started:
        parts.append(encode(chunk(meta, {"role": "assistant", "content": ""}, with_usage=include_usage)))
    fields = extras(turn, meta, final=True)
    # Annotations index into the answer text: they hold only when that text is what was sent.
    annotations = turn.annotations if outcome.is_text else []
    # Not in the spec's delta schema, but OpenRouter-style clients read annotations from a late delta.
    delta: dict[str, Any] = {"annotations": annotations} if annotations else {}
    parts.append(
        encode(chunk(meta, delta, finish_reason=outcome.finish_reason, fields=fields, with_usage=include_usage))
    )
    if include_usage:
        body = chunk(meta, {}, fields=None)
        body["choices"] = []
        body["usage"] = usage(prompt_text, turn)
        parts.append(encode(body))
    parts.append(DONE)
    return b"".join(parts)
