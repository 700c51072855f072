"""Response schemas of `GET /v1/models` and `GET /v1/models/<id>`."""

from __future__ import annotations

from marshmallow import fields

from schemas.common import ResponseSchema, constant

__all__ = ["ModelListSchema", "ModelSchema"]


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
