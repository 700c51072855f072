"""The Anthropic Messages event stream: a turn's pieces as `event:`/`data:` frames in Anthropic's grammar.

    message_start, ping, { content_block_start(i), content_block_delta(i)*, content_block_stop(i) },
    message_delta (stop_reason, cumulative usage), message_stop

Blocks are strictly sequential with indexes 0, 1, 2, ...: a thinking block (when asked for) while Perplexity
plans, the web search's `server_tool_use` and `web_search_tool_result` once its sources are known (when the
request offered the server tool), then the answer's text block with `citations_delta` events as sources are
cited, or the `tool_use` blocks of an agent turn (started with an empty input, filled by `input_json_delta`).
Reasoning that arrives once the answer has started is not shown (a thinking block cannot follow the text here).
Heartbeats are `ping` events; a failure after the start is one `error` event, and nothing follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from ..core.agent import AgentOutcome, AgentStream, fragments, gated_stream
from ..core.turn import ChatTurn, Piece
from ..edge.errors import anthropic_error, to_api_error
from ..edge.sse import encode
from .objects import (
    MessageMeta,
    citation,
    new_id,
    search_blocks,
    stop_reason,
    thinking_signature,
    tool_use_block,
    usage,
)

if TYPE_CHECKING:
    from perplexity.stream import AskStream

    from ..steps import StreamHooks

__all__ = ["PING", "MessageEvents", "error_event", "message_events"]


def _event(data: dict[str, Any]) -> bytes:
    return encode(data, event=data["type"])


PING = _event({"type": "ping"})


def error_event(exc: BaseException, request_id: str | None = None) -> bytes:
    """The `error` event that ends a broken stream (Anthropic's error body; the status is already sent)."""
    _, body = anthropic_error(to_api_error(exc), request_id)
    return _event(body)


class MessageEvents:
    """Builds the event sequence of one streamed message; one block is open at a time."""

    def __init__(self, meta: MessageMeta, prompt_text: str) -> None:
        self.meta = meta
        self.prompt_text = prompt_text
        self._index = -1  # the index of the last block started
        self._open: str | None = None  # the type of the open block
        self._thinking = ""
        self._answer_started = False
        self._searched = meta.search_query is None
        self._cited: set[str] = set()  # the URLs cited so far
        self._marks = 0  # the citation markers read so far

    def start(self) -> bytes:
        """`message_start` (the message with no content yet and the prompt's usage), then a `ping`."""
        message = {
            "id": self.meta.id,
            "type": "message",
            "role": "assistant",
            "model": self.meta.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(self.prompt_text, None, self.meta),
        }
        return _event({"type": "message_start", "message": message}) + PING

    def feed(self, pieces: list[Piece], turn: ChatTurn) -> list[bytes]:
        """The events for the turn's new pieces."""
        out: list[bytes] = []
        for piece in pieces:
            kind = piece.kind
            if kind == "reasoning" and self.meta.thinking and not self._answer_started:
                out += self._thinking_delta(piece.text)
            elif kind == "sources" and not self._answer_started:
                out += self._search(turn)
            elif kind == "content" and piece.text:
                out += self._text_delta(piece.text, turn)
        return out

    def finish(self, outcome: AgentOutcome, *, held: bool) -> bytes:
        """Close the content (a held answer goes out now: its calls or its text), then the closing events."""
        turn = outcome.turn
        out = self._close_thinking() + self._search(turn)
        if outcome.calls:
            out += self._close()
            for call in outcome.calls:
                out += self._tool_use(call)
        else:
            if held:
                for fragment in fragments(outcome.content or ""):
                    out += self._text_delta(fragment, turn, cite=outcome.is_text)
            if not self._answer_started:  # an empty answer still gets its text block
                out += self._open_block({"type": "text", "text": ""})
                self._answer_started = True
            if outcome.is_text:
                out += self._citations(turn)
            out += self._close()
        reason, sequence = stop_reason(outcome)
        closing = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(self.prompt_text, turn, self.meta),
        }
        out += [_event(closing), _event({"type": "message_stop"})]
        return b"".join(out)

    # ---- blocks -----------------------------------------------------------------------------

    def _open_block(self, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._index += 1
        self._open = block["type"]
        out.append(_event({"type": "content_block_start", "index": self._index, "content_block": block}))
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event({"type": "content_block_delta", "index": self._index, "delta": delta})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        out = []
        if self._open == "thinking":  # a thinking block ends with its signature
            out.append(self._delta({"type": "signature_delta", "signature": thinking_signature(self._thinking)}))
        out.append(_event({"type": "content_block_stop", "index": self._index}))
        self._open = None
        return out

    def _close_thinking(self) -> list[bytes]:
        return self._close() if self._open == "thinking" else []

    def _thinking_delta(self, text: str) -> list[bytes]:
        out = (
            [] if self._open == "thinking" else self._open_block({"type": "thinking", "thinking": "", "signature": ""})
        )
        self._thinking += text
        if self.meta.thinking_text:  # "omitted" display: the block carries its signature only
            out.append(self._delta({"type": "thinking_delta", "thinking": text}))
        return out

    def _search(self, turn: ChatTurn) -> list[bytes]:
        """The web search's two blocks, once: the call (its input as JSON deltas), then its results whole."""
        if self._searched or self.meta.search_query is None:
            return []
        self._searched = True
        call, result = search_blocks(self.meta.search_query, turn, new_id("srvtoolu"))
        out = self._open_block({**call, "input": {}})
        out += [
            self._delta({"type": "input_json_delta", "partial_json": piece}) for piece in _json_pieces(call["input"])
        ]
        out += self._open_block(result)
        out += self._close()
        return out

    def _text_delta(self, text: str, turn: ChatTurn, *, cite: bool = True) -> list[bytes]:
        out: list[bytes] = []
        if not self._answer_started:
            out += self._close_thinking() + self._search(turn)
            out += self._open_block({"type": "text", "text": ""})
            self._answer_started = True
        out.append(self._delta({"type": "text_delta", "text": text}))
        if cite:
            out += self._citations(turn)
        return out

    def _citations(self, turn: ChatTurn) -> list[bytes]:
        """A `citations_delta` for each source newly cited in the text sent so far (only new markers are read)."""
        self._marks, sources = turn.cited_from(self._marks)
        out = []
        for source in sources:
            if source.url not in self._cited:
                self._cited.add(source.url)
                cited = citation(turn, source.url, source.title or source.url)
                out.append(self._delta({"type": "citations_delta", "citation": cited}))
        return out

    def _tool_use(self, call: Any) -> list[bytes]:
        out = self._open_block(tool_use_block(call, streaming=True))
        out += [
            self._delta({"type": "input_json_delta", "partial_json": piece})
            for piece in ["", *fragments(call.arguments)]
        ]
        out += self._close()
        return out


def _json_pieces(value: Any) -> list[str]:
    return fragments(orjson.dumps(value).decode())


def message_events(
    stream: AskStream,
    turn: ChatTurn,
    events: MessageEvents,
    hooks: StreamHooks,
    *,
    on_done: Callable[[AgentOutcome], None],
    agent: AgentStream | None = None,
) -> Iterator[bytes]:
    """The SSE body of a streamed message; with `error_event` as the `fail` of `api.steps.answer` a broken stream
    ends with one `error` event. `on_done` runs before the closing events (the thread is remembered first)."""
    yield events.start()
    outcome, held = yield from gated_stream(
        stream,
        turn,
        lambda pieces: b"".join(events.feed(pieces, turn)),
        PING,
        heartbeat=hooks.heartbeat,
        gone=hooks.gone,
        first_token=hooks.first_token,
        agent=agent,
    )
    on_done(outcome)
    yield events.finish(outcome, held=held)
