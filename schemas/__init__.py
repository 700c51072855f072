"""marshmallow schemas for the OpenAI wire format; only the HTTP layer (`api/`) imports them."""

from schemas.chat import ChatCompletionRequestSchema
from schemas.common import first_error
from schemas.errors import ErrorResponseSchema, ErrorSchema

__all__ = ["ChatCompletionRequestSchema", "ErrorResponseSchema", "ErrorSchema", "first_error"]
