"""The request schemas of Anthropic's `POST /v1/messages` and `POST /v1/messages/count_tokens`.

Shapes are checked as far as this server reads them (roles, block types and their required fields, tools,
tool_choice, thinking); unknown fields and block types are kept, since Anthropic adds them with every beta and
Claude Code sends them (docs/anthropic-contract.md, section 3).
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from schemas.common import REQUIRED, RequestPartSchema, array, boolean, choice, integer, mapping, nested, number, string
from schemas.options import PerplexityOptionsSchema

__all__ = ["CountTokensRequestSchema", "MessagesRequestSchema"]

ROLES = ("user", "assistant", "system")
# Block fields this server reads, by block type; other types are accepted as they are.
_BLOCK_FIELDS = {
    "text": ("text",),
    "image": ("source",),
    "document": ("source",),
    "tool_use": ("id", "name", "input"),
    "tool_result": ("tool_use_id",),
}


def _check_block(block: Any) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise ValidationError("each content block must be an object with a 'type'.")
    missing = [name for name in _BLOCK_FIELDS.get(block["type"], ()) if block.get(name) is None]
    if missing:
        raise ValidationError(f"a '{block['type']}' block needs '{missing[0]}'.")
    if block["type"] == "text" and not isinstance(block["text"], str):
        raise ValidationError("a 'text' block's 'text' must be a string.")


class ContentField(fields.Field):
    """`content`: a string, or an array of content blocks."""

    default_error_messages = {"invalid": "must be a string or an array of content blocks."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | list[dict[str, Any]]:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise self.make_error("invalid")
        errors = {}
        for index, block in enumerate(value):
            try:
                _check_block(block)
            except ValidationError as exc:
                errors[index] = exc.messages
        if errors:
            raise ValidationError(errors)
        return value


class TextBlockSchema(RequestPartSchema):
    """A `text` block of `system` (or of a turn's content)."""

    type = string(metadata={"enum": ["text"]})
    text = string(required=True)


class MessageSchema(RequestPartSchema):
    """One turn: `role` and `content`."""

    role = choice(*ROLES, required=True)
    content = ContentField(
        required=True, metadata={"any_of": ({"type": "string"}, {"type": "array", "items": {"type": "object"}})}
    )


class ToolSchema(RequestPartSchema):
    """A client tool (`name`, `input_schema`, no `type` or `custom`) or a server tool (a versioned `type`)."""

    type = string()
    name = string()
    description = string()
    input_schema = mapping()

    @validates_schema
    def _check_tool(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("name"):
            raise ValidationError(REQUIRED, "name")
        if data.get("type") in (None, "custom") and data.get("input_schema") is None:
            raise ValidationError(REQUIRED, "input_schema")


class ToolChoiceSchema(RequestPartSchema):
    """`tool_choice`: auto, any, tool (with `name`) or none."""

    type = choice("auto", "any", "tool", "none", required=True)
    name = string()
    disable_parallel_tool_use = boolean()

    @validates_schema
    def _require_name(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["type"] == "tool" and not data.get("name"):
            raise ValidationError(REQUIRED, "name")


class ThinkingSchema(RequestPartSchema):
    """`thinking`: enabled (with a budget), adaptive or disabled."""

    type = choice("enabled", "adaptive", "disabled", required=True)
    budget_tokens = integer(validate=validate.Range(min=0, error="must be at least {min}."))
    display = string()


class SystemField(fields.Field):
    """`system`: a string, or an array of `text` blocks."""

    default_error_messages = {"invalid": "must be a string or an array of text blocks."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | list[dict[str, Any]]:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(
            isinstance(block, dict) and isinstance(block.get("text"), str) for block in value
        ):
            raise self.make_error("invalid")
        return value


class CountTokensRequestSchema(PerplexityOptionsSchema):
    """`POST /v1/messages/count_tokens`: what a message would send, without generation controls."""

    model = string(required=True)
    messages = array(
        nested(MessageSchema, allow_none=False),
        required=True,
        validate=validate.Length(min=1, error="must contain at least one message."),
    )
    system = SystemField(
        allow_none=True,
        metadata={"any_of": ({"type": "string"}, {"type": "array", "items": TextBlockSchema})},
    )
    tools = array(nested(ToolSchema, allow_none=False))
    tool_choice = nested(ToolChoiceSchema)
    thinking = nested(ThinkingSchema)
    output_config = mapping()


class MessagesRequestSchema(CountTokensRequestSchema):
    """`POST /v1/messages`; unknown fields are kept (betas add them, Perplexity options arrive as extras)."""

    max_tokens = integer(required=True, validate=validate.Range(min=0, error="must be at least {min}."))
    stream = boolean(load_default=False)
    stop_sequences = array(string(allow_none=False))
    metadata = mapping()
    # Sampling knobs cannot reach Perplexity; range-checked as Anthropic does, then ignored.
    temperature = number(0, 1)
    top_p = number(0, 1)
    top_k = integer(validate=validate.Range(min=0, error="must be at least {min}."))
