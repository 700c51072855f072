"""The request schema of the legacy `POST /v1/completions`: one text prompt, OpenAI's options, Perplexity's extras."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

from schemas.chat import STOP_SHAPE, StopField, StreamOptionsSchema
from schemas.common import boolean, integer, mapping, nested, number, string
from schemas.options import PerplexityOptionsSchema

__all__ = ["CompletionRequestSchema", "PromptField"]


class PromptField(fields.Field):
    """`prompt`: a string, or a list holding exactly one string; loads as that string.

    OpenAI also takes several prompts (one choice each) and token arrays. Several prompts would mean one
    Perplexity ask per prompt from a single request, and this server has no tokenizer to read token ids,
    so both get a 400 that says what to send instead.
    """

    default_error_messages = {"invalid": "must be a string or an array with one string."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            if len(value) > 1:
                raise ValidationError("only one prompt per request is supported; send one request per prompt.")
            value = value[0]
        elif isinstance(value, list) and value and all(isinstance(item, int | list) for item in value):
            raise ValidationError("token arrays are not supported; send the prompt as text.")
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if not value.strip():
            raise ValidationError("must not be empty.")
        return value


def _no_suffix(value: str | None) -> None:
    # `suffix` is fill-in-the-middle context, not text to append (the seed server's bug). A search assistant
    # cannot be made to fill a gap reliably, so a non-empty suffix is refused rather than quietly ignored.
    if value:
        raise ValidationError("fill-in-the-middle ('suffix') is not supported by this server; send the prompt alone.")


def _only_one(name: str) -> Any:
    def check(value: int | None) -> None:
        if value is not None and value != 1:
            raise ValidationError(f"only {name}=1 is supported by this server (it returns a single choice).")

    return check


class CompletionRequestSchema(PerplexityOptionsSchema):
    """`POST /v1/completions`; unknown fields are kept, as in chat."""

    model = string(required=True)
    prompt = PromptField(
        required=True,
        metadata={
            "any_of": (
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1},
            )
        },
    )
    suffix = string(validate=_no_suffix)
    # No default of 16 as in OpenAI's spec: an unset max_tokens means the whole answer (see api/legacy.py).
    max_tokens = integer(validate=validate.Range(min=1, error="must be at least {min}."))
    stream = boolean(load_default=False)
    stream_options = nested(StreamOptionsSchema)
    echo = boolean(load_default=False)
    stop = StopField(allow_none=True, metadata=STOP_SHAPE)
    n = integer(validate=_only_one("n"))
    best_of = integer(validate=_only_one("best_of"))
    # Sampling knobs cannot reach Perplexity; they are range-checked like OpenAI does, then ignored.
    temperature = number(0, 2)
    top_p = number(0, 1)
    presence_penalty = number(-2, 2)
    frequency_penalty = number(-2, 2)
    logit_bias = mapping()
    # Log probabilities are not available from Perplexity; a request for them gets `logprobs: null`.
    logprobs = integer(validate=validate.Range(0, 5, error="must be between {min} and {max}."))
    seed = integer()
    user = string()
