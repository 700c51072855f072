"""The Responses API: `POST /v1/responses` on the chat core, and the caller's stored responses.

`views` holds the endpoints; `inputs` turns input items into chat messages (and into the stored `input_items`);
`objects` builds the `response` and its output items; `events` writes the numbered SSE event sequence.
"""

from .views import bp

__all__ = ["bp"]
