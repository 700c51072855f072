"""An agent turn, whole: the answer read as tool calls or JSON output, with one repair follow-up on the same thread."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

from perplexity.stream import AskStream

from .errors import APIError
from .service import ChatService, PreparedAsk
from .streaming import read_whole, relay, turn_pieces
from .tools import MAX_PROSE_AROUND_CALLS, AgentSpec, ToolCall, call_text, read_json_output, read_tool_calls
from .turn import ChatTurn, Piece

__all__ = [
    "AgentOutcome",
    "AgentStream",
    "AnswerGate",
    "FRAGMENT_SIZE",
    "fragments",
    "gated_stream",
    "raw_answer",
    "read_answer",
    "settle",
    "settle_stream",
]

_SHOWN_TEXT = 500  # characters of the model's answer quoted in a failure message
# A settled answer is sent in pieces of this many characters, as a model streams it (clients reassemble them).
FRAGMENT_SIZE = 128


def fragments(text: str, size: int = FRAGMENT_SIZE) -> list[str]:
    """`text` in pieces of at most `size` characters (none for an empty text)."""
    return [text[start : start + size] for start in range(0, len(text), size)]


@dataclass(slots=True)
class AgentOutcome:
    """What a finished agent turn gives the client: tool calls, JSON text, or the answer as it is.

    `turn` is the turn that produced it (the repair's when there was one): its thread is the one to remember.
    """

    turn: ChatTurn
    calls: tuple[ToolCall, ...] = ()
    json_text: str | None = None

    @property
    def content(self) -> str | None:
        """The message content: None for tool calls, the JSON for structured output, else the answer."""
        if self.calls:
            return None
        return self.json_text if self.json_text is not None else self.turn.content

    @property
    def is_text(self) -> bool:
        """True when the answer goes out as the text it is (neither calls nor JSON output)."""
        return not self.calls and self.json_text is None

    @property
    def finish_reason(self) -> str:
        """`tool_calls` when the answer is calls, else the turn's own reason."""
        return "tool_calls" if self.calls else self.turn.finish_reason or "stop"

    @property
    def history_text(self) -> str:
        """The assistant turn as the client will send it back, for the thread rule (`core.continuity`)."""
        if self.calls:
            return "\n".join(call_text(call.name, call.arguments) for call in self.calls)
        return self.content or ""


def raw_answer(turn: ChatTurn) -> str:
    """The answer as Perplexity wrote it (citation markers intact, no footnotes list), which the protocol reader
    reads."""
    if turn.completed is not None and turn.completed.final_answer:
        return turn.completed.final_answer
    return turn.answer


def read_answer(turn: ChatTurn, spec: AgentSpec) -> tuple[AgentOutcome | None, str | None, str]:
    """Read a finished turn: (outcome, None) when it is usable, (None, problem, kind) when a repair is needed.

    `kind` is the error code of a failure: `tool_call_failed` or `invalid_json_output`.
    """
    text = raw_answer(turn)
    if spec.offers_tools:
        reading = read_tool_calls(text, spec)
        if reading.calls:
            return AgentOutcome(turn, calls=reading.calls), None, ""
        if reading.problem is not None or spec.must_call:
            return None, reading.problem or "the answer has no <tool_call> block", "tool_call_failed"
    if spec.output is not None and turn.finish_reason != "length":
        json_text, problem = read_json_output(text, spec.output)
        if json_text is None:
            return None, problem, "invalid_json_output"
        return AgentOutcome(turn, json_text=json_text), None, ""
    return AgentOutcome(turn), None, ""


def settle(service: ChatService, prepared: PreparedAsk, turn: ChatTurn) -> AgentOutcome:
    """Read a whole answer under the request's AgentSpec; ask one repair follow-up if it is not usable.

    Still not usable: a 502 APIError (`tool_call_failed` or `invalid_json_output`) quoting the model's answer.
    """
    steps = settle_stream(service, prepared, turn, heartbeat=None)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def settle_stream(
    service: ChatService,
    prepared: PreparedAsk,
    turn: ChatTurn,
    *,
    heartbeat: float | None,
    gone: Callable[[], bool] | None = None,
) -> Generator[list[Piece] | None, None, AgentOutcome]:
    """`settle` for a stream: while a repair turn runs it yields its reasoning pieces, and None after each
    `heartbeat` s of silence (so the stream can ping and notice a departed client); returns the outcome.

    With `heartbeat` None the repair is read whole and nothing is yielded.
    """
    spec = prepared.agent
    assert spec is not None
    outcome, problem, kind = read_answer(turn, spec)
    if outcome is not None:
        return outcome
    if turn.thread is not None:
        query = spec.tool_repair(problem or "") if kind == "tool_call_failed" else spec.output_repair(problem or "")
        repaired = ChatTurn(turn.limits)
        stream: AskStream = service.follow_up(prepared, turn.thread, query)
        with stream:
            if heartbeat is None:
                read_whole(stream, repaired)
            else:
                for pieces in turn_pieces(stream, repaired, heartbeat, gone):
                    yield None if pieces is None else [piece for piece in pieces if piece.kind == "reasoning"]
        outcome, problem, kind = read_answer(repaired, spec)
        if outcome is not None:
            return outcome
        turn = repaired
    shown = raw_answer(turn)
    shown = shown if len(shown) <= _SHOWN_TEXT else shown[:_SHOWN_TEXT] + "…"
    what = "a valid tool call" if kind == "tool_call_failed" else "the JSON output asked for"
    message = f"The model did not produce {what} after one repair turn ({problem}). Its answer: {shown}"
    raise APIError(502, message, type="server_error", code=kind)


class AnswerGate:
    """Decides, as a streamed answer arrives, whether its text may go out now or must be held back.

    An answer that may be a tool call is held, so no `<tool_call>` text ever reaches the client: it may be one
    when it starts like a call (a tag, a fence, a JSON value) or is still short enough to be a remark beside
    one (`MAX_PROSE_AROUND_CALLS`). Longer prose without a call tag is text by the reader's own rule and is
    released at once. Structured output and a required call are held whole. Reasoning and sources always pass.
    """

    __slots__ = ("_spec", "released", "_to_the_end")

    def __init__(self, spec: AgentSpec | None) -> None:
        self._spec = spec
        # Nothing to hold: no tools offered (or tool_choice none) and no output format.
        self.released = spec is None or (not spec.offers_tools and spec.output is None)
        # Held whole, whatever comes: structured output and required calls, or an answer that starts like a call.
        self._to_the_end = spec is not None and (spec.output is not None or spec.must_call)

    @property
    def held(self) -> bool:
        """True while the answer's content is being kept back."""
        return not self.released

    def feed(self, turn: ChatTurn, pieces: list[Piece]) -> list[Piece]:
        """The pieces to send now; when the gate opens, the content held so far comes out as one piece."""
        if self.released:
            return pieces
        out = [piece for piece in pieces if piece.kind != "content"]
        if not self._to_the_end and any(piece.kind == "content" for piece in pieces) and self._is_text(turn.answer):
            self.released = True
            out.append(Piece("content", turn.content))
        return out

    def _is_text(self, content: str) -> bool:
        # Runs only while undecided, that is while the answer is short: reading it again is cheap.
        text = content.lstrip()
        if not text:
            return False
        opening = _call_opening(text)
        if opening == "call" or "<tool_call>" in text:
            self._to_the_end = True  # decided: the reader settles it once it is complete
            return False
        # Past this much prose an answer is text by the reader's own rule, whatever follows.
        return opening == "text" and len(text) > MAX_PROSE_AROUND_CALLS


def _call_opening(text: str) -> str:
    """How `text` (not empty) starts: "call" (JSON, the call tag, a JSON fence), "maybe" (a prefix of those) or
    "text"."""
    if text[0] in "{[":
        return "call"
    if text.startswith("<"):
        if text.startswith(_CALL_TAG):
            return "call"
        return "maybe" if _CALL_TAG.startswith(text) else "text"
    if text.startswith("```"):
        line_end = text.find("\n")
        if line_end < 0:
            language = text[3:].strip().lower()
            return "maybe" if "json".startswith(language) else "text"
        return "call" if text[3:line_end].strip().lower() in ("", "json") else "text"
    return "text"


_CALL_TAG = "<tool_call>"


class AgentStream:
    """The agent side of one streamed answer: a gate over its pieces, then the outcome once it finished."""

    __slots__ = ("gate", "_service", "_prepared", "_heartbeat", "_gone")

    def __init__(
        self, service: ChatService, prepared: PreparedAsk, heartbeat: float, gone: Callable[[], bool] | None
    ) -> None:
        self.gate = AnswerGate(prepared.agent)
        self._service, self._prepared, self._heartbeat, self._gone = service, prepared, heartbeat, gone

    def finish(self, turn: ChatTurn) -> Generator[list[Piece] | None, None, AgentOutcome]:
        """Settle the finished answer (see `settle_stream`); text the gate already let out stays text."""
        if self.gate.released:
            return AgentOutcome(turn)
        return (
            yield from settle_stream(self._service, self._prepared, turn, heartbeat=self._heartbeat, gone=self._gone)
        )


def gated_stream(
    stream: AskStream,
    turn: ChatTurn,
    write: Callable[[list[Piece]], bytes],
    ping: bytes,
    *,
    heartbeat: float,
    gone: Callable[[], bool] | None,
    first_token: Callable[[], None],
    agent: AgentStream | None = None,
) -> Generator[bytes, None, tuple[AgentOutcome, bool]]:
    """The body of an answer stream whose pieces an endpoint family writes as its own events (`write`): pieces as
    they arrive (through the agent's gate while it holds), `ping` for each silent heartbeat, then the agent's
    settled answer. Returns the outcome and whether the gate held the answer to the end. `first_token` runs at
    the first content piece, or when a held answer is sent."""
    first = False
    for pieces in turn_pieces(stream, turn, heartbeat, gone):
        if pieces is None:
            yield ping
            continue
        if agent is not None and agent.gate.held:
            pieces = agent.gate.feed(turn, pieces)
        data = write(pieces)
        if not first and any(piece.kind == "content" for piece in pieces):
            first = True
            first_token()
        if data:
            yield data
    if agent is None:
        return AgentOutcome(turn), False
    held = agent.gate.held
    outcome = yield from relay(agent.finish(turn), write, ping)
    if held:
        first_token()
    return outcome, held
