"""Response schemas of `POST /v1/chat/completions`: the `chat.completion` object and its `chat.completion.chunk`s."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate

from schemas.common import Null, ResponseSchema, constant

__all__ = [
    "AnnotationSchema",
    "ChatCompletionChunkSchema",
    "ChatCompletionSchema",
    "ChoiceSchema",
    "ChunkChoiceSchema",
    "CompletionTokensDetailsSchema",
    "DeltaSchema",
    "ImageSchema",
    "MessageSchema",
    "PromptTokensDetailsSchema",
    "SearchResultSchema",
    "UrlCitationSchema",
    "UsageSchema",
]

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast")
SOURCE_KINDS = ("web", "attachment")


def _finish_reason(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.OneOf(FINISH_REASONS), **kwargs)


# ---- shared parts -------------------------------------------------------------------------------


class UrlCitationSchema(ResponseSchema):
    """The span of `content` (code-point indices, end exclusive) that cites one source."""

    start_index = fields.Integer(required=True, strict=True)
    end_index = fields.Integer(required=True, strict=True)
    url = fields.String(required=True)
    title = fields.String(required=True)


class AnnotationSchema(ResponseSchema):
    """One `annotations` entry: `{"type": "url_citation", "url_citation": {...}}`."""

    type = constant("url_citation")
    url_citation = fields.Nested(UrlCitationSchema, required=True)


class PromptTokensDetailsSchema(ResponseSchema):
    """`usage.prompt_tokens_details` (always zero here: Perplexity reports no cache or audio use)."""

    cached_tokens = fields.Integer(required=True, strict=True)
    audio_tokens = fields.Integer(required=True, strict=True)


class CompletionTokensDetailsSchema(ResponseSchema):
    """`usage.completion_tokens_details`; `reasoning_tokens` counts the reasoning text."""

    reasoning_tokens = fields.Integer(required=True, strict=True)
    audio_tokens = fields.Integer(required=True, strict=True)
    accepted_prediction_tokens = fields.Integer(required=True, strict=True)
    rejected_prediction_tokens = fields.Integer(required=True, strict=True)


class UsageSchema(ResponseSchema):
    """Estimated token usage (four characters a token; reasoning counts inside completion tokens)."""

    prompt_tokens = fields.Integer(required=True, strict=True)
    completion_tokens = fields.Integer(required=True, strict=True)
    total_tokens = fields.Integer(required=True, strict=True)
    num_search_queries = fields.Integer(required=True, strict=True)  # Perplexity's: the plan's web searches
    prompt_tokens_details = fields.Nested(PromptTokensDetailsSchema, required=True)
    completion_tokens_details = fields.Nested(CompletionTokensDetailsSchema, required=True)


class SearchResultSchema(ResponseSchema):
    """One Perplexity `search_results` entry, in the order of `citations`."""

    title = fields.String(required=True)
    url = fields.String(required=True)
    date = fields.String(required=True, allow_none=True)
    snippet = fields.String(required=True)
    source = fields.String(required=True, validate=validate.OneOf(SOURCE_KINDS))


class ImageSchema(ResponseSchema):
    """One Perplexity `images` entry (sent when the request set `return_images`)."""

    image_url = fields.String(required=True)
    origin_url = fields.String(required=True, allow_none=True)
    title = fields.String(required=True)
    width = fields.Integer(required=True, strict=True, allow_none=True)
    height = fields.Integer(required=True, strict=True, allow_none=True)


# ---- the whole response -------------------------------------------------------------------------


class MessageSchema(ResponseSchema):
    """The assistant message; `reasoning_content` and its alias `reasoning` appear only when there was reasoning."""

    role = constant("assistant")
    content = fields.String(required=True, allow_none=True, dump_default=None)
    refusal = fields.String(required=True, allow_none=True, dump_default=None)
    annotations = fields.List(fields.Nested(AnnotationSchema), required=True)
    reasoning_content = fields.String()
    reasoning = fields.String()


class ChoiceSchema(ResponseSchema):
    """The single choice of a whole response."""

    index = fields.Integer(required=True, strict=True)
    message = fields.Nested(MessageSchema, required=True)
    finish_reason = _finish_reason(required=True)
    logprobs = Null()


class ChatCompletionSchema(ResponseSchema):
    """A `chat.completion`; Perplexity's `citations` and `search_results` come with sources, the last two on request."""

    id = fields.String(required=True)
    object = constant("chat.completion")
    created = fields.Integer(required=True, strict=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(ChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema, required=True)
    service_tier = fields.String(required=True, validate=validate.OneOf(SERVICE_TIERS))
    citations = fields.List(fields.String())
    search_results = fields.List(fields.Nested(SearchResultSchema))
    related_questions = fields.List(fields.String())
    images = fields.List(fields.Nested(ImageSchema))


# ---- stream chunks ------------------------------------------------------------------------------


class DeltaSchema(ResponseSchema):
    """A chunk's `delta`: the role chunk, a content or reasoning piece, or the last one (empty, or annotations only).

    `annotations` is not in the spec's delta; OpenRouter-style clients read it from the finishing chunk.
    """

    role = fields.String(validate=validate.Equal("assistant"))
    content = fields.String()
    reasoning_content = fields.String()
    reasoning = fields.String()
    annotations = fields.List(fields.Nested(AnnotationSchema))


class ChunkChoiceSchema(ResponseSchema):
    """The single choice of a chunk; `finish_reason` is null until the finishing chunk."""

    index = fields.Integer(required=True, strict=True)
    delta = fields.Nested(DeltaSchema, required=True)
    finish_reason = _finish_reason(required=True, allow_none=True, dump_default=None)
    logprobs = Null()


class ChatCompletionChunkSchema(ResponseSchema):
    """A `chat.completion.chunk`.

    With `stream_options.include_usage` every chunk has `"usage": null` and a last chunk with no choices carries
    the usage; without it there is no `usage` key. `citations`/`search_results` ride on every chunk once sources
    are known; `related_questions` and `images` (on request) only on the finishing chunk.
    """

    id = fields.String(required=True)
    object = constant("chat.completion.chunk")
    created = fields.Integer(required=True, strict=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(ChunkChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema, allow_none=True)
    citations = fields.List(fields.String())
    search_results = fields.List(fields.Nested(SearchResultSchema))
    related_questions = fields.List(fields.String())
    images = fields.List(fields.Nested(ImageSchema))
