"""Anthropic Messages requests as the chat-shaped body the chat core takes: turns, blocks, options.

Tool results become `tool` turns and `tool_use` blocks assistant `tool_calls`, so the agent protocol of
`api.core.tools` renders them and the thread rule keeps a Claude Code session on one Perplexity thread.
Thinking and our own web search blocks sent back in the history are dropped: they were never part of an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "ChatInput",
    "chat_input",
    "is_web_search",
    "system_text",
    "wants_thinking",
]

# Claude Code's first system block (`x-anthropic-billing-header: cc_version=...`) is attribution, not prompt:
# Anthropic strips it, and keeping it would change the conversation's text whenever Claude Code updates.
_ATTRIBUTION = "x-anthropic-billing-header:"
# Perplexity's options keep their chat names on this API too (sent as extra top-level fields).
_PERPLEXITY_OPTIONS = (
    "search_mode",
    "search_recency_filter",
    "search_domain_filter",
    "search_language_filter",
    "return_related_questions",
    "return_images",
    "disable_search",
    "citation_mode",
    "web_search_options",
    "conversation_id",
)
_DEEP_EFFORTS = ("high", "xhigh", "max")


@dataclass(frozen=True, slots=True)
class ChatInput:
    """The chat-shaped body, and for each of its messages the request field it came from."""

    chat: dict[str, Any]
    origins: list[str]


def is_web_search(tool: dict[str, Any]) -> bool:
    """True for Anthropic's web search server tool (`web_search_20250305` and later versions)."""
    return str(tool.get("type") or "").startswith("web_search")


def wants_thinking(body: dict[str, Any]) -> bool:
    """True when the request asks for thinking (enabled or adaptive, or a deep effort)."""
    thinking = (body.get("thinking") or {}).get("type")
    effort = (body.get("output_config") or {}).get("effort")
    return thinking in ("enabled", "adaptive") or (thinking != "disabled" and effort in _DEEP_EFFORTS)


def system_text(system: str | list[dict[str, Any]] | None) -> str:
    """The `system` prompt as text, without Claude Code's attribution block."""
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    texts = [block["text"] for block in system]
    if texts and texts[0].lstrip().startswith(_ATTRIBUTION):
        texts = texts[1:]
    return "\n\n".join(text for text in texts if text)


def chat_input(body: dict[str, Any], model: str) -> ChatInput:
    """The chat-shaped body of an Anthropic Messages request, to be served by `model` (a public model id)."""
    messages: list[dict[str, Any]] = []
    origins: list[str] = []
    system = system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
        origins.append("system")
    for index, message in enumerate(body["messages"]):
        for chat_message in _turn(message):
            messages.append(chat_message)
            origins.append(f"messages[{index}]")
    chat: dict[str, Any] = {key: body[key] for key in _PERPLEXITY_OPTIONS if body.get(key) is not None}
    chat.update(model=model, messages=messages)
    if body.get("max_tokens"):
        chat["max_completion_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if wants_thinking(body):
        chat["reasoning_effort"] = "high"  # the model's thinking variant, as chat's reasoning_effort picks it
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        chat["user"] = user  # narrows the caller: one Claude Code session's conversations are its own
    location = next((t.get("user_location") for t in body.get("tools") or () if is_web_search(t)), None)
    if isinstance(location, dict) and not chat.get("web_search_options"):
        chat["web_search_options"] = {"user_location": {"approximate": location}}
    return ChatInput(chat, origins)


def _turn(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results first (one `tool` turn each), then the rest."""
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        blocks: list[dict[str, Any]] = [{"type": "text", "text": content}]
    else:
        blocks = content
    if role == "assistant":
        return [_assistant(blocks)]
    out = [_tool_result(block) for block in blocks if block["type"] == "tool_result"]
    parts = [part for block in blocks if (part := _user_part(block)) is not None]
    if role == "system":  # a mid-conversation system message: kept in its place in the conversation
        parts = [{"type": "text", "text": "[system] " + _joined(parts)}] if parts else []
    if parts or not out:
        out.append({"role": "user", "content": parts})
    return out


def _assistant(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    texts = [block["text"] for block in blocks if block["type"] == "text"]
    calls = [
        {
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": orjson.dumps(block.get("input") or {}).decode()},
        }
        for block in blocks
        if block["type"] == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_result(block: dict[str, Any]) -> dict[str, Any]:
    text = _content_text(block.get("content"))
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _content_text(content: Any) -> str:
    """A tool result's content as text (images inside it cannot be sent with a follow-up, so they are named)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for block in content if isinstance(content, list) else ():
        part = _user_part(block) if isinstance(block, dict) else None
        if part is not None:
            texts.append(part["text"] if part["type"] == "text" else "(image)")
    return "\n".join(texts)


def _user_part(block: dict[str, Any]) -> dict[str, Any] | None:
    """A user block as a chat content part; None for blocks with nothing to send."""
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return _image(block.get("source") or {})
    if kind == "document":
        return _document(block)
    if kind == "search_result":
        texts = [b.get("text") or "" for b in block.get("content") or () if isinstance(b, dict)]
        head = f"{block.get('title') or ''} ({block.get('source') or ''})"
        return {"type": "text", "text": head + "\n" + "\n".join(texts)}
    return None  # tool_result (its own turn), thinking, our own search blocks, unknown types


def _image(source: dict[str, Any]) -> dict[str, Any] | None:
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
        return {"type": "image_url", "image_url": {"url": url}}
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url")}}
    return {"type": "text", "text": f"(image file: {source.get('file_id')})"}


def _document(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    title = block.get("title") or ""
    kind = source.get("type")
    if kind == "base64":
        media_type = source.get("media_type") or "application/pdf"
        filename = title or ("document.pdf" if media_type == "application/pdf" else "document")
        return {
            "type": "file",
            "file": {"file_data": f"data:{media_type};base64,{source.get('data') or ''}", "filename": filename},
        }
    if kind == "text":
        return {"type": "text", "text": "\n".join(t for t in (title, source.get("data") or "") if t)}
    if kind == "content":
        inner = source.get("content")
        return {"type": "text", "text": "\n".join(t for t in (title, _content_text(inner)) if t)}
    where = source.get("url") or source.get("file_id") or ""
    return {"type": "text", "text": f"(document: {title + ' ' if title else ''}{where})"}


def _joined(parts: list[dict[str, Any]]) -> str:
    return "\n".join(part["text"] for part in parts if part["type"] == "text")
