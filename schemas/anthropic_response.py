"""Response schemas of Anthropic's `POST /v1/messages` (the `message`) and `POST /v1/messages/count_tokens`."""

from __future__ import annotations

from marshmallow import fields, validate

from schemas.common import ResponseSchema, constant

__all__ = ["AnthropicMessageResponseSchema", "AnthropicUsageSchema", "TokenCountSchema"]

STOP_REASONS = ("end_turn", "max_tokens", "stop_sequence", "tool_use")


class TextBlockSchema(ResponseSchema):
    """A `text` block; `citations` (web_search_result_location) when the answer cites sources."""

    type = constant("text")
    text = fields.String(required=True)
    citations = fields.List(fields.Dict())


class ThinkingBlockSchema(ResponseSchema):
    """A `thinking` block (empty text with `display: omitted`)."""

    type = constant("thinking")
    thinking = fields.String(required=True)
    signature = fields.String(required=True)


class ToolUseBlockSchema(ResponseSchema):
    """A `tool_use` block: a call of one of the request's tools."""

    type = constant("tool_use")
    id = fields.String(required=True)
    name = fields.String(required=True)
    input = fields.Dict(required=True)


class ServerToolUseBlockSchema(ResponseSchema):
    """A `server_tool_use` block: Perplexity's web search, when the request offered the web search tool."""

    type = constant("server_tool_use")
    id = fields.String(required=True)
    name = fields.String(required=True)
    input = fields.Dict(required=True)


class WebSearchToolResultBlockSchema(ResponseSchema):
    """A `web_search_tool_result` block: the sources that search found."""

    type = constant("web_search_tool_result")
    tool_use_id = fields.String(required=True)
    content = fields.List(fields.Dict(), required=True)


CONTENT_BLOCKS = (
    TextBlockSchema,
    ThinkingBlockSchema,
    ToolUseBlockSchema,
    ServerToolUseBlockSchema,
    WebSearchToolResultBlockSchema,
)


class ServerToolUsageSchema(ResponseSchema):
    """`usage.server_tool_use`."""

    web_search_requests = fields.Integer(required=True, strict=True)


class AnthropicUsageSchema(ResponseSchema):
    """Estimated usage (four characters a token); no prompt cache to report."""

    input_tokens = fields.Integer(required=True, strict=True)
    output_tokens = fields.Integer(required=True, strict=True)
    cache_creation_input_tokens = fields.Integer(required=True, strict=True)
    cache_read_input_tokens = fields.Integer(required=True, strict=True)
    service_tier = fields.String(required=True)
    server_tool_use = fields.Nested(ServerToolUsageSchema)


class AnthropicMessageResponseSchema(ResponseSchema):
    """An Anthropic `message`: thinking, the web search, then the answer's text (with citations) or tool calls."""

    id = fields.String(required=True)
    type = constant("message")
    role = constant("assistant")
    model = fields.String(required=True)
    content = fields.List(fields.Raw(metadata={"one_of": CONTENT_BLOCKS}), required=True)
    stop_reason = fields.String(required=True, allow_none=True, validate=validate.OneOf(STOP_REASONS))
    stop_sequence = fields.String(required=True, allow_none=True)
    usage = fields.Nested(AnthropicUsageSchema, required=True)


class TokenCountSchema(ResponseSchema):
    """`POST /v1/messages/count_tokens`: the estimated input tokens."""

    input_tokens = fields.Integer(required=True, strict=True)
