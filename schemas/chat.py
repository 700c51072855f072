"""The request schema of `POST /v1/chat/completions`: OpenAI's fields, Perplexity's extras and this server's own."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from schemas.common import (
    REQUIRED,
    RequestPartSchema,
    array,
    boolean,
    choice,
    integer,
    mapping,
    nested,
    number,
    string,
)
from schemas.messages import (
    ROLES,
    AudioPartSchema,
    AudioSchema,
    FilePartSchema,
    FileSchema,
    FunctionCallSchema,
    MessageContent,
    MessageSchema,
    RefusalPartSchema,
    TextPartSchema,
    ToolCallSchema,
    UrlPartSchema,
    UrlSchema,
)

# The message and content-part schemas live in schemas.messages; they stay importable from here.
from schemas.options import PerplexityOptionsSchema

__all__ = [
    "ROLES",
    "AudioPartSchema",
    "AudioSchema",
    "ChatCompletionRequestSchema",
    "FilePartSchema",
    "FileSchema",
    "FunctionCallSchema",
    "MessageContent",
    "MessageSchema",
    "RefusalPartSchema",
    "TextPartSchema",
    "ToolCallSchema",
    "UrlPartSchema",
    "UrlSchema",
]

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
MAX_STOP_SEQUENCES = 4
MAX_METADATA_PAIRS = 16


# ---- request options ----------------------------------------------------------------------------


class StreamOptionsSchema(RequestPartSchema):
    """`stream_options`; unknown keys are tolerated (clients add new ones before servers know them)."""

    include_usage = boolean()
    include_obfuscation = boolean()


class StopField(fields.Field):
    """`stop`: one string or an array of at most four strings."""

    default_error_messages = {"invalid": "must be a string or an array of strings."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | list[str]:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise self.make_error("invalid")
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValidationError(f"must have at most {MAX_STOP_SEQUENCES} items.")
        errors = {index: ["must be a string."] for index, item in enumerate(value) if not isinstance(item, str)}
        if errors:
            raise ValidationError(errors)
        return value


STOP_SHAPE = {
    "any_of": ({"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES})
}


def _only_one_choice(value: int | None) -> None:
    # Perplexity gives one answer per ask; fanning out n asks would multiply cost and rate-limit use.
    if value is not None and value < 1:
        raise ValidationError("must be at least 1.")
    if value is not None and value > 1:
        raise ValidationError("only n=1 is supported by this server (it returns a single choice).")


def _string_map(value: dict[Any, Any]) -> None:
    if len(value) > MAX_METADATA_PAIRS:
        raise ValidationError(f"must have at most {MAX_METADATA_PAIRS} key-value pairs.")
    if not all(isinstance(key, str) and isinstance(item, str) for key, item in value.items()):
        raise ValidationError("keys and values must be strings.")


class JsonSchemaFormatSchema(RequestPartSchema):
    """`response_format.json_schema` (OpenAI requires `name`; Perplexity does not, so neither do we)."""

    name = string()
    description = string()
    schema = mapping()
    strict = boolean()


class RegexFormatSchema(RequestPartSchema):
    """`response_format.regex` (Perplexity's API)."""

    regex = string(required=True)


class ResponseFormatSchema(RequestPartSchema):
    """`response_format`: text, json_object, json_schema (OpenAI) or regex (Perplexity)."""

    type = choice("text", "json_object", "json_schema", "regex", required=True)
    json_schema = nested(JsonSchemaFormatSchema)
    regex = nested(RegexFormatSchema)

    @validates_schema
    def _require_details(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind = data["type"]
        if kind in ("json_schema", "regex") and data.get(kind) is None:
            raise ValidationError(REQUIRED, kind)


class FunctionDefinitionSchema(RequestPartSchema):
    """A function a tool (or the deprecated `functions` list) declares."""

    name = string(required=True)
    description = string()
    parameters = mapping()
    strict = boolean()


class ToolSchema(RequestPartSchema):
    """One entry of `tools`: a function tool or a custom (free-text input) tool."""

    type = choice("function", "custom", required=True)
    function = nested(FunctionDefinitionSchema)
    custom = mapping()

    @validates_schema
    def _require_definition(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get(data["type"]) is None:
            raise ValidationError(REQUIRED, data["type"])
        if data["type"] == "custom" and not isinstance(data["custom"].get("name"), str):
            raise ValidationError({"name": [REQUIRED]}, "custom")


class NamedToolSchema(RequestPartSchema):
    """`{"name": ...}` inside a named tool choice."""

    name = string(required=True)


class AllowedToolsSchema(RequestPartSchema):
    """`allowed_tools` inside a tool choice."""

    mode = choice("auto", "required", required=True)
    tools = array(mapping(allow_none=False), required=True)


class ToolChoiceObjectSchema(RequestPartSchema):
    """The object form of `tool_choice`."""

    type = choice("function", "custom", "allowed_tools", required=True)
    function = nested(NamedToolSchema)
    custom = nested(NamedToolSchema)
    allowed_tools = nested(AllowedToolsSchema)

    @validates_schema
    def _require_details(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get(data["type"]) is None:
            raise ValidationError(REQUIRED, data["type"])


_TOOL_CHOICE_OBJECT = ToolChoiceObjectSchema()


class ToolChoiceField(fields.Field):
    """`tool_choice`: "none" | "auto" | "required", or an object naming a tool."""

    default_error_messages = {"invalid": "must be 'none', 'auto', 'required' or an object."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | dict[str, Any]:
        if isinstance(value, dict):
            return _TOOL_CHOICE_OBJECT.load(value)
        if value in ("none", "auto", "required"):
            return value
        raise self.make_error("invalid")


class ChatCompletionRequestSchema(PerplexityOptionsSchema):
    """`POST /v1/chat/completions`; unknown fields are kept (SDK `extra_body` is how Perplexity options arrive)."""

    # Optional: the server's DEFAULT_MODEL applies when a request names none.
    model = string()
    messages = array(
        nested(MessageSchema, allow_none=False),
        required=True,
        validate=validate.Length(min=1, error="must contain at least one message."),
    )
    stream = boolean(load_default=False)
    stream_options = nested(StreamOptionsSchema)
    n = integer(load_default=1, validate=_only_one_choice)
    stop = StopField(allow_none=True, metadata=STOP_SHAPE)
    max_tokens = integer(validate=validate.Range(min=1, error="must be at least {min}."))
    max_completion_tokens = integer(validate=validate.Range(min=1, error="must be at least {min}."))
    # Sampling knobs cannot reach Perplexity; they are range-checked like OpenAI does, then ignored.
    temperature = number(0, 2)
    top_p = number(0, 1)
    presence_penalty = number(-2, 2)
    frequency_penalty = number(-2, 2)
    logit_bias = mapping()
    logprobs = boolean()
    top_logprobs = integer(validate=validate.Range(0, 20, error="must be between {min} and {max}."))
    seed = integer()
    user = string()
    safety_identifier = string()
    metadata = mapping(validate=_string_map)
    store = boolean()
    reasoning_effort = choice(*REASONING_EFFORTS)
    response_format = nested(ResponseFormatSchema)
    tools = array(nested(ToolSchema, allow_none=False))
    tool_choice = ToolChoiceField(
        allow_none=True,
        metadata={"any_of": ({"type": "string", "enum": ["none", "auto", "required"]}, ToolChoiceObjectSchema)},
    )
    parallel_tool_calls = boolean()
    functions = array(nested(FunctionDefinitionSchema, allow_none=False))
    function_call = fields.Raw(allow_none=True)
    # Perplexity's options (search_mode, search_recency_filter, ...) come from PerplexityOptionsSchema.
    conversation_id = string()
