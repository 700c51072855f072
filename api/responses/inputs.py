"""Responses API input: items as chat messages for the chat core, and as the `input_items` a stored response lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..stores.records import StoredResponse
from .objects import new_id, output_text

__all__ = ["ResponseInput", "chain_history", "read_input", "stored_items"]

_INSTRUCTION_ROLES = ("system", "developer")
_INLINE_FIELDS = {"input_image": "image_url", "input_file": "file_data"}  # where a part's inline bytes travel


@dataclass(frozen=True, slots=True)
class ResponseInput:
    """Chat messages for `ChatService.prepare`, and for each message the request field it came from."""

    messages: list[dict[str, Any]]
    origins: list[str]


def read_input(body: dict[str, Any], history: list[dict[str, Any]]) -> ResponseInput:
    """Instructions (as the system message), the history of earlier responses, then this request's input."""
    messages: list[dict[str, Any]] = []
    origins: list[str] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
        origins.append("instructions")
    messages += history
    origins += ["previous_response_id"] * len(history)
    for index, item in enumerate(body["input"]):
        message = item_message(item, text_only=False)
        if message is not None and not _merged(messages, message):
            messages.append(message)
            origins.append(f"input[{index}]")
    return ResponseInput(messages, origins)


def _merged(messages: list[dict[str, Any]], message: dict[str, Any]) -> bool:
    """Fold a call into the assistant message before it: the calls of one turn arrive as one item each, but
    are one assistant turn (as chat sends them and as the answer that made them is remembered)."""
    previous = messages[-1] if messages else None
    if not message.get("tool_calls") or previous is None or previous["role"] != "assistant":
        return False
    previous["tool_calls"] = [*(previous.get("tool_calls") or ()), *message["tool_calls"]]
    return True


def chain_history(chain: list[StoredResponse]) -> list[dict[str, Any]]:
    """The text of a chain of stored responses (oldest first, see `Continuity.response_chain`) as chat messages,
    without their instructions: the history a new thread starts from when the previous one is gone."""
    messages = []
    for record in chain:
        for item in [*record.input_items, *record.response.get("output", ())]:
            message = None if item.get("role") in _INSTRUCTION_ROLES else item_message(item, text_only=True)
            if message is not None and not _merged(messages, message):
                messages.append(message)
    return messages


# ---- items -> chat messages ---------------------------------------------------------------------


def item_message(item: dict[str, Any], *, text_only: bool) -> dict[str, Any] | None:
    """One input item as a chat message; None for items that carry nothing to send (reasoning)."""
    kind = item.get("type") or "message"
    if kind == "message":
        return {"role": item["role"], "content": _chat_content(item["content"], text_only)}
    if kind == "function_call":
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "custom_tool_call":
        call = {"id": item["call_id"], "type": "custom", "custom": {"name": item["name"], "input": item["input"]}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind in ("function_call_output", "custom_tool_call_output"):
        return {"role": "tool", "tool_call_id": item["call_id"], "content": _chat_content(item["output"], text_only)}
    return None


def _chat_content(content: str | list[dict[str, Any]], text_only: bool) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = [_chat_part(part, text_only) for part in content]
    return [part for part in parts if part is not None]


def _chat_part(part: dict[str, Any], text_only: bool) -> dict[str, Any] | None:
    # Text parts pass as they are: the chat core reads input_text, output_text and refusal parts itself.
    kind = part["type"]
    if kind in ("input_text", "output_text", "refusal"):
        return part
    if text_only:
        return None  # history: files were uploaded with their own turn, not again on every follow-up
    if kind == "input_image" and part.get("image_url"):
        return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail") or "auto"}}
    if part.get("file_url"):
        return {"type": "input_text", "text": f"(file: {part['file_url']})"}
    # Inline file data uploads; a file id has nothing to upload and the chat core says so (400).
    file = {key: part[key] for key in ("file_data", "file_id", "filename") if part.get(key)}
    return {"type": "file", "file": file}


# ---- items -> stored input_items ----------------------------------------------------------------


def stored_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This request's input items as the list `GET /v1/responses/{id}/input_items` returns (each with an id).

    Inline file bytes are not kept: they were uploaded with this turn, and a replayed history is text only
    (`chain_history`). An inline image is listed with `image_url: null`, an inline file without its `file_data`,
    each with `omitted_data` ({media_type, bytes}) saying what was sent; URLs, ids and text are kept as sent.
    """
    return [_stored_item(item) for item in items]


def _stored_item(item: dict[str, Any]) -> dict[str, Any]:
    kind = item["type"]
    if kind == "message":
        # Assistant turns are listed as output messages (the spec's input message has no assistant role).
        shape = _output_part if item["role"] == "assistant" else _input_part
        content = [shape(part) for part in _parts(item["content"])]
        item_id = item.get("id") or new_id("msg")
        return {"id": item_id, "type": "message", "role": item["role"], "status": "completed", "content": content}
    prefix = {
        "function_call": "fc",
        "function_call_output": "fco",
        "custom_tool_call": "ctc",
        "custom_tool_call_output": "ctco",
        "reasoning": "rs",
        "web_search_call": "ws",
    }[kind]
    stored = {**item, "id": item.get("id") or new_id(prefix)}
    if isinstance(item.get("output"), list):  # a tool's output may carry images and files too
        stored["output"] = [_compact(part) for part in item["output"]]
    if kind == "reasoning":
        stored["summary"] = item.get("summary") or []
    elif kind == "web_search_call":
        stored.setdefault("action", {"type": "search"})
        stored["status"] = item.get("status") or "completed"
    else:
        stored["status"] = item.get("status") or "completed"
    return stored


def _parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "input_text", "text": content}] if isinstance(content, str) else content


def _input_part(part: dict[str, Any]) -> dict[str, Any]:
    # The spec's input_image requires `detail`; OpenAI fills in "auto" when the request left it out.
    part = _compact(part)
    return {**part, "detail": part.get("detail") or "auto"} if part["type"] == "input_image" else part


def _compact(part: dict[str, Any]) -> dict[str, Any]:
    """An image or file part without its inline data (see `stored_items`); any other part as it is."""
    field = _INLINE_FIELDS.get(part.get("type", ""))
    data = part.get(field) if field else None
    # An image URL is kept unless it is inline data; file_data is always inline (a data: URI or bare base64).
    if not isinstance(data, str) or (field == "image_url" and not data.startswith("data:")):
        return part
    header, _, payload = data.partition(",") if data.startswith("data:") else ("", "", data)
    encoded = header.endswith(";base64") or not header
    size = len(payload) * 3 // 4 - payload[-2:].count("=") if encoded else len(payload)
    compact = {key: value for key, value in part.items() if key != "file_data"}
    if field == "image_url":
        compact["image_url"] = None
    compact["omitted_data"] = {"media_type": header[5:].split(";")[0] or None, "bytes": size}
    return compact


def _output_part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "refusal":
        return part
    return output_text(part["text"], list(part.get("annotations") or []))
