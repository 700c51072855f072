"""Read OpenAI chat messages: plain text per turn, attachments to upload, and the flattened Perplexity query."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .errors import APIError
from .tools import call_text, tool_result_text

__all__ = ["Attachment", "Transcript", "flatten_query", "locate_error", "read_messages"]

_MESSAGES_PARAM = re.compile(r"^messages(?:\[(\d+)\])?(.*)$")
_DATA_URI = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[^,]*)?;base64,(?P<data>.*)$", re.S)
# Reasoning a client echoes back inside an assistant turn (Open WebUI, pydantic-ai and others wrap it so): it
# was never part of the answer, so it is dropped, and the turn matches the answer remembered for its thread.
_THINK = re.compile(r"<think>.*?</think>\s*", re.S)
_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "tool": "Tool result", "function": "Tool result"}


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file a message carried inline, to upload before asking."""

    filename: str
    content: bytes
    content_type: str | None


@dataclass(slots=True)
class Transcript:
    """The conversation as text: system instructions and (role, text) turns, plus inline files."""

    system: str = ""
    turns: list[tuple[str, str]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)

    def keyed_turns(self) -> list[tuple[str, str]]:
        """Turns that identify the conversation, the system text first."""
        return ([("system", self.system)] if self.system else []) + self.turns


def _decode_data_uri(uri: str, param: str) -> tuple[bytes, str | None]:
    match = _DATA_URI.match(uri)
    if not match:
        raise APIError(400, "Only base64 data: URIs are accepted for inline files.", code="invalid_value", param=param)
    try:
        return base64.b64decode(match.group("data"), validate=False), match.group("type")
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, "The inline file is not valid base64.", code="invalid_value", param=param) from exc


def _part_text(part: dict[str, Any], transcript: Transcript, param: str) -> str:
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text"):
        return str(part.get("text") or "")
    if kind == "refusal":
        return str(part.get("refusal") or "")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if isinstance(url, str) and url.startswith("data:"):
            content, ctype = _decode_data_uri(url, f"{param}.image_url")
            ext = (ctype or "image/png").split("/")[-1]
            transcript.attachments.append(Attachment(f"image-{len(transcript.attachments) + 1}.{ext}", content, ctype))
            return ""
        return f"(image: {url})" if isinstance(url, str) else ""
    if kind == "file":
        file = part.get("file") or {}
        data = file.get("file_data")
        if isinstance(data, str) and data:
            content, ctype = (
                _decode_data_uri(data, f"{param}.file.file_data")
                if data.startswith("data:")
                else (_b64(data, f"{param}.file.file_data"), None)
            )
            name = str(file.get("filename") or f"file-{len(transcript.attachments) + 1}")
            transcript.attachments.append(Attachment(name, content, ctype))
            return ""
        raise APIError(400, "File parts need inline file_data; file ids are not supported.", param=param)
    if kind == "input_audio":
        raise APIError(400, "Audio input is not supported.", code="unsupported_value", param=param)
    return ""


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, "The inline file is not valid base64.", code="invalid_value", param=param) from exc


def _content_text(content: Any, transcript: Transcript, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = [
        _part_text(part, transcript, f"{param}[{index}]")
        for index, part in enumerate(content)
        if isinstance(part, dict)
    ]
    return "\n".join(t for t in texts if t)


def _tool_calls_text(message: dict[str, Any], names: dict[str, str]) -> str:
    """An assistant turn's calls in the canonical form the model is asked to use (see `core.tools`); `names`
    learns each call's tool name so its result can be labelled."""
    calls = message.get("tool_calls") or []
    blocks = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        custom = call.get("custom") if isinstance(call, dict) else None
        if isinstance(function, dict):
            name, arguments = str(function.get("name") or ""), str(function.get("arguments") or "{}")
        elif isinstance(custom, dict):  # a freeform tool's call: its text is the argument `input`
            name, arguments = str(custom.get("name") or ""), orjson.dumps({"input": str(custom.get("input") or "")})
        else:
            continue
        if call.get("id"):
            names[str(call["id"])] = name
        blocks.append(call_text(name, arguments if isinstance(arguments, str) else arguments.decode()))
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        blocks.append(call_text(str(legacy.get("name") or ""), str(legacy.get("arguments") or "{}")))
    return "\n".join(blocks)


def read_messages(messages: list[dict[str, Any]]) -> Transcript:
    """Split messages into system text and turns; inline images and files become attachments."""
    transcript = Transcript()
    system: list[str] = []
    names: dict[str, str] = {}  # tool_call_id -> tool name, from the assistant turns so far
    for index, message in enumerate(messages):
        role = message.get("role")
        text = _content_text(message.get("content"), transcript, f"messages[{index}].content").strip()
        if role in ("system", "developer"):  # developer is the newer name for system
            if text:
                system.append(text)
            continue
        if role == "assistant":
            text = _THINK.sub("", text).strip() if "<think>" in text else text
            text = "\n".join(t for t in (text, _tool_calls_text(message, names)) if t)
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id")
            name = message.get("name") or names.get(str(call_id)) if call_id or message.get("name") else None
            text = tool_result_text(name, call_id, text)
        transcript.turns.append((str(role), text))
    transcript.system = "\n\n".join(system)
    if not transcript.turns or transcript.turns[-1][0] not in ("user", "tool", "function"):
        raise APIError(400, "The last message must be a user (or tool) message.", param="messages")
    if not transcript.turns[-1][1] and not transcript.attachments:
        raise APIError(400, "The last message has no text.", param=f"messages[{len(messages) - 1}].content")
    return transcript


def flatten_query(transcript: Transcript) -> str:
    """One Perplexity query for a new thread: instructions, earlier turns, then the question."""
    question = transcript.turns[-1][1]
    history = transcript.turns[:-1]
    if not transcript.system and not history:
        return question
    parts = []
    if transcript.system:
        parts.append(f"Instructions: {transcript.system}")
    if history:
        lines = [f"{_ROLE_NAMES.get(role, role.title())}: {text}" for role, text in history if text]
        parts.append("Conversation so far:\n" + "\n\n".join(lines))
    parts.append(f"Question: {question}")
    return "\n\n".join(parts)


def locate_error(error: APIError, origins: list[str], whole: str = "input") -> APIError:
    """Point a chat-core error about `messages[i]…` at the request field that message came from (`origins[i]`:
    the Responses API's `input[j]`, the Messages API's `messages[j]`, ...); `whole` names the field when it
    cannot say which."""
    match = _MESSAGES_PARAM.match(error.param or "")
    if match is None:
        return error
    index, rest = match.groups()
    if index is None or int(index) >= len(origins):
        return replace(error, param=whole)
    return replace(error, param=origins[int(index)] + rest)
