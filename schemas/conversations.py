"""Response schemas of `GET /conversations` and `DELETE /conversations/<id>` (this server's own endpoints)."""

from __future__ import annotations

from marshmallow import fields

from schemas.common import ResponseSchema, constant

__all__ = ["ConversationDeletedSchema", "ConversationListSchema", "ConversationSchema"]


class ConversationSchema(ResponseSchema):
    """What a caller may see of one conversation (never the Perplexity thread token); times are Unix seconds."""

    id = fields.String(required=True)
    object = constant("conversation")
    created = fields.Integer(required=True, strict=True)
    updated = fields.Integer(required=True, strict=True)
    model = fields.String(required=True)
    turns = fields.Integer(required=True, strict=True)
    title = fields.String(required=True, allow_none=True, dump_default=None)


class ConversationListSchema(ResponseSchema):
    """`GET /conversations`: the caller's conversations, most recently updated first."""

    object = constant("list")
    data = fields.List(fields.Nested(ConversationSchema), required=True)


class ConversationDeletedSchema(ResponseSchema):
    """`DELETE /conversations/<id>` on success."""

    id = fields.String(required=True)
    object = constant("conversation.deleted")
    deleted = fields.Boolean(required=True)
