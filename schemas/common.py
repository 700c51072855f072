"""Shared marshmallow building blocks for request and response schemas, and the OpenAI-style reading of errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate
from marshmallow.exceptions import SCHEMA

__all__ = [
    "REQUIRED",
    "Null",
    "RequestPartSchema",
    "ResponseSchema",
    "WholeNumber",
    "array",
    "boolean",
    "choice",
    "constant",
    "first_error",
    "integer",
    "mapping",
    "nested",
    "number",
    "string",
]

# marshmallow's own text for a missing required field; first_error turns it into OpenAI's wording.
REQUIRED = fields.Field.default_error_messages["required"]

# Messages are lower-case fragments: first_error prefixes them with "Invalid value for '<param>': ".
_NULL = "must not be null."


class RequestPartSchema(Schema):
    """Base for every request (sub)schema: unknown keys are kept, because clients send extras we must pass on."""

    class Meta:
        unknown = INCLUDE

    error_messages = {"type": "must be an object."}


def _options(kwargs: dict[str, Any], invalid: str) -> dict[str, Any]:
    # Optional fields accept JSON null: the OpenAI spec marks nearly every optional request field nullable.
    kwargs.setdefault("allow_none", not kwargs.get("required", False))
    kwargs.setdefault("error_messages", {"invalid": invalid, "null": _NULL})
    return kwargs


def string(**kwargs: Any) -> fields.String:
    """A string field."""
    return fields.String(**_options(kwargs, "must be a string."))


# The largest integer a request may carry: JSON's safe range. Larger ones are mistakes or attacks, and they
# would break later (orjson writes no integer past 64 bits, and responses echo some request fields).
MAX_INTEGER = 2**53 - 1


class WholeNumber(fields.Integer):
    """An integer that also takes integral floats (2.0) but, unlike marshmallow's, never truncates 2.5 to 2;
    limited to JSON's safe range."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid", input=value)
        number = super()._validated(value)
        if number is not None and abs(number) > MAX_INTEGER:
            raise ValidationError(f"must be at most {MAX_INTEGER} in size.")
        return number


def integer(**kwargs: Any) -> fields.Integer:
    """An integer field (integral floats such as 2.0 are accepted, 2.5 is not)."""
    return WholeNumber(**_options(kwargs, "must be an integer."))


def number(low: float | None = None, high: float | None = None, **kwargs: Any) -> fields.Float:
    """A number field, optionally limited to the closed range [low, high]."""
    if low is not None and high is not None:
        kwargs.setdefault("validate", validate.Range(low, high, error="must be between {min} and {max}."))
    return fields.Float(**_options(kwargs, "must be a number."))


def boolean(**kwargs: Any) -> fields.Boolean:
    """A boolean field."""
    return fields.Boolean(**_options(kwargs, "must be a boolean."))


def choice(*values: str, **kwargs: Any) -> fields.String:
    """A string field limited to `values`."""
    kwargs.setdefault("validate", validate.OneOf(values, error="must be one of: {choices}."))
    return string(**kwargs)


def array(inner: fields.Field, **kwargs: Any) -> fields.List:
    """A JSON array whose items load with `inner`."""
    return fields.List(inner, **_options(kwargs, "must be an array."))


def mapping(**kwargs: Any) -> fields.Dict:
    """A free-form JSON object."""
    return fields.Dict(**_options(kwargs, "must be an object."))


def nested(schema: type[Schema], **kwargs: Any) -> fields.Nested:
    """A JSON object loaded with `schema` (whose own `error_messages` word the not-an-object case)."""
    kwargs.setdefault("allow_none", not kwargs.get("required", False))
    kwargs.setdefault("error_messages", {"null": _NULL})
    return fields.Nested(schema, **kwargs)


# ---- response bodies --------------------------------------------------------------------------


class ResponseSchema(Schema):
    """Base for response (sub)schemas: `dump` emits only declared keys, so every key the server sends is declared.

    `required=True` marks a key the server always sends, `dump_default=None` one the spec requires even when null;
    `validate()` (unknown keys rejected) checks a body against that description.
    """

    class Meta:
        unknown = RAISE


class Null(fields.Field):
    """A key the server always sends as null (e.g. `logprobs`): dumped as null when absent; only null validates."""

    default_error_messages = {"invalid": "must be null."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=True, allow_none=True, dump_default=None, **kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        raise self.make_error("invalid")


def constant(value: str) -> fields.String:
    """A required string that is always `value` (an `object` or `type` tag)."""
    return fields.String(required=True, validate=validate.Equal(value, error="must be {other!r}."))


# ---- reading a ValidationError the way OpenAI reports request errors --------------------------


def first_error(err: ValidationError) -> tuple[str | None, str]:
    """Return (param, message) for the first offending field, e.g. ("messages[1].content", "Invalid value ...").

    `param` is a path in OpenAI's notation (`a.b[2].c`); it is None when the error is about the whole body.
    """
    messages = err.messages
    if not isinstance(messages, Mapping) and err.field_name != SCHEMA:
        # A bare ValidationError("...", "field") keeps the field in `field_name`, not in the messages.
        messages = {err.field_name: messages}
    path, text = _first_leaf(messages, ())
    param = _format_path(path)
    return param, _sentence(param, text)


def _first_leaf(messages: Any, path: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], str]:
    # marshmallow nests dicts keyed by field name or list index; "_schema" carries errors of the object itself.
    if isinstance(messages, Mapping):
        if not messages:
            return path, "invalid value."
        key, value = next(iter(messages.items()))
        return _first_leaf(value, path if key == "_schema" else (*path, key))
    if isinstance(messages, list | tuple):
        return _first_leaf(messages[0], path) if messages else (path, "invalid value.")
    return path, str(messages)


def _format_path(path: tuple[str | int, ...]) -> str | None:
    parts: list[str] = []
    for key in path:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            parts.append(f".{key}" if parts else str(key))
    return "".join(parts) or None


def _sentence(param: str | None, text: str) -> str:
    if text == REQUIRED:
        return f"Missing required parameter: '{param}'." if param else "Missing required parameter."
    if param is None:
        return f"Invalid request body: {_lower_first(text)}"
    return f"Invalid value for '{param}': {_lower_first(text)}"


def _lower_first(text: str) -> str:
    # "Not a valid integer." -> "not a valid integer."; leave acronyms and names ("URL ...", "JSON ...") alone.
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text
