"""Responses API objects built from a ChatTurn: the `response` itself, its output items, usage and citations."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ..core.agent import AgentOutcome
from ..core.completion import CompletionMeta, extras
from ..core.completion import usage as chat_usage
from ..core.errors import APIError
from ..core.tools import ToolCall
from ..core.turn import ChatTurn

__all__ = [
    "ResponseMeta",
    "call_item",
    "echo_fields",
    "function_call_item",
    "message_item",
    "new_id",
    "output_text",
    "reasoning_item",
    "response_error",
    "response_object",
    "response_status",
    "response_usage",
    "url_citations",
    "web_search_item",
    "whole_output",
]


def new_id(prefix: str) -> str:
    """An OpenAI-style object id such as `resp_…`, `msg_…` or `rs_…`."""
    return f"{prefix}_{secrets.token_hex(24)}"


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def echo_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The request fields a response object repeats, with OpenAI's defaults for the ones left out."""
    fields = {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": _or(body.get("parallel_tool_calls"), True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": body.get("reasoning"),
        "safety_identifier": body.get("safety_identifier"),
        "store": _or(body.get("store"), True),
        "temperature": _or(body.get("temperature"), 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": _or(body.get("tool_choice"), "auto"),
        "tools": [_echo_tool(tool) for tool in body.get("tools") or ()],
        "top_logprobs": _or(body.get("top_logprobs"), 0),
        "top_p": _or(body.get("top_p"), 1.0),
        "truncation": _or(body.get("truncation"), "disabled"),
    }
    if body.get("user"):  # the spec types `user` as a plain string: omit it rather than send null
        fields["user"] = body["user"]
    return fields


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    # The spec's function tool always has `strict` and `parameters` (null when the request left them out).
    if tool.get("type") == "function":
        return {**tool, "strict": tool.get("strict"), "parameters": tool.get("parameters")}
    return tool


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """Identity of one response and the request fields it echoes; `completion` holds model and opt-in extras.

    `search_query` is set when the request offered a web search tool: the answer then reports Perplexity's
    search as a `web_search_call` item for that query.
    """

    completion: CompletionMeta
    echo: dict[str, Any]
    search_query: str | None = None
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    message_id: str = field(default_factory=lambda: new_id("msg"))


def url_citations(turn: ChatTurn) -> list[dict[str, Any]]:
    """The turn's url_citation annotations in the Responses API's flat form."""
    flat = []
    for annotation in turn.annotations:
        cited: dict[str, Any] = annotation["url_citation"]  # type: ignore[assignment]
        flat.append(
            {
                "type": "url_citation",
                "url": cited["url"],
                "title": cited["title"],
                "start_index": cited["start_index"],
                "end_index": cited["end_index"],
            }
        )
    return flat


def output_text(text: str, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """An `output_text` content part (log probabilities are not available from Perplexity)."""
    return {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}


def message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """The assistant `message` output item."""
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """A `reasoning` output item; Perplexity's plan and thinking text is its one summary part."""
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "summary": summary, "status": status}


def function_call_item(item_id: str, call: ToolCall, status: str, arguments: str | None = None) -> dict[str, Any]:
    """A `function_call` output item (`arguments` overrides the call's, e.g. "" while it streams)."""
    text = call.arguments if arguments is None else arguments
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": text,
        "status": status,
    }


def call_item(item_id: str, call: ToolCall, status: str, *, streaming: bool = False) -> dict[str, Any]:
    """A `function_call` or `custom_tool_call` output item (`streaming`: arguments/input still empty)."""
    if call.kind == "custom":
        text = "" if streaming else call.input
        return {
            "id": item_id,
            "type": "custom_tool_call",
            "call_id": call.id,
            "name": call.name,
            "input": text,
            "status": status,
        }
    return function_call_item(item_id, call, status, "" if streaming else None)


def web_search_item(item_id: str, query: str, turn: ChatTurn | None, status: str) -> dict[str, Any]:
    """A `web_search_call` output item: the search Perplexity ran for `query`, with the sources it found."""
    action: dict[str, Any] = {"type": "search", "query": query, "queries": [query]}
    if turn is not None:
        action["sources"] = [
            {"type": "url", "url": source.url} for source in turn.sources if source.url and not source.is_attachment
        ]
    return {"id": item_id, "type": "web_search_call", "status": status, "action": action}


def response_status(turn: ChatTurn) -> str:
    """`incomplete` when max_output_tokens cut the answer, else `completed`."""
    return "incomplete" if turn.finish_reason == "length" else "completed"


_CALL_PREFIX = {"function": "fc", "custom": "ctc"}  # output item ids by call kind


def whole_output(meta: ResponseMeta, outcome: AgentOutcome) -> list[dict[str, Any]]:
    """The output of a non-streamed turn: its reasoning (if any), the web search, then the calls or the answer."""
    turn = outcome.turn
    items = [reasoning_item(new_id("rs"), turn.reasoning, "completed")] if turn.reasoning else []
    if meta.search_query is not None:
        items.append(web_search_item(new_id("ws"), meta.search_query, turn, "completed"))
    if outcome.calls:
        return items + [call_item(new_id(_CALL_PREFIX[call.kind]), call, "completed") for call in outcome.calls]
    annotations = url_citations(turn) if outcome.is_text else []
    content = [output_text(outcome.content or "", annotations)]
    return [*items, message_item(meta.message_id, content, response_status(turn))]


def response_usage(prompt_text: str, turn: ChatTurn) -> dict[str, Any]:
    """Chat's estimated usage, renamed the Responses way (reasoning counts inside output tokens)."""
    counted = chat_usage(prompt_text, turn)
    return {
        "input_tokens": counted["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": counted["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": counted["completion_tokens_details"]["reasoning_tokens"]},
        "total_tokens": counted["total_tokens"],
    }


def response_error(error: APIError) -> dict[str, str]:
    """The `error` of a failed response; the spec allows only a few codes, so ours goes into the message."""
    code = "rate_limit_exceeded" if error.status == 429 else "server_error"
    message = f"{error.message} ({error.code})" if error.code else error.message
    return {"code": code, "message": message}


def response_object(
    meta: ResponseMeta,
    turn: ChatTurn | None,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The `response` object; Perplexity's citations and search results ride along as extra top-level fields.

    With the turn it names the model that answered it (`CompletionMeta.served`); the in-progress snapshots of a
    stream, sent before Perplexity's first frame, name the one the request selected.
    """
    named = meta.completion.served(turn.model) if turn is not None else meta.completion
    body: dict[str, Any] = {
        "id": meta.id,
        "object": "response",
        "created_at": meta.created_at,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": named.model,
        "output": output,
        "service_tier": "default",
        **meta.echo,
    }
    if usage is not None:  # the spec has no null usage: in-progress snapshots leave it out
        body["usage"] = usage
    if turn is not None:
        body.update(extras(turn, meta.completion, final=status != "in_progress"))
    return body
