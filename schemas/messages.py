"""Chat message schemas for requests: roles, typed content parts and assistant tool calls."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, pre_load, validates_schema

from schemas.common import REQUIRED, RequestPartSchema, array, choice, nested, string

__all__ = [
    "ROLES",
    "AudioPartSchema",
    "AudioSchema",
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

ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# Part types each role may send (OpenAI spec); the last three are Perplexity's own URL parts.
_USER_PARTS = ("text", "image_url", "input_audio", "file", "file_url", "pdf_url", "video_url")
_PARTS_BY_ROLE = {
    "system": ("text",),
    "developer": ("text",),
    "tool": ("text",),
    "function": ("text",),
    "assistant": ("text", "refusal"),
    "user": _USER_PARTS,
}
_URL_PARTS = ("image_url", "file_url", "pdf_url", "video_url")
# Roles whose content may be absent or null: an assistant turn that only called tools.
_CONTENT_OPTIONAL = ("assistant",)


# ---- content parts ------------------------------------------------------------------------------


class TextPartSchema(RequestPartSchema):
    """`{"type": "text", "text": ...}`."""

    type = string(required=True, metadata={"enum": ["text"]})
    text = string(required=True)


class RefusalPartSchema(RequestPartSchema):
    """`{"type": "refusal", "refusal": ...}` (assistant history only)."""

    type = string(required=True, metadata={"enum": ["refusal"]})
    refusal = string(required=True)


class UrlSchema(RequestPartSchema):
    """The object inside an `image_url` / `file_url` / `pdf_url` / `video_url` part."""

    url = string(required=True)
    detail = choice("auto", "low", "high")


class UrlPartSchema(RequestPartSchema):
    """A part that points at a URL; the key holding the URL object is named like the part's `type`."""

    type = string(required=True, metadata={"enum": list(_URL_PARTS)})
    image_url = nested(UrlSchema)
    file_url = nested(UrlSchema)
    pdf_url = nested(UrlSchema)
    video_url = nested(UrlSchema)

    @pre_load
    def _wrap_bare_url(self, data: Any, **kwargs: Any) -> Any:
        # Perplexity's API (and some OpenAI clients) send `"image_url": "https://..."`; normalise to `{"url": ...}`.
        if isinstance(data, dict) and isinstance(data.get(data.get("type")), str):
            data = {**data, data["type"]: {"url": data[data["type"]]}}
        return data

    @validates_schema
    def _require_url(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get(data["type"]) is None:
            raise ValidationError(REQUIRED, data["type"])


class AudioSchema(RequestPartSchema):
    """`input_audio`: base64 data and its format (OpenAI lists wav and mp3)."""

    data = string(required=True)
    format = string()


class AudioPartSchema(RequestPartSchema):
    """`{"type": "input_audio", "input_audio": {...}}`."""

    type = string(required=True, metadata={"enum": ["input_audio"]})
    input_audio = nested(AudioSchema, required=True)


class FileSchema(RequestPartSchema):
    """`file`: inline base64 data (`file_data`, a data URI) or an uploaded `file_id`."""

    filename = string()
    file_data = string()
    file_id = string()

    @validates_schema
    def _require_data_or_id(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("file_data") and not data.get("file_id"):
            raise ValidationError("either 'file_data' or 'file_id' is required.")


class FilePartSchema(RequestPartSchema):
    """`{"type": "file", "file": {...}}`."""

    type = string(required=True, metadata={"enum": ["file"]})
    file = nested(FileSchema, required=True)


# The content parts, for the OpenAPI document (the `one_of`/`any_of` metadata of a field is read by api/docs).
PART_SCHEMAS = (TextPartSchema, RefusalPartSchema, UrlPartSchema, AudioPartSchema, FilePartSchema)

_CONTENT_SHAPE = {"any_of": ({"type": "string"}, {"type": "array", "items": {"anyOf": PART_SCHEMAS}})}

_PART_SCHEMAS: dict[str, RequestPartSchema] = {
    "text": TextPartSchema(),
    "refusal": RefusalPartSchema(),
    "input_audio": AudioPartSchema(),
    "file": FilePartSchema(),
    **{kind: UrlPartSchema() for kind in _URL_PARTS},
}


def _load_part(part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise ValidationError("must be an object.")
    kind = part.get("type")
    if kind is None:
        raise ValidationError({"type": [REQUIRED]})
    if not isinstance(kind, str) or kind not in _PART_SCHEMAS:
        raise ValidationError({"type": [f"must be one of: {', '.join(_PART_SCHEMAS)}."]})
    return _PART_SCHEMAS[kind].load(part)


class MessageContent(fields.Field):
    """`content`: a string, or an array of typed parts (each validated by its own schema)."""

    default_error_messages = {"invalid": "must be a string or an array of content parts."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | list[dict[str, Any]]:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise self.make_error("invalid")
        parts, errors = [], {}
        for index, part in enumerate(value):
            try:
                parts.append(_load_part(part))
            except ValidationError as exc:
                errors[index] = exc.messages
        if errors:
            raise ValidationError(errors)
        return parts


# ---- messages -----------------------------------------------------------------------------------


class FunctionCallSchema(RequestPartSchema):
    """`function` inside an assistant's tool call: name and arguments (a JSON string per spec)."""

    name = string(required=True)
    # Some clients (Ollama-style) send arguments as an object; accept both and let the service serialise.
    arguments = fields.Raw(allow_none=True)


class ToolCallSchema(RequestPartSchema):
    """One entry of an assistant message's `tool_calls`."""

    id = string()
    type = string()
    function = nested(FunctionCallSchema)


class MessageSchema(RequestPartSchema):
    """One chat message; which fields are required depends on `role`."""

    role = choice(*ROLES, required=True)
    content = MessageContent(allow_none=True, metadata=_CONTENT_SHAPE)
    name = string()
    tool_calls = array(nested(ToolCallSchema, allow_none=False))
    tool_call_id = string()
    refusal = string()
    function_call = fields.Raw(allow_none=True)
    # Continue and LibreChat echo the reasoning of earlier turns back; accepted and left for the caller to drop.
    reasoning_content = string()

    @validates_schema
    def _check_role_rules(self, data: dict[str, Any], **kwargs: Any) -> None:
        role = data["role"]
        content = data.get("content")
        if role not in _CONTENT_OPTIONAL and content is None:
            raise ValidationError(
                REQUIRED if "content" not in data else f"must not be null for role '{role}'.", "content"
            )
        if role == "tool" and not data.get("tool_call_id"):
            raise ValidationError(REQUIRED, "tool_call_id")
        if isinstance(content, list):
            _check_part_types(role, content)


def _check_part_types(role: str, parts: list[dict[str, Any]]) -> None:
    allowed = _PARTS_BY_ROLE[role]
    for index, part in enumerate(parts):
        if part["type"] not in allowed:
            message = f"a {role} message may only contain parts of type: {', '.join(allowed)}."
            raise ValidationError({index: {"type": [message]}}, "content")
