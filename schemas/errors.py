"""The OpenAI error body `{"error": {"message", "type", "param", "code"}}`, for dumping errors and for tests."""

from __future__ import annotations

from marshmallow import Schema, fields

__all__ = ["ErrorResponseSchema", "ErrorSchema"]


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
