"""Response schemas of the legacy `POST /v1/completions`: the `text_completion` object and its stream chunks."""

from __future__ import annotations

from marshmallow import fields, validate

from schemas.chat_response import FINISH_REASONS, ImageSchema, SearchResultSchema, UsageSchema
from schemas.common import Null, ResponseSchema, constant

__all__ = ["TextChoiceSchema", "TextCompletionSchema"]


class TextChoiceSchema(ResponseSchema):
    """The single choice; `finish_reason` is null on the chunks before the last."""

    text = fields.String(required=True)
    index = fields.Integer(required=True, strict=True)
    logprobs = Null()
    finish_reason = fields.String(required=True, allow_none=True, validate=validate.OneOf(FINISH_REASONS))


class TextCompletionSchema(ResponseSchema):
    """A `text_completion`, whole or one stream chunk (the usage chunk of `include_usage` has no choices)."""

    id = fields.String(required=True)
    object = constant("text_completion")
    created = fields.Integer(required=True, strict=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(TextChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema)
    citations = fields.List(fields.String())
    search_results = fields.List(fields.Nested(SearchResultSchema))
    related_questions = fields.List(fields.String())
    images = fields.List(fields.Nested(ImageSchema))
