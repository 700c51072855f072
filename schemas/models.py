"""Response schemas of `GET /v1/models`, `GET /v1/models/<id>` and `POST /v1/models/refresh`, in both shapes."""

from __future__ import annotations

from marshmallow import fields

from schemas.common import ResponseSchema, constant

__all__ = [
    "AnthropicModelPageSchema",
    "AnthropicModelSchema",
    "ModelListSchema",
    "ModelSchema",
    "ModelsRefreshSchema",
]


class ModelSchema(ResponseSchema):
    """An OpenAI `Model`; `created` is stable per id (not a real release date)."""

    id = fields.String(required=True)
    object = constant("model")
    created = fields.Integer(required=True, strict=True)
    owned_by = fields.String(required=True)


class ModelListSchema(ResponseSchema):
    """`GET /v1/models`: every public model, aliases first."""

    object = constant("list")
    data = fields.List(fields.Nested(ModelSchema), required=True)


class ModelsRefreshSchema(ResponseSchema):
    """`POST /v1/models/refresh`: whether the reload worked, which list is in use, and that list."""

    object = constant("list")
    refreshed = fields.Boolean(required=True)
    source = fields.String(required=True)
    error = fields.String(required=True, allow_none=True)
    data = fields.List(fields.Nested(ModelSchema), required=True)


class AnthropicModelSchema(ResponseSchema):
    """Anthropic's `ModelInfo`, sent to Anthropic clients (an `anthropic-version` or `x-api-key` header)."""

    type = constant("model")
    id = fields.String(required=True)
    display_name = fields.String(required=True)
    created_at = fields.String(required=True)


class AnthropicModelPageSchema(ResponseSchema):
    """A page of Anthropic's model list (`limit`, `after_id`, `before_id`)."""

    data = fields.List(fields.Nested(AnthropicModelSchema), required=True)
    first_id = fields.String(required=True, allow_none=True)
    last_id = fields.String(required=True, allow_none=True)
    has_more = fields.Boolean(required=True)
