"""Error bodies: OpenAI's `{"error": {"message", "type", "param", "code"}}` and Anthropic's, for dumping and docs."""

from __future__ import annotations

from marshmallow import Schema, fields

from schemas.common import constant

__all__ = ["AnthropicErrorResponseSchema", "AnthropicErrorSchema", "ErrorResponseSchema", "ErrorSchema"]


class ErrorSchema(Schema):
    """The inner error object; the spec requires all four keys, with `param` and `code` nullable."""

    message = fields.String(required=True)
    type = fields.String(required=True)
    # dump_default keeps the key present as null: openai-python and the spec expect it even when unknown.
    param = fields.String(required=True, allow_none=True, dump_default=None)
    code = fields.String(required=True, allow_none=True, dump_default=None)


class ErrorResponseSchema(Schema):
    """The whole error body of every non-2xx response and of a mid-stream `data:` error event."""

    error = fields.Nested(ErrorSchema, required=True)


class AnthropicErrorSchema(Schema):
    """Anthropic's inner error: `type` (invalid_request_error, authentication_error, overloaded_error, ...)."""

    type = fields.String(required=True)
    message = fields.String(required=True)


class AnthropicErrorResponseSchema(Schema):
    """The error body of the Anthropic family (`/v1/messages…`, or any request from an Anthropic client)."""

    type = constant("error")
    error = fields.Nested(AnthropicErrorSchema, required=True)
    request_id = fields.String(required=True, allow_none=True)
