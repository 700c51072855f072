"""An agent turn, whole: the answer read as tool calls or JSON output, with one repair follow-up on the same thread."""

from __future__ import annotations

from dataclasses import dataclass

from perplexity.stream import AskStream

from .errors import APIError
from .service import ChatService, PreparedAsk
from .streaming import read_whole
from .tools import AgentSpec, ToolCall, call_text, read_json_output, read_tool_calls
from .turn import ChatTurn

__all__ = ["AgentOutcome", "raw_answer", "read_answer", "settle"]

_SHOWN_TEXT = 500  # characters of the model's answer quoted in a failure message


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
    """The answer as Perplexity wrote it (citation markers intact), which the protocol reader reads."""
    if turn.completed is not None and turn.completed.final_answer:
        return turn.completed.final_answer
    return turn.content


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
    spec = prepared.agent
    assert spec is not None
    outcome, problem, kind = read_answer(turn, spec)
    if outcome is not None:
        return outcome
    if turn.thread is not None:
        query = spec.tool_repair(problem or "") if kind == "tool_call_failed" else spec.output_repair(problem or "")
        repaired = ChatTurn(turn.limits)
        stream: AskStream = service.follow_up(prepared, turn.thread, query)
        read_whole(stream, repaired)
        outcome, problem, kind = read_answer(repaired, spec)
        if outcome is not None:
            return outcome
        turn = repaired
    shown = raw_answer(turn)
    shown = shown if len(shown) <= _SHOWN_TEXT else shown[:_SHOWN_TEXT] + "…"
    what = "a valid tool call" if kind == "tool_call_failed" else "the JSON output asked for"
    message = f"The model did not produce {what} after one repair turn ({problem}). Its answer: {shown}"
    raise APIError(502, message, type="server_error", code=kind)
