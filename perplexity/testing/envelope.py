"""The per-ask identity of a fake stream and the top-level keys every frame carries (protocol 3.2)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["AskContext", "envelope", "failed_frame", "now_iso", "terminal_keys", "text_json"]

_CLASSIFIER_RESULTS = {
    "personal_search": False,
    "skip_search": False,
    "widget_type": "GENERAL",
    "hide_nav": False,
    "hide_sources": False,
    "image_generation": False,
    "time_widget": False,
}


def now_iso() -> str:
    """Return the current UTC time in the ISO form the captures use."""
    return datetime.now(UTC).isoformat()


@dataclass
class AskContext:
    """Everything about one ask that the frames echo: ids, query, model, thread."""

    query: str
    model: str
    backend_uuid: str
    context_uuid: str
    frontend_uuid: str
    frontend_context_uuid: str
    read_write_token: str = field(repr=False)
    slug: str
    cursor: str
    title: str
    mode: str = "COPILOT"
    search_mode: str = "SEARCH"
    query_source: str = "home"
    attachments: list[str] = field(default_factory=list)
    author_id: str = "fake-user-0001"
    author_username: str = "fake_user"
    created_at: str = field(default_factory=now_iso)


def envelope(ctx: AskContext, *, classified: bool) -> dict[str, Any]:
    """Return the keys of a streaming PENDING frame; `read_write_token` only once classified."""
    frame: dict[str, Any] = {
        "backend_uuid": ctx.backend_uuid,
        "context_uuid": ctx.context_uuid,
        "uuid": ctx.frontend_uuid,
        "frontend_context_uuid": ctx.frontend_context_uuid,
        "display_model": ctx.model,
        "mode": ctx.mode,
        "search_focus": "internet",
        "source": "default",
        "attachments": list(ctx.attachments),
        "thread_url_slug": ctx.slug,
        "expect_search_results": "false",
        "gpt4": False,
        "text_completed": False,
        "message_mode": "STREAMING",
        "answer_modes": [],
        "reconnectable": True,
        "cursor": ctx.cursor,
        "search_mode": ctx.search_mode,
        "status": "PENDING",
        "final_sse_message": False,
    }
    if classified:
        # Real streams send the token from an early (second or third) frame on, not the first.
        frame["read_write_token"] = ctx.read_write_token
        frame["classifier_results"] = dict(_CLASSIFIER_RESULTS)
        frame["search_implementation_mode"] = "multi_step"
    return frame


def terminal_keys(ctx: AskContext, *, related: list[str], reasoning: bool) -> dict[str, Any]:
    """Return the keys only the COMPLETED frame carries (title, related queries, _extras, ...)."""
    now = now_iso()
    return {
        "frontend_uuid": ctx.frontend_uuid,
        "user_selected_model": ctx.model,
        "query_str": ctx.query,
        "thread_title": ctx.title,
        "related_queries": list(related),
        "related_query_items": [{"text": q, "type": "DEFAULT"} for q in related],
        "personalized": True,
        "updated_datetime": now.replace("+00:00", ""),
        "entry_created_datetime": ctx.created_at,
        "entry_updated_datetime": now,
        "step_type": "FINAL",
        "author_id": ctx.author_id,
        "author_username": ctx.author_username,
        "bookmark_state": "NOT_BOOKMARKED",
        "s3_social_preview_url": "https://ppl-ai-public.s3.amazonaws.com/static/img/pplx-default-preview.png",
        "thread_access": 1,
        "access_level": "PRIVATE_READ",
        "privacy_state": "NONE",
        "prompt_source": "user",
        "query_source": ctx.query_source,
        "sources": {"sources": ["web"]},
        "query_language": "en",
        "text_completed": True,
        "message_mode": "FULL",
        "reconnectable": False,
        "status": "COMPLETED",
        "final": True,
        "final_sse_message": True,
        "_extras": {
            "next": None,
            "country": "US",
            "subdomain": None,
            "pro_search_mode": "reasoning" if reasoning else "pro",
            "subscription_tier": "pro",
            "payment_tier": "paid",
            "core_elapsed": 1.5,
        },
    }


def failed_frame(ctx: AskContext, *, code: str, message: str) -> dict[str, Any]:
    """Return an in-stream failure frame: `status: FAILED`, `error_code`, message in `text`."""
    frame = envelope(ctx, classified=True)
    frame.update(
        {
            "status": "FAILED",
            "error_code": code,
            "text": message,
            "final": True,
            "final_sse_message": True,
            "message_mode": "FULL",
            "reconnectable": False,
        }
    )
    return frame


def text_json(steps: list[dict[str, Any]]) -> str:
    """Encode a step list the way the wire carries `text`: as a JSON string."""
    return json.dumps(steps, separators=(",", ":"), ensure_ascii=False)
