"""Response schemas of the Responses API: the `response` object, its output items, deletion and input item pages."""

from __future__ import annotations

from marshmallow import fields, validate

from schemas.chat_response import ImageSchema, SearchResultSchema
from schemas.common import ResponseSchema, constant

__all__ = [
    "InputItemListSchema",
    "OutputMessageSchema",
    "ResponseDeletedSchema",
    "ResponseObjectSchema",
    "ResponseUsageSchema",
]

STATUSES = ("completed", "incomplete", "in_progress", "queued", "cancelled", "failed")
ITEM_STATUSES = ("completed", "incomplete", "in_progress")


class UrlCitationSchema(ResponseSchema):
    """A flat `url_citation` annotation of an `output_text` part."""

    type = constant("url_citation")
    url = fields.String(required=True)
    title = fields.String(required=True)
    start_index = fields.Integer(required=True, strict=True)
    end_index = fields.Integer(required=True, strict=True)


class OutputTextSchema(ResponseSchema):
    """An `output_text` content part (`logprobs` is always empty: Perplexity gives none)."""

    type = constant("output_text")
    text = fields.String(required=True)
    annotations = fields.List(fields.Nested(UrlCitationSchema), required=True)
    logprobs = fields.List(fields.Raw(), required=True)


class OutputMessageSchema(ResponseSchema):
    """The assistant `message` output item."""

    id = fields.String(required=True)
    type = constant("message")
    role = constant("assistant")
    status = fields.String(required=True, validate=validate.OneOf(ITEM_STATUSES))
    content = fields.List(fields.Nested(OutputTextSchema), required=True)


class SummaryTextSchema(ResponseSchema):
    """A `summary_text` part of a reasoning item."""

    type = constant("summary_text")
    text = fields.String(required=True)


class ReasoningItemSchema(ResponseSchema):
    """A `reasoning` output item: Perplexity's plan, searches and thinking as one summary part."""

    id = fields.String(required=True)
    type = constant("reasoning")
    summary = fields.List(fields.Nested(SummaryTextSchema), required=True)
    status = fields.String(required=True, validate=validate.OneOf(ITEM_STATUSES))


class FunctionCallItemSchema(ResponseSchema):
    """A `function_call` output item (a call of one of the request's function tools)."""

    id = fields.String(required=True)
    type = constant("function_call")
    call_id = fields.String(required=True)
    name = fields.String(required=True)
    arguments = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(ITEM_STATUSES))


class CustomToolCallItemSchema(ResponseSchema):
    """A `custom_tool_call` output item (a call of one of the request's custom tools)."""

    id = fields.String(required=True)
    type = constant("custom_tool_call")
    call_id = fields.String(required=True)
    name = fields.String(required=True)
    input = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(ITEM_STATUSES))


class WebSearchCallItemSchema(ResponseSchema):
    """A `web_search_call` output item: Perplexity's search, when the request offered a web search tool."""

    id = fields.String(required=True)
    type = constant("web_search_call")
    status = fields.String(required=True, validate=validate.OneOf((*ITEM_STATUSES, "searching")))
    action = fields.Dict(required=True, metadata={"description": "`{type: search, query, queries, sources}`"})


OUTPUT_ITEMS = (
    OutputMessageSchema,
    ReasoningItemSchema,
    FunctionCallItemSchema,
    CustomToolCallItemSchema,
    WebSearchCallItemSchema,
)


class InputTokensDetailsSchema(ResponseSchema):
    """`usage.input_tokens_details` (always zero: Perplexity reports no cache use)."""

    cached_tokens = fields.Integer(required=True, strict=True)
    cache_write_tokens = fields.Integer(required=True, strict=True)


class OutputTokensDetailsSchema(ResponseSchema):
    """`usage.output_tokens_details`."""

    reasoning_tokens = fields.Integer(required=True, strict=True)


class ResponseUsageSchema(ResponseSchema):
    """Estimated usage (four characters a token; reasoning counts inside output tokens)."""

    input_tokens = fields.Integer(required=True, strict=True)
    input_tokens_details = fields.Nested(InputTokensDetailsSchema, required=True)
    output_tokens = fields.Integer(required=True, strict=True)
    output_tokens_details = fields.Nested(OutputTokensDetailsSchema, required=True)
    total_tokens = fields.Integer(required=True, strict=True)


class ResponseErrorSchema(ResponseSchema):
    """The `error` of a failed response."""

    code = fields.String(required=True)
    message = fields.String(required=True)


class IncompleteDetailsSchema(ResponseSchema):
    """Why a response is incomplete."""

    reason = fields.String(required=True)


def _nullable_string() -> fields.String:
    return fields.String(required=True, allow_none=True)


class ResponseObjectSchema(ResponseSchema):
    """A `response`: its status, output items and usage, the request fields it repeats, and Perplexity's
    `citations` / `search_results` (plus `related_questions` and `images` on request) as extra top-level fields."""

    id = fields.String(required=True)
    object = constant("response")
    created_at = fields.Integer(required=True, strict=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    background = fields.Boolean(required=True)
    completed_at = fields.Integer(required=True, strict=True, allow_none=True)
    error = fields.Nested(ResponseErrorSchema, required=True, allow_none=True)
    incomplete_details = fields.Nested(IncompleteDetailsSchema, required=True, allow_none=True)
    model = fields.String(required=True)
    output = fields.List(fields.Raw(metadata={"one_of": OUTPUT_ITEMS}), required=True)
    service_tier = fields.String(required=True)
    instructions = _nullable_string()
    max_output_tokens = fields.Integer(required=True, strict=True, allow_none=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    parallel_tool_calls = fields.Boolean(required=True)
    previous_response_id = _nullable_string()
    prompt_cache_key = _nullable_string()
    reasoning = fields.Dict(required=True, allow_none=True)
    safety_identifier = _nullable_string()
    store = fields.Boolean(required=True)
    temperature = fields.Float(required=True)
    text = fields.Dict(required=True)
    tool_choice = fields.Raw(required=True, metadata={"one_of": ({"type": "string"}, {"type": "object"})})
    tools = fields.List(fields.Dict(), required=True)
    top_logprobs = fields.Integer(required=True, strict=True)
    top_p = fields.Float(required=True)
    truncation = fields.String(required=True)
    user = fields.String()
    usage = fields.Nested(ResponseUsageSchema, metadata={"description": "Absent while the response is unfinished."})
    citations = fields.List(fields.String())
    search_results = fields.List(fields.Nested(SearchResultSchema))
    related_questions = fields.List(fields.String())
    images = fields.List(fields.Nested(ImageSchema))


class ResponseDeletedSchema(ResponseSchema):
    """`DELETE /v1/responses/{id}` on success."""

    id = fields.String(required=True)
    object = constant("response.deleted")
    deleted = fields.Boolean(required=True)


class InputItemListSchema(ResponseSchema):
    """`GET /v1/responses/{id}/input_items`: a page of the response's input items, each with an `id`."""

    object = constant("list")
    data = fields.List(fields.Dict(), required=True)
    first_id = _nullable_string()
    last_id = _nullable_string()
    has_more = fields.Boolean(required=True)
