"""Event schemas of the event streams whose events are many kinds of object (Responses, Anthropic Messages)."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields

__all__ = ["MessageStreamEventSchema", "ResponseStreamEventSchema"]


class _OpenEventSchema(Schema):
    """An event object: its `type` names the kind; the kinds' own keys are kept (see the family's reference)."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(required=True)


class ResponseStreamEventSchema(_OpenEventSchema):
    """One Responses API stream event (`response.created`, `response.output_text.delta`, ..., `response.completed`
    or `response.failed`), numbered by `sequence_number`."""

    sequence_number = fields.Integer(required=True, strict=True)


class MessageStreamEventSchema(_OpenEventSchema):
    """One Anthropic Messages stream event (`message_start`, `content_block_delta`, ..., `message_stop`, `ping`, or
    `error` with Anthropic's error body)."""
