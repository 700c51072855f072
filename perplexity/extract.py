"""Pure readers that pull answer text, sources, media and reasoning out of Perplexity frames and blocks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from .types import ClarifyingQuestion, ClarifyingQuestions, MediaItem, Source

try:  # orjson is much faster on the multi-KB frames; the stdlib is the fallback.
    import orjson

    loads = orjson.loads
    dumps_json = orjson.dumps
    JSONDecodeError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    loads = json.loads
    JSONDecodeError = (ValueError,)

    def dumps_json(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


__all__ = [
    "JSONDecodeError",
    "clarifying_from_step",
    "decode_text",
    "dumps_json",
    "final_answer_from_steps",
    "loads",
    "markdown_text",
    "parse_media",
    "parse_sources",
    "research_report",
    "step_reasoning",
    "workflow_answer",
    "workflow_items",
]


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_source(item: Any) -> Source | None:
    """Turn one `web_results` item into a Source (None when it has no URL)."""
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("web_result"), dict):  # sources_mode_block rows wrap the result
        item = item["web_result"]
    url = _str(item.get("url"))
    if not url:
        return None
    meta = item.get("meta_data") if isinstance(item.get("meta_data"), dict) else {}
    date = meta.get("published_date") or meta.get("date") or item.get("timestamp") or None
    return Source(
        title=_str(item.get("name")) or _str(item.get("title")) or url,
        url=url,
        snippet=_str(item.get("snippet")),
        date=date if isinstance(date, str) and date else None,
        is_attachment=bool(item.get("is_attachment")),
    )


def parse_sources(items: Any) -> tuple[Source, ...]:
    """Parse a `web_results` list, skipping items without a URL."""
    if not isinstance(items, list):
        return ()
    return tuple(s for s in map(parse_source, items) if s is not None)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_media(items: Any) -> tuple[MediaItem, ...]:
    """Parse `media_items` (images and videos); `image` is the picture, `url` the page it came from."""
    if not isinstance(items, list):
        return ()
    media = []
    for item in items:
        if not isinstance(item, dict):
            continue
        picture = _str(item.get("image")) or _str(item.get("url"))
        if not picture:
            continue
        page = _str(item.get("url")) if item.get("image") else _str(item.get("source_url"))
        media.append(
            MediaItem(
                url=picture,
                medium=_str(item.get("medium")) or "image",
                title=_str(item.get("name")) or _str(item.get("title")),
                origin_url=page or None,
                width=_int(item.get("image_width")),
                height=_int(item.get("image_height")),
            )
        )
    return tuple(media)


def decode_text(text: Any) -> list[dict[str, Any]] | dict[str, Any] | str | None:
    """Decode the frame's `text`: a step list, an old single answer object, or a plain answer string."""
    if isinstance(text, list):  # already decoded (client re-serializations in captures)
        return [s for s in text if isinstance(s, dict)]
    if not isinstance(text, str) or not text:
        return None
    try:
        value = loads(text)
    except JSONDecodeError:
        return text  # since 2026-02 `text` is sometimes the answer itself
    if isinstance(value, list):
        return [s for s in value if isinstance(s, dict)]
    if isinstance(value, dict | str):
        return value
    return text


def _answer_payload(content: Any) -> tuple[str | None, Any]:
    """Read `content.answer` of a FINAL-like step: a JSON string, an object or plain text."""
    answer = content.get("answer") if isinstance(content, dict) else content
    if isinstance(answer, str):
        try:
            inner = loads(answer)
        except JSONDecodeError:
            return answer, None
        answer = inner
    if isinstance(answer, dict):
        text = answer.get("answer")
        return (text if isinstance(text, str) else None), answer.get("web_results")
    if isinstance(answer, str):
        return answer, None
    return None, None


def final_answer_from_steps(steps: list[dict[str, Any]]) -> tuple[str | None, Any]:
    """The answer text and its web_results from the last FINAL (or RESEARCH_ANSWER) step."""
    for step in reversed(steps):
        if step.get("step_type") in ("FINAL", "RESEARCH_ANSWER"):
            return _answer_payload(step.get("content"))
    return None, None


def markdown_text(doc: dict[str, Any]) -> str | None:
    """The answer in a `markdown_block`: the terminal `answer` once DONE, else the chunk join."""
    answer = doc.get("answer")
    if isinstance(answer, str) and answer and doc.get("progress") == "DONE":
        return answer
    chunks = doc.get("chunks")
    if isinstance(chunks, list) and chunks:
        return "".join(c for c in chunks if isinstance(c, str))
    return answer if isinstance(answer, str) and answer else None


def workflow_items(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every item of every step of a `workflow_block`, in order."""
    steps = doc.get("steps")
    for step in steps if isinstance(steps, list) else ():
        items = step.get("items") if isinstance(step, dict) else None
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict):
                yield item


def text_payload(item: dict[str, Any]) -> tuple[str, str]:
    """(variant, text so far) of a WORKFLOW_ITEM_TEXT item; `text` wins over the chunk join once set."""
    payload = item.get("payload") if isinstance(item.get("payload"), dict) else {}
    text = payload.get("text_payload") if isinstance(payload.get("text_payload"), dict) else {}
    variant = _str(item.get("variant")) or _str(text.get("variant")) or "answer"
    full = text.get("text")
    if isinstance(full, str) and full:
        return variant, full
    chunks = text.get("chunks")
    joined = "".join(c for c in chunks if isinstance(c, str)) if isinstance(chunks, list) else ""
    return variant, joined


def workflow_answer(doc: dict[str, Any]) -> str | None:
    """The answer of a `workflow_block`: all `answer` text items, in order, blank-line separated."""
    parts = [
        text
        for item in workflow_items(doc)
        if item.get("type") == "WORKFLOW_ITEM_TEXT"
        for variant, text in [text_payload(item)]
        if variant == "answer" and text
    ]
    return "\n\n".join(parts) if parts else None


def workflow_sources(doc: dict[str, Any]) -> list[Any]:
    """Raw source items of all WORKFLOW_ITEM_SOURCES items."""
    found: list[Any] = []
    for item in workflow_items(doc):
        if item.get("type") == "WORKFLOW_ITEM_SOURCES":
            payload = (item.get("payload") or {}).get("sources_payload") or {}
            if isinstance(payload.get("sources"), list):
                found.extend(payload["sources"])
    return found


def _walk_reports(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 12:
        return
    if isinstance(value, dict):
        report = value.get("research_report")
        if isinstance(report, dict) and isinstance(report.get("source_content"), str):
            yield report["source_content"]
        for child in value.values():
            if isinstance(child, dict | list):
                yield from _walk_reports(child, depth + 1)
    elif isinstance(value, list):
        for child in value:
            yield from _walk_reports(child, depth + 1)


def research_report(docs: Iterable[Any]) -> str | None:
    """The Deep Research report body (`.../research_report/source_content`), first found in `docs`."""
    for doc in docs:
        for report in _walk_reports(doc):
            if report:
                return report
    return None


def step_reasoning(step: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(dedupe key, reasoning line) pairs for one plan step, from the text list or a plan_block."""
    kind = step.get("step_type")
    content = step.get("content")
    if not isinstance(content, dict):  # plan_block steps use typed keys, e.g. search_web_content
        content = next((v for k, v in step.items() if k.endswith("_content") and isinstance(v, dict)), {})
    if kind == "SEARCH_WEB":
        for query in content.get("queries") or ():
            text = _str(query.get("query")) if isinstance(query, dict) else _str(query)
            if text:
                yield f"q:{text}", f"Searching the web: {text}"
    elif kind == "URL_NAVIGATE":
        for url in content.get("urls") or ():
            url = _str(url.get("url")) if isinstance(url, dict) else _str(url)
            if url:
                yield f"u:{url}", f"Reading {url}"
    elif kind == "THOUGHT":
        thought = _str(content.get("thought")) or _str(content.get("text")) or _str(content.get("content"))
        if thought:
            yield f"t:{step.get('uuid') or thought}", thought


def clarifying_from_step(step: dict[str, Any]) -> ClarifyingQuestions | None:
    """Read a RESEARCH_CLARIFYING_QUESTIONS step (new dict questions, or older plain strings)."""
    content = step.get("content")
    if step.get("step_type") != "RESEARCH_CLARIFYING_QUESTIONS" or not isinstance(content, dict):
        return None
    raw = content.get("questions") or content.get("clarifying_questions") or []
    questions = []
    for q in raw if isinstance(raw, list) else ():
        if isinstance(q, str):
            questions.append(ClarifyingQuestion(question=q))
        elif isinstance(q, dict):
            options = tuple(o for o in q.get("options") or () if isinstance(o, str))
            text = _str(q.get("question_text")) or _str(q.get("question"))
            questions.append(ClarifyingQuestion(text, options))
    skip = content.get("auto_skip_seconds")
    return ClarifyingQuestions(
        title=_str(content.get("title")),
        questions=tuple(questions),
        auto_skip_seconds=float(skip) if isinstance(skip, int | float) else None,
    )
