"""Build OpenAI chat completion objects (whole responses, stream chunks, usage) from a ChatTurn."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from perplexity.types import MediaItem, Source

from .modelmap import ModelMap, readable_id
from .tools import ToolCall
from .turn import ChatTurn, count_tokens

__all__ = [
    "AUTO_MODEL",
    "REQUESTED_MODEL_HEADER",
    "CompletionMeta",
    "ModelNaming",
    "chunk",
    "completion",
    "extras",
    "tool_call_object",
    "usage",
]

# Every answer says which model the request selected; its `model` field says which one answered.
REQUESTED_MODEL_HEADER = "X-Perplexity-Requested-Model"
AUTO_MODEL = "perplexity-auto"
# Perplexity's names for Best, its automatic choice, over the years (protocol doc, section 7): reported as the
# answering model they name no model in particular, so they read as perplexity-auto.
# How a plan's web search reads in the reasoning (perplexity.extract.step_reasoning).
SEARCH_LINE = "Searching the web: "
_AUTO_UPSTREAM = frozenset({"turbo", "default", "pplx_pro", "pplx_pro_upgraded", "pplx_reasoning"})


@dataclass(frozen=True, slots=True)
class ModelNaming:
    """Which public id a response names, from the upstream model Perplexity reports as answering (`display_model`).

    `named` is the public id the request selected, `asked` the upstream id sent for it. While Perplexity reports
    the model asked (or nothing), the response names `named`, aliases included. When it reports another, that one
    answered (a fallback, or Best's own pick on perplexity-auto), and the response names it by its public id: the
    catalogue's, else the readable form of the upstream id (`claude48opus` -> `claude-4.8-opus`); any of Best's
    own names reads as perplexity-auto.
    """

    named: str
    asked: str
    models: ModelMap = field(compare=False, repr=False)

    def name(self, reported: str | None) -> str:
        """The public id to name for `reported` (None: Perplexity has not said)."""
        if not reported or reported == self.asked:
            return self.named
        auto = self.models.resolve(AUTO_MODEL)
        if reported in _AUTO_UPSTREAM or (auto is not None and reported == auto.upstream):
            return AUTO_MODEL
        found = self.models.resolve(reported)
        return found.id if found is not None else readable_id(reported)


@dataclass(frozen=True, slots=True)
class CompletionMeta:
    """Identity of one completion, shared by all its chunks; `naming` renames it after the model that answered."""

    model: str
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))
    want_related: bool = False
    want_images: bool = False
    naming: ModelNaming | None = field(default=None, compare=False, repr=False)

    def served(self, reported: str | None) -> CompletionMeta:
        """This completion naming the model Perplexity reports as answering (`ModelNaming`); itself without one."""
        if self.naming is None:
            return self
        model = self.naming.name(reported)
        return self if model == self.model else replace(self, model=model)


def search_results(sources: tuple[Source, ...]) -> list[dict[str, Any]]:
    """Perplexity API's `search_results`, ordered like `citations`."""
    return [
        {
            "title": s.title,
            "url": s.url,
            "date": s.date,
            "snippet": s.snippet,
            "source": "attachment" if s.is_attachment else "web",
        }
        for s in sources
    ]


def images(media: tuple[MediaItem, ...]) -> list[dict[str, Any]]:
    """Perplexity API's `images`."""
    return [
        {"image_url": m.url, "origin_url": m.origin_url, "title": m.title, "width": m.width, "height": m.height}
        for m in media
        if m.medium == "image"
    ]


def extras(turn: ChatTurn, meta: CompletionMeta, *, final: bool) -> dict[str, Any]:
    """Perplexity's own top-level fields: citations and search results, plus the opt-in ones."""
    fields: dict[str, Any] = {}
    if turn.sources:
        fields["citations"] = [s.url for s in turn.sources]
        fields["search_results"] = search_results(turn.sources)
    if final and meta.want_related:
        fields["related_questions"] = list(turn.related)
    if final and meta.want_images:
        fields["images"] = images(turn.media)
    return fields


def usage(prompt_text: str, turn: ChatTurn) -> dict[str, Any]:
    """Estimated usage (see README): reasoning counts inside completion tokens, as OpenAI does."""
    prompt = count_tokens(prompt_text)
    # Each web search of the plan is one reasoning line (perplexity.extract.step_reasoning writes them so).
    searches = sum(1 for line in turn.reasoning.splitlines() if line.startswith(SEARCH_LINE))
    reasoning = count_tokens(turn.reasoning)
    completion_tokens = count_tokens(turn.content) + reasoning
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "num_search_queries": searches,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def tool_call_object(call: ToolCall) -> dict[str, Any]:
    """A call in `message.tool_calls`: a function call (arguments as a JSON string) or a custom tool's input."""
    if call.kind == "custom":
        return {"id": call.id, "type": "custom", "custom": {"name": call.name, "input": call.input}}
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def completion(
    turn: ChatTurn,
    meta: CompletionMeta,
    prompt_text: str,
    *,
    calls: tuple[ToolCall, ...] = (),
    content: str | None = None,
) -> dict[str, Any]:
    """The `chat.completion` object of a finished turn; `calls` (tool calls) or `content` (JSON output) replace
    its text when an agent turn read it so (`core.agent`). It names the model that answered the turn."""
    meta = meta.served(turn.model)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if calls else turn.content if content is None else content,
        "refusal": None,
        # Annotations index into the answer text: they hold only when that text is the content.
        "annotations": turn.annotations if not calls and content is None else [],
    }
    if calls:
        message["tool_calls"] = [tool_call_object(call) for call in calls]
    finish_reason = "tool_calls" if calls else turn.finish_reason or "stop"
    if turn.reasoning:
        message["reasoning_content"] = message["reasoning"] = turn.reasoning
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage(prompt_text, turn),
        "service_tier": "default",
        **extras(turn, meta, final=True),
    }


def chunk(
    meta: CompletionMeta,
    delta: dict[str, Any],
    *,
    finish_reason: str | None = None,
    fields: dict[str, Any] | None = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `with_usage` adds `"usage": null` as include_usage requires."""
    body: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if with_usage:
        body["usage"] = None
    if fields:
        body.update(fields)
    return body
