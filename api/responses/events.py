"""The Responses API event stream: a ChatTurn's pieces as numbered `event:`/`data:` frames, always closed properly.

Order of output items: a reasoning item opens at the first reasoning text and closes when the answer starts;
a `web_search_call` item (when the request offered a web search tool) is sent whole once the sources are known,
or before the answer; the message item, or the function calls of an agent turn, follow. Reasoning that arrives
once the answer has started (Perplexity may finish a plan step late) is held back and sent as a second reasoning
item after the message, so no two items are ever open at once and `response.completed` lists exactly the items
sent in `response.output_item.done` (Codex builds its history from those).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..core.agent import AgentOutcome, AgentStream, fragments, gated_stream
from ..core.tools import ToolCall
from ..core.turn import ChatTurn, Piece
from ..edge.errors import to_api_error
from ..edge.sse import PING, encode
from .objects import (
    ResponseMeta,
    call_item,
    message_item,
    new_id,
    output_text,
    reasoning_item,
    response_error,
    response_object,
    response_status,
    response_usage,
    url_citations,
    web_search_item,
)

if TYPE_CHECKING:
    from perplexity.stream import AskStream

    from ..steps import StreamHooks

__all__ = ["ResponseEvents", "response_events"]


class ResponseEvents:
    """Builds the event sequence of one streamed response; `output` holds the items finished so far."""

    def __init__(self, meta: ResponseMeta) -> None:
        self.meta = meta
        self.output: list[dict[str, Any]] = []
        self._sequence = 0
        self._reasoning_id: str | None = None  # the open reasoning item
        self._reasoning = ""
        self._late_reasoning = ""
        self._message_open = False
        self._message_done = False
        self._searched = meta.search_query is None  # True once the web_search_call item was sent (or not wanted)

    def event(self, kind: str, **fields: Any) -> bytes:
        """One numbered event."""
        data = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return encode(data, event=kind)

    def start(self) -> bytes:
        """`response.created` and `response.in_progress`."""
        snapshot = response_object(self.meta, None, status="in_progress", output=[])
        return self.event("response.created", response=snapshot) + self.event("response.in_progress", response=snapshot)

    def feed(self, pieces: list[Piece], turn: ChatTurn) -> list[bytes]:
        """The events for the turn's new pieces (sources show up in the web search item and the final response)."""
        out: list[bytes] = []
        for piece in pieces:
            if piece.kind == "reasoning" and self._message_open:
                self._late_reasoning += piece.text
            elif piece.kind == "reasoning":
                out += self._reasoning_delta(piece.text)
            elif piece.kind == "content":
                out += self._search(turn) + self._text_delta(piece.text)
            elif piece.kind == "sources" and not self._message_open:
                out += self._search(turn)
        return out

    def finish(self, outcome: AgentOutcome, prompt_text: str, *, held: bool = False) -> tuple[bytes, dict[str, Any]]:
        """Close every item; return those events and the final response (sent by `final` once it is stored).

        `held`: the answer's text was kept back (an agent turn), so the calls or the text it settled as go now.
        """
        turn = outcome.turn
        out = self._close_reasoning() + self._search(turn)
        if outcome.calls:
            for call in outcome.calls:
                out += self._call(call)
        else:
            for fragment in fragments(outcome.content or "") if held else ():
                out += self._text_delta(fragment)
            out += self._open_message()  # an empty answer still gets its message item
            out += self._close_message(outcome)
        if self._late_reasoning:
            out += self._reasoning_delta(self._late_reasoning) + self._close_reasoning()
        status = response_status(turn)
        response = response_object(
            self.meta, turn, status=status, output=list(self.output), usage=response_usage(prompt_text, turn)
        )
        return b"".join(out), response

    def final(self, response: dict[str, Any]) -> bytes:
        """`response.completed`, or `response.incomplete` when max_output_tokens cut the answer."""
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return self.event(kind, response=response)

    def failed_event(self, exc: BaseException, turn: ChatTurn, keep: Callable[[dict[str, Any]], None]) -> bytes:
        """`response.failed` for what ended the stream, after `keep` stored the failed response."""
        failed = self.failed(exc, turn)
        keep(failed)
        return self.event("response.failed", response=failed)

    def failed(self, exc: BaseException, turn: ChatTurn) -> dict[str, Any]:
        """The failed response: finished items plus whatever was open, marked incomplete."""
        error = to_api_error(exc)
        output = list(self.output)
        if self._reasoning_id is not None:
            output.append(reasoning_item(self._reasoning_id, self._reasoning, "incomplete"))
        if self._message_open and not self._message_done:
            content = [output_text(turn.content, url_citations(turn))]
            output.append(message_item(self.meta.message_id, content, "incomplete"))
        return response_object(self.meta, turn, status="failed", output=output, error=response_error(error))

    # ---- items ------------------------------------------------------------------------------

    def _reasoning_delta(self, text: str) -> list[bytes]:
        out = []
        if self._reasoning_id is None:
            self._reasoning_id, self._reasoning = new_id("rs"), ""
            item = reasoning_item(self._reasoning_id, "", "in_progress")
            out.append(self.event("response.output_item.added", output_index=len(self.output), item=item))
            out.append(self.event("response.reasoning_summary_part.added", **self._summary_at(), part=_summary("")))
        self._reasoning += text
        out.append(self.event("response.reasoning_summary_text.delta", **self._summary_at(), delta=text))
        return out

    def _close_reasoning(self) -> list[bytes]:
        if self._reasoning_id is None:
            return []
        at, text = self._summary_at(), self._reasoning
        item = reasoning_item(self._reasoning_id, text, "completed")
        out = [
            self.event("response.reasoning_summary_text.done", **at, text=text),
            self.event("response.reasoning_summary_part.done", **at, part=_summary(text)),
            self.event("response.output_item.done", output_index=at["output_index"], item=item),
        ]
        self.output.append(item)
        self._reasoning_id = None
        return out

    def _open_message(self) -> list[bytes]:
        if self._message_open:
            return []
        self._message_open = True
        item = message_item(self.meta.message_id, [], "in_progress")
        return [
            self.event("response.output_item.added", output_index=len(self.output), item=item),
            self.event("response.content_part.added", **self._text_at(), part=output_text("", [])),
        ]

    def _text_delta(self, text: str) -> list[bytes]:
        out = self._close_reasoning() + self._open_message()
        out.append(self.event("response.output_text.delta", **self._text_at(), delta=text, logprobs=[]))
        return out

    def _close_message(self, outcome: AgentOutcome) -> list[bytes]:
        turn, text = outcome.turn, outcome.content or ""
        # Annotations index into the answer text: JSON output has none.
        at, annotations = self._text_at(), url_citations(turn) if outcome.is_text else []
        # Citations are final only once the answer is (sources can still change mid-answer), so all go here.
        out = [
            self.event("response.output_text.annotation.added", **at, annotation_index=index, annotation=annotation)
            for index, annotation in enumerate(annotations)
        ]
        part = output_text(text, annotations)
        item = message_item(self.meta.message_id, [part], response_status(turn))
        out += [
            self.event("response.output_text.done", **at, text=text, logprobs=[]),
            self.event("response.content_part.done", **at, part=part),
            self.event("response.output_item.done", output_index=at["output_index"], item=item),
        ]
        self.output.append(item)
        self._message_done = True
        return out

    def _search(self, turn: ChatTurn) -> list[bytes]:
        """The whole `web_search_call` item, once: Perplexity's search is over when its sources are known."""
        if self._searched or self.meta.search_query is None:
            return []
        self._searched = True
        out = self._close_reasoning()
        item_id, index, query = new_id("ws"), len(self.output), self.meta.search_query
        at = {"output_index": index, "item_id": item_id}
        done = web_search_item(item_id, query, turn, "completed")
        out += [
            self.event(
                "response.output_item.added",
                output_index=index,
                item=web_search_item(item_id, query, None, "in_progress"),
            ),
            self.event("response.web_search_call.in_progress", **at),
            self.event("response.web_search_call.searching", **at),
            self.event("response.web_search_call.completed", **at),
            self.event("response.output_item.done", output_index=index, item=done),
        ]
        self.output.append(done)
        return out

    def _call(self, call: ToolCall) -> list[bytes]:
        """One whole call item: added, its arguments (or a custom tool's input) in fragments, done."""
        custom = call.kind == "custom"
        item_id, index = new_id("ctc" if custom else "fc"), len(self.output)
        at = {"item_id": item_id, "output_index": index}
        started = call_item(item_id, call, "in_progress", streaming=True)
        out = [self.event("response.output_item.added", output_index=index, item=started)]
        if custom:
            out += [self.event("response.custom_tool_call_input.delta", **at, delta=f) for f in fragments(call.input)]
            out.append(self.event("response.custom_tool_call_input.done", **at, input=call.input))
        else:
            out += [
                self.event("response.function_call_arguments.delta", **at, delta=f) for f in fragments(call.arguments)
            ]
            out.append(
                self.event("response.function_call_arguments.done", **at, name=call.name, arguments=call.arguments)
            )
        done = call_item(item_id, call, "completed")
        out.append(self.event("response.output_item.done", output_index=index, item=done))
        self.output.append(done)
        return out

    def _summary_at(self) -> dict[str, Any]:
        return {"item_id": self._reasoning_id, "output_index": len(self.output), "summary_index": 0}

    def _text_at(self) -> dict[str, Any]:
        return {"item_id": self.meta.message_id, "output_index": len(self.output), "content_index": 0}


def _summary(text: str) -> dict[str, str]:
    return {"type": "summary_text", "text": text}


def response_events(
    stream: AskStream,
    turn: ChatTurn,
    events: ResponseEvents,
    hooks: StreamHooks,
    *,
    prompt_text: str,
    on_done: Callable[[AgentOutcome, dict[str, Any]], None],
    agent: AgentStream | None = None,
) -> Iterator[bytes]:
    """The SSE body of a streamed response; with `events.failed_event` as the `fail` of `api.steps.answer`, it
    always ends in response.completed, .incomplete or .failed.

    With `agent`, an answer that may be a call is held back by its gate and sent once settled, as
    `function_call` items or as the message it turned out to be. `on_done` runs before the final event, so a
    client that chains on `response.completed` at once finds the response stored. No `[DONE]`: the Responses
    API ends with its lifecycle event.
    """
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
    closing, response = events.finish(outcome, prompt_text, held=held)
    on_done(outcome, response)
    yield closing + events.final(response)
