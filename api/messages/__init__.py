"""Anthropic's Messages API: `POST /v1/messages` (JSON or SSE events) and `POST /v1/messages/count_tokens`.

`views` holds the endpoints; `inputs` turns Anthropic turns and blocks into the chat-shaped body the chat core
takes; `objects` builds the `message`, its content blocks, stop reason and usage; `events` writes the event
stream in Anthropic's grammar. Claude Code and the `anthropic` SDKs use these (docs/anthropic-contract.md).
"""

from .views import bp

__all__ = ["bp"]
