"""marshmallow schemas for the OpenAI wire format; only the HTTP layer (`api/`) imports them."""

from schemas.chat import ChatCompletionRequestSchema
from schemas.chat_response import ChatCompletionChunkSchema, ChatCompletionSchema
from schemas.common import first_error
from schemas.conversations import ConversationDeletedSchema, ConversationListSchema, ConversationSchema
from schemas.errors import ErrorResponseSchema, ErrorSchema
from schemas.models import ModelListSchema, ModelSchema

__all__ = [
    "ChatCompletionChunkSchema",
    "ChatCompletionRequestSchema",
    "ChatCompletionSchema",
    "ConversationDeletedSchema",
    "ConversationListSchema",
    "ConversationSchema",
    "ErrorResponseSchema",
    "ErrorSchema",
    "ModelListSchema",
    "ModelSchema",
    "first_error",
]
