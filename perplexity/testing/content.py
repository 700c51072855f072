"""Deterministic answer content for the fake upstream: default answers, sources, media, questions."""

from __future__ import annotations

from typing import Any

__all__ = [
    "clarifying_content",
    "cover_note",
    "default_answer",
    "default_related",
    "default_sources",
    "default_title",
    "normalize_media",
    "normalize_source",
    "reasoning_lines",
]

# Every flag a real web_results item carries (protocol 3.7); all false for plain web hits.
_SOURCE_FLAGS = (
    "is_attachment",
    "is_image",
    "is_code_interpreter",
    "is_knowledge_card",
    "is_navigational",
    "is_widget",
    "is_focused_web",
    "is_client_context",
    "is_memory",
    "is_conversation_history",
    "is_conversation_summary",
)


def _short(query: str, limit: int = 60) -> str:
    """Return the query on one line, cut to `limit` characters."""
    text = " ".join(query.split()) or "your question"
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def search_terms(query: str) -> str:
    """Return what the fake searches for: the query's first line, cut short. Perplexity writes its own short
    search queries; it never searches for a whole prompt (an agent's tool section, a flattened history)."""
    first = next((line for line in query.splitlines() if line.strip()), query)
    return _short(first, 100)


def default_answer(query: str) -> str:
    """Return the generated markdown answer for `query`, citing sources [1] to [3]."""
    topic = _short(query, 200)
    return (
        f"Answer to: {topic}\n\n"
        "This answer comes from the fake Perplexity upstream and is the same every time [1]. "
        "A second paragraph cites another source [2].\n\n"
        "- A list item with a third citation [3].\n"
        "- A closing item without one."
    )


def default_title(query: str) -> str:
    """Return the thread title Perplexity would give a first ask: the query itself, shortened."""
    return _short(query, 100)


def default_related(query: str) -> list[str]:
    """Return three follow-up questions derived from the query."""
    topic = _short(query, 50).rstrip("?")
    return [f"What else should I know about {topic}", f"Why does {topic} matter", f"History of {topic}"]


def default_sources(count: int = 3) -> list[dict[str, Any]]:
    """Return `count` example web results at https://example.com/N."""
    return [
        normalize_source(
            {
                "name": f"Example source {n}",
                "url": f"https://example.com/{n}",
                "snippet": f"Snippet of example source {n}, used by the fake Perplexity upstream.",
                "timestamp": f"2026-01-0{n}T00:00:00" if n < 10 else "",
            }
        )
        for n in range(1, count + 1)
    ]


def normalize_source(item: dict[str, Any]) -> dict[str, Any]:
    """Return a full web_results item: the given keys plus every key a real item has."""
    url = str(item.get("url", ""))
    domain = url.split("//", 1)[-1].split("/", 1)[0]
    meta = {
        "citation_domain_name": domain.split(".")[-2] if domain.count(".") else domain,
        "client": "web",
        "images": [],
        "domain_name": domain,
        "suffix": domain.rsplit(".", 1)[-1] if "." in domain else "",
    }
    full: dict[str, Any] = {"name": item.get("title", ""), "snippet": "", "timestamp": "", "url": url}
    full.update(item)
    full["meta_data"] = {**meta, **(item.get("meta_data") or {})}
    for flag in _SOURCE_FLAGS:
        full.setdefault(flag, False)
    return full


def normalize_media(item: dict[str, Any]) -> dict[str, Any]:
    """Return a media item with the keys of the captured `media_items` (protocol 3.5)."""
    full: dict[str, Any] = {
        "medium": "image",
        "image": item.get("url", ""),
        "image_width": 1200,
        "image_height": 800,
        "url": "",
        "name": "",
        "source": "web",
    }
    full.update(item)
    full.setdefault("thumbnail", full["image"])
    return full


def reasoning_lines(query: str) -> list[str]:
    """Return the plan goal descriptions a thinking model shows while it works."""
    topic = _short(query, 50)
    return [
        f"Understanding the question about {topic}",
        "Comparing what the sources say",
        "Checking the details before answering",
    ]


def cover_note(title: str) -> str:
    """Return the short cover note Deep Research puts in ask_text next to the report."""
    return f"I've prepared a research report on {title}. The full report is below."


def clarifying_content(query: str, entry_uuid: str) -> dict[str, Any]:
    """Return a RESEARCH_CLARIFYING_QUESTIONS step content in the captured shape (protocol 3.9)."""
    topic = _short(query, 50)
    questions = [
        ("What depth do you need?", ["A broad overview (Recommended)", "A deep technical dive", "Both"]),
        ("Which time range matters?", ["The last five years (Recommended)", "All of history", "Only 2026"]),
        ("Who is the report for?", ["A general reader (Recommended)", "Specialists", "Executives"]),
    ]
    return {
        "uuid": entry_uuid,
        "questions": [{"question_text": q, "options": opts} for q, opts in questions],
        "auto_skip_seconds": 60,
        "goal_id": "1",
        "title": f"A few questions to focus the research on {topic}",
        "answers": [],
    }
