"""The request schema of `POST /v1/responses`: `input` items, OpenAI's options, and Perplexity's as in chat."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from schemas.chat import REASONING_EFFORTS, StreamOptionsSchema
from schemas.common import REQUIRED, RequestPartSchema, array, boolean, choice, integer, mapping, nested, number, string
from schemas.options import PerplexityOptionsSchema

__all__ = ["WEB_SEARCH_TOOLS", "CreateResponseRequestSchema", "InputItemsField"]

INPUT_ROLES = ("user", "assistant", "system", "developer")
MIN_OUTPUT_TOKENS = 16  # OpenAI rejects smaller max_output_tokens; so do we, to behave alike
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

# Content part types per role: only user turns carry images and files; assistant history holds output text.
_TEXT_PARTS = ("input_text",)
_PARTS_BY_ROLE = {
    "user": ("input_text", "input_image", "input_file"),
    "system": _TEXT_PARTS,
    "developer": _TEXT_PARTS,
    "assistant": ("output_text", "input_text", "refusal"),
}


# ---- content parts ------------------------------------------------------------------------------


class TextPartSchema(RequestPartSchema):
    """`input_text` / `output_text`: a text part (output_text comes back in assistant history)."""

    type = string(required=True, metadata={"enum": ["input_text", "output_text"]})
    text = string(required=True)
    annotations = array(mapping(allow_none=False))


class RefusalPartSchema(RequestPartSchema):
    """`{"type": "refusal", "refusal": ...}` in assistant history."""

    type = string(required=True, metadata={"enum": ["refusal"]})
    refusal = string(required=True)


class ImagePartSchema(RequestPartSchema):
    """`input_image`: an `image_url` (a data URL uploads the image) or a `file_id`."""

    type = string(required=True, metadata={"enum": ["input_image"]})
    image_url = string()
    file_id = string()
    detail = choice("low", "high", "auto", "original")

    @validates_schema
    def _require_source(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("image_url") and not data.get("file_id"):
            raise ValidationError("either 'image_url' or 'file_id' is required.")


class FilePartSchema(RequestPartSchema):
    """`input_file`: inline `file_data`, a `file_url` or a `file_id`."""

    type = string(required=True, metadata={"enum": ["input_file"]})
    file_data = string()
    file_url = string()
    file_id = string()
    filename = string()

    @validates_schema
    def _require_source(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not any(data.get(key) for key in ("file_data", "file_url", "file_id")):
            raise ValidationError("one of 'file_data', 'file_url' or 'file_id' is required.")


# For the OpenAPI document (api/docs reads the `any_of` metadata of the fields below).
PART_SCHEMAS = (TextPartSchema, RefusalPartSchema, ImagePartSchema, FilePartSchema)
_CONTENT_SHAPE = {"any_of": ({"type": "string"}, {"type": "array", "items": {"anyOf": PART_SCHEMAS}})}

_PART_SCHEMAS: dict[str, RequestPartSchema] = {
    "input_text": TextPartSchema(),
    "output_text": TextPartSchema(),
    "refusal": RefusalPartSchema(),
    "input_image": ImagePartSchema(),
    "input_file": FilePartSchema(),
}


def _load_part(part: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise ValidationError("must be an object.")
    kind = part.get("type")
    if kind is None:
        raise ValidationError({"type": [REQUIRED]})
    if kind not in allowed:
        raise ValidationError({"type": [f"must be one of: {', '.join(allowed)}."]})
    return _PART_SCHEMAS[kind].load(part)


def _load_list(values: list[Any], load: Any) -> list[dict[str, Any]]:
    """Load each element with `load`, reporting every failure under its index."""
    loaded, errors = [], {}
    for index, value in enumerate(values):
        try:
            loaded.append(load(value))
        except ValidationError as exc:
            errors[index] = exc.messages
    if errors:
        raise ValidationError(errors)
    return loaded


# ---- input items --------------------------------------------------------------------------------


class MessageItemSchema(RequestPartSchema):
    """A message item: the easy form `{role, content}` or the typed `{type: "message", role, content: [parts]}`."""

    type = string(metadata={"enum": ["message"]})
    id = string()
    role = choice(*INPUT_ROLES, required=True)
    content = fields.Raw(required=True, metadata=_CONTENT_SHAPE)
    status = string()

    @validates_schema
    def _check_content(self, data: dict[str, Any], **kwargs: Any) -> None:
        content = data["content"]
        if isinstance(content, str):
            return
        if not isinstance(content, list):
            raise ValidationError("must be a string or an array of content parts.", "content")
        allowed = _PARTS_BY_ROLE[data["role"]]
        try:
            data["content"] = _load_list(content, lambda part: _load_part(part, allowed))
        except ValidationError as exc:
            raise ValidationError(exc.messages, "content") from exc


class FunctionCallItemSchema(RequestPartSchema):
    """A tool call the assistant made in an earlier turn (clients replay them as history)."""

    type = string(required=True, metadata={"enum": ["function_call"]})
    id = string()
    call_id = string(required=True)
    name = string(required=True)
    arguments = string(required=True)
    status = string()


class FunctionCallOutputItemSchema(RequestPartSchema):
    """The result of a tool call, sent back by the client."""

    type = string(required=True, metadata={"enum": ["function_call_output", "custom_tool_call_output"]})
    id = string()
    call_id = string(required=True)
    output = fields.Raw(required=True, metadata=_CONTENT_SHAPE)
    status = string()

    @validates_schema
    def _check_output(self, data: dict[str, Any], **kwargs: Any) -> None:
        output = data["output"]
        if isinstance(output, list):
            try:
                data["output"] = _load_list(output, lambda part: _load_part(part, _PARTS_BY_ROLE["user"]))
            except ValidationError as exc:
                raise ValidationError(exc.messages, "output") from exc
        elif not isinstance(output, str):
            raise ValidationError("must be a string or an array of content parts.", "output")


class ReasoningItemSchema(RequestPartSchema):
    """Reasoning from an earlier turn; Codex replays it. Accepted, kept in input_items, not sent upstream."""

    type = string(required=True, metadata={"enum": ["reasoning"]})
    id = string()
    summary = array(mapping(allow_none=False))


class CustomToolCallItemSchema(RequestPartSchema):
    """A custom (freeform) tool call the assistant made in an earlier turn."""

    type = string(required=True, metadata={"enum": ["custom_tool_call"]})
    id = string()
    call_id = string(required=True)
    name = string(required=True)
    input = string(required=True)
    status = string()


class WebSearchCallItemSchema(RequestPartSchema):
    """A web search this server reported in an earlier answer; clients replay their output. Not sent upstream."""

    type = string(required=True, metadata={"enum": ["web_search_call"]})
    id = string()
    status = string()
    action = mapping()


_ITEM_SCHEMAS: dict[str, RequestPartSchema] = {
    "message": MessageItemSchema(),
    "function_call": FunctionCallItemSchema(),
    "function_call_output": FunctionCallOutputItemSchema(),
    "reasoning": ReasoningItemSchema(),
    "web_search_call": WebSearchCallItemSchema(),
    "custom_tool_call": CustomToolCallItemSchema(),
    # Its result has the shape of a function call's: a call_id and an output (text or parts).
    "custom_tool_call_output": FunctionCallOutputItemSchema(),
}


# The input item kinds, for the OpenAPI document.
INPUT_ITEM_SCHEMAS = (
    MessageItemSchema,
    FunctionCallItemSchema,
    FunctionCallOutputItemSchema,
    ReasoningItemSchema,
    WebSearchCallItemSchema,
    CustomToolCallItemSchema,
)


def _load_item(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValidationError("must be an object.")
    # The easy message form has no `type`; OpenAI infers "message" from `role`.
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind is None:
        raise ValidationError({"type": [REQUIRED]})
    if not isinstance(kind, str):
        raise ValidationError({"type": ["must be a string."]})
    if kind not in _ITEM_SCHEMAS:
        supported = ", ".join(_ITEM_SCHEMAS)
        raise ValidationError({"type": [f"input items of type {kind!r} are not supported (use: {supported})."]})
    return {**_ITEM_SCHEMAS[kind].load(item), "type": kind}


class InputItemsField(fields.Field):
    """`input`: a string (one user message) or an array of input items; loads as a list of items."""

    default_error_messages = {"invalid": "must be a string or an array of input items."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if isinstance(value, str):
            if not value.strip():
                raise ValidationError("must not be empty.")
            return [{"type": "message", "role": "user", "content": value}]
        if not isinstance(value, list):
            raise self.make_error("invalid")
        if not value:
            raise ValidationError("must contain at least one item.")
        return _load_list(value, _load_item)


# ---- request options ----------------------------------------------------------------------------


def _metadata(value: dict[Any, Any]) -> None:
    # The Responses API's limits: 16 pairs, keys up to 64 characters, values up to 512.
    if len(value) > MAX_METADATA_PAIRS:
        raise ValidationError(f"must have at most {MAX_METADATA_PAIRS} key-value pairs.")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValidationError("keys and values must be strings.")
        if len(key) > MAX_METADATA_KEY or len(item) > MAX_METADATA_VALUE:
            raise ValidationError(f"keys must be at most {MAX_METADATA_KEY} and values {MAX_METADATA_VALUE} long.")


def _unsupported(name: str, hint: str) -> Any:
    def check(value: Any) -> None:
        if value:
            raise ValidationError(f"'{name}' is not supported by this server; {hint}")

    return check


class TextFormatSchema(RequestPartSchema):
    """`text.format`: text, json_object or json_schema (flat: `name`, `schema`, `strict`), as chat's response_format."""

    type = choice("text", "json_object", "json_schema", required=True)
    name = string()
    schema = mapping()
    strict = boolean()

    @validates_schema
    def _require_schema(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["type"] == "json_schema" and data.get("schema") is None:
            raise ValidationError(REQUIRED, "schema")


# Built-in tool types answered natively: Perplexity searches the web for every answer.
WEB_SEARCH_TOOLS = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11")


class ToolSchema(RequestPartSchema):
    """One entry of `tools`: a function tool (flat: `name`, `description`, `parameters`, `strict`), a custom
    (freeform input) tool, or web search.

    Other built-in tools (file search, code interpreter, computer use, MCP, ...) need OpenAI's own machinery: a
    request naming one is refused, rather than answered as if the tool had run.
    """

    type = string(required=True)
    name = string()
    description = string()
    parameters = mapping()
    strict = boolean()

    @validates_schema
    def _check_type(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind = data["type"]
        if kind in ("function", "custom"):
            if not data.get("name"):
                raise ValidationError(REQUIRED, "name")
        elif kind not in WEB_SEARCH_TOOLS:
            supported = ", ".join(("function", "custom", *WEB_SEARCH_TOOLS))
            raise ValidationError(f"tools of type {kind!r} are not supported (use: {supported}).", "type")


class TextConfigSchema(RequestPartSchema):
    """`text`: output format and verbosity."""

    format = nested(TextFormatSchema)
    verbosity = choice("low", "medium", "high")


class ReasoningConfigSchema(RequestPartSchema):
    """`reasoning`: `effort` high and above picks the model's reasoning variant, as chat's reasoning_effort does."""

    effort = choice(*REASONING_EFFORTS)
    summary = choice("auto", "concise", "detailed")


class CreateResponseRequestSchema(PerplexityOptionsSchema):
    """`POST /v1/responses`; unknown fields are kept (SDK `extra_body` is how Perplexity options arrive)."""

    model = string()
    input = InputItemsField(
        required=True,
        metadata={
            "any_of": (
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "items": {"anyOf": INPUT_ITEM_SCHEMAS}},
            )
        },
    )
    instructions = string()
    previous_response_id = string()
    conversation = fields.Raw(
        allow_none=True, validate=_unsupported("conversation", "chain turns with 'previous_response_id'.")
    )
    background = boolean(load_default=False)
    stream = boolean(load_default=False)
    stream_options = nested(StreamOptionsSchema)
    store = boolean(load_default=True)
    metadata = mapping(validate=_metadata)
    max_output_tokens = integer(
        validate=validate.Range(min=MIN_OUTPUT_TOKENS, error="must be at least {min}."),
    )
    max_tool_calls = integer()
    # Sampling knobs cannot reach Perplexity; they are range-checked like OpenAI does, echoed, then ignored.
    temperature = number(0, 2)
    top_p = number(0, 1)
    top_logprobs = integer(validate=validate.Range(0, 20, error="must be between {min} and {max}."))
    tools = array(nested(ToolSchema, allow_none=False))
    tool_choice = fields.Raw(allow_none=True, metadata={"any_of": ({"type": "string"}, {"type": "object"})})
    parallel_tool_calls = boolean()
    text = nested(TextConfigSchema)
    reasoning = nested(ReasoningConfigSchema)
    truncation = choice("auto", "disabled")
    include = array(string(allow_none=False))
    user = string()
    safety_identifier = string()
    prompt_cache_key = string()
    service_tier = string()
    # This server's own option, as in chat: continue the thread of a conversation the caller named.
    conversation_id = string()
