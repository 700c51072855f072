"""Chat Completions: `POST /v1/chat/completions` (JSON or SSE) and the caller's conversations.

`views` holds the endpoints, `chunks` the SSE stream of `chat.completion.chunk` events. The completion object
itself is built by `api.core.completion`, which the other families reuse for usage and Perplexity's extras.
"""

from .views import bp

__all__ = ["bp"]
