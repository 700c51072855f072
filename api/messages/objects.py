"""Anthropic Messages objects built from a settled turn: the `message`, its content blocks, stop reason and usage."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..core.agent import AgentOutcome
from ..core.completion import ModelNaming
from ..core.completion import usage as chat_usage
from ..core.tools import ToolCall
from ..core.turn import ChatTurn, count_tokens

__all__ = [
    "MessageMeta",
    "citation",
    "message_object",
    "new_id",
    "search_blocks",
    "stop_reason",
    "thinking_signature",
    "tool_use_block",
    "usage",
]

_CITED_TEXT = 150  # characters of a source's snippet a citation quotes, as Anthropic's do


def new_id(prefix: str) -> str:
    """An Anthropic-style id: `msg_…`, `toolu_…`, `srvtoolu_…`."""
    return f"{prefix}_{secrets.token_urlsafe(18).replace('-', 'A').replace('_', 'B')}"


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """Identity of one message and what the request asked to be shown.

    `model` is the model that serves it as asked (the response names it; `naming` renames a finished message
    after the model Perplexity says answered); `thinking` says whether thinking blocks are returned
    (`thinking_text` False: "omitted" display, signature only); `search_query` is set when the request offered
    the web search server tool, whose call and results are then reported as blocks.
    """

    model: str
    thinking: bool = False
    thinking_text: bool = True
    search_query: str | None = None
    id: str = field(default_factory=lambda: new_id("msg"))
    naming: ModelNaming | None = field(default=None, compare=False, repr=False)

    def served(self, reported: str | None) -> str:
        """The model a finished message names: the one Perplexity reports as answering (see `ModelNaming`)."""
        return self.naming.name(reported) if self.naming is not None else self.model


def thinking_signature(text: str) -> str:
    """An opaque signature for a thinking block (clients send it back; nothing checks it)."""
    digest = hashlib.sha256(b"perplexity-thinking\0" + text.encode()).digest()
    return base64.b64encode(digest).decode()


def tool_use_id(call: ToolCall) -> str:
    """The `toolu_…` id of a call (its `call_…` id's random part)."""
    return "toolu_" + call.id.removeprefix("call_")


def tool_use_block(call: ToolCall, *, streaming: bool = False) -> dict[str, Any]:
    """A `tool_use` block (`streaming`: with an empty input, which `input_json_delta` events fill)."""
    value = {} if streaming else orjson.loads(call.arguments)
    return {"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": value}


def citation(turn: ChatTurn, url: str, title: str) -> dict[str, Any]:
    """A `web_search_result_location` citation of one source (its snippet quoted as the cited text)."""
    snippet = next((s.snippet for s in turn.sources if s.url == url), "")
    index = base64.b64encode(url.encode()).decode()
    return {
        "type": "web_search_result_location",
        "url": url,
        "title": title or None,
        "encrypted_index": index,
        "cited_text": snippet[:_CITED_TEXT],
    }


def citations(turn: ChatTurn) -> list[dict[str, Any]]:
    """The sources the answer cites, each once, in the order first cited."""
    seen: dict[str, dict[str, Any]] = {}
    for annotation in turn.annotations:
        cited: dict[str, Any] = annotation["url_citation"]  # type: ignore[assignment]
        if cited["url"] not in seen:
            seen[cited["url"]] = citation(turn, cited["url"], cited["title"])
    return list(seen.values())


def search_blocks(query: str, turn: ChatTurn, call_id: str) -> list[dict[str, Any]]:
    """The web search as Anthropic reports a server tool: the `server_tool_use`, then its results."""
    results = [
        {
            "type": "web_search_result",
            "url": source.url,
            "title": source.title,
            "encrypted_content": base64.b64encode(source.snippet.encode()).decode(),
            "page_age": source.date,
        }
        for source in turn.sources
        if source.url and not source.is_attachment
    ]
    return [
        {"type": "server_tool_use", "id": call_id, "name": "web_search", "input": {"query": query}},
        {"type": "web_search_tool_result", "tool_use_id": call_id, "content": results},
    ]


def stop_reason(outcome: AgentOutcome) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a settled answer."""
    if outcome.calls:
        return "tool_use", None
    turn = outcome.turn
    if turn.finish_reason == "length":
        return "max_tokens", None
    if turn.stop_sequence is not None:
        return "stop_sequence", turn.stop_sequence
    return "end_turn", None


def usage(prompt_text: str, turn: ChatTurn | None, meta: MessageMeta) -> dict[str, Any]:
    """Estimated usage (one token per four characters, as everywhere here); no prompt cache to report."""
    if turn is None:  # message_start: the prompt is known, the answer is not
        output = 1
    else:
        output = max(1, chat_usage(prompt_text, turn)["completion_tokens"])
    body: dict[str, Any] = {
        "input_tokens": count_tokens(prompt_text),
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }
    if meta.search_query is not None:
        body["server_tool_use"] = {"web_search_requests": 1}
    return body


def message_object(meta: MessageMeta, outcome: AgentOutcome, prompt_text: str) -> dict[str, Any]:
    """The whole `message`: thinking, the web search, then the answer's text (with citations) or its tool calls."""
    turn = outcome.turn
    content: list[dict[str, Any]] = []
    if meta.thinking and turn.reasoning:
        text = turn.reasoning if meta.thinking_text else ""
        content.append({"type": "thinking", "thinking": text, "signature": thinking_signature(turn.reasoning)})
    if meta.search_query is not None:
        content += search_blocks(meta.search_query, turn, new_id("srvtoolu"))
    if outcome.calls:
        content += [tool_use_block(call) for call in outcome.calls]
    else:
        cited = citations(turn) if outcome.is_text else []
        block: dict[str, Any] = {"type": "text", "text": outcome.content or ""}
        if cited:
            block["citations"] = cited
        content.append(block)
    reason, sequence = stop_reason(outcome)
    return {
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": meta.served(turn.model),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(prompt_text, turn, meta),
    }
