"""Canned account data of the fake upstream: session user, model catalogue (v1/v2), quotas, settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "AGENTIC_COMPARE_MODELS",
    "DEFAULT_MODELS",
    "DEFAULT_QUOTA",
    "FAKE_USER",
    "MODELS",
    "models_config",
    "rate_limit_status",
    "session_body",
    "user_settings",
]

FAKE_USER: dict[str, Any] = {
    "id": "fake-user-0001",
    "email": "tester@example.com",
    "name": "Fake Tester",
    "image": None,
    "username": "fake_user",
    "subscription_status": "active",
    "subscription_tier": "pro",
    "subscription_source": "stripe",
    "payment_tier": "paid",
    "org_role": None,
    "org_uuid": None,
}

# mode -> remaining in the `/rest/rate-limit/status` table of an account whose quota no test has set
# (None: `{"kind": "not_provided"}`, Pro's unmetered answer).
DEFAULT_QUOTA: dict[str, int | None] = {"pro_search": None, "research": 20, "agentic_research": 5, "labs": 50}

# id -> (label, mode, provider, description); a realistic 2026 slice (protocol section 4).
MODELS: dict[str, tuple[str, str, str, str]] = {
    "turbo": ("Best", "search", "PERPLEXITY", "Picks the best model for each query"),
    "pplx_pro": ("Best", "search", "PERPLEXITY", "Picks the best model for each query (Pro)"),
    "experimental": ("Sonar", "search", "PERPLEXITY", "Perplexity's fast in-house model"),
    "gpt55": ("GPT-5.5", "search", "OPENAI", "OpenAI's latest model"),
    "gpt55_thinking": ("GPT-5.5 Thinking", "search", "OPENAI", "OpenAI's latest model, with reasoning"),
    "claude50sonnet": ("Claude Sonnet 5", "search", "ANTHROPIC", "Anthropic's balanced model"),
    "claude50sonnetthinking": ("Claude Sonnet 5 Thinking", "search", "ANTHROPIC", "With reasoning"),
    "claude48opus": ("Claude Opus 4.8", "search", "ANTHROPIC", "Anthropic's most capable model"),
    "claude48opusthinking": ("Claude Opus 4.8 Thinking", "search", "ANTHROPIC", "With reasoning"),
    "gemini31pro_high": ("Gemini 3.1 Pro", "search", "GOOGLE", "Google's latest model, with reasoning"),
    "grok4": ("Grok 4", "search", "XAI", "xAI's latest model"),
    "kimik26thinking": ("Kimi K2.6 Thinking", "search", "MOONSHOT", "Moonshot's open model, with reasoning"),
    "pplx_internal_eval": ("Internal eval", "search", "PERPLEXITY", "Hidden internal model"),
    "pplx_alpha": ("Deep Research", "research", "PERPLEXITY", "In-depth reports on complex topics"),
    "pplx_agentic_research": ("Model Council", "agentic_research", "PERPLEXITY", "Three models, one answer"),
    "pplx_beta": ("Labs", "studio", "PERPLEXITY", "Build reports, dashboards and apps"),
    "pplx_study": ("Study", "study", "PERPLEXITY", "Learn step by step"),
    "pplx_document_review": ("Document review", "document_review", "PERPLEXITY", "Review long documents"),
    "comet_browser_agent_sonnet": ("Browser agent", "browser_agent", "ANTHROPIC", "Acts in a browser"),
    "pplx_asi": ("Computer", "asi", "PERPLEXITY", "Long-running agent tasks"),
}

# (label, subscription tier, non-reasoning id, reasoning id, audience, is_default, has_new_tag)
_SEARCH_ROWS: list[tuple[str, str, str | None, str | None, str, bool, bool]] = [
    ("Best", "pro", "pplx_pro", None, "all", True, False),
    ("Sonar", "pro", "experimental", None, "all", False, False),
    ("GPT-5.5", "pro", "gpt55", "gpt55_thinking", "all", False, False),
    ("Claude Sonnet 5", "pro", "claude50sonnet", "claude50sonnetthinking", "all", False, True),
    ("Claude Opus 4.8", "max", "claude48opus", "claude48opusthinking", "all", False, False),
    ("Gemini 3.1 Pro", "pro", None, "gemini31pro_high", "all", False, False),
    ("Grok 4", "pro", "grok4", None, "all", False, False),
    ("Kimi K2.6", "pro", None, "kimik26thinking", "all", False, False),
    ("Internal eval", "pro", "pplx_internal_eval", None, "internal", False, False),
]

DEFAULT_MODELS = {
    "search": "pplx_pro",
    "research": "pplx_alpha",
    "agentic_research": "pplx_agentic_research",
    "studio": "pplx_beta",
    "study": "pplx_study",
    "document_review": "pplx_document_review",
    "browser_agent": "comet_browser_agent_sonnet",
    "asi": "pplx_asi",
}
AGENTIC_COMPARE_MODELS = ["gpt55_thinking", "claude48opusthinking", "gemini31pro_high"]


def session_body(valid: bool) -> dict[str, Any]:
    """Return the `/api/auth/session` body: the user when logged in, `{}` when not (HTTP 200 both)."""
    if not valid:
        return {}
    expires = datetime.now(UTC) + timedelta(days=30)
    return {"user": dict(FAKE_USER), "expires": expires.isoformat().replace("+00:00", "Z")}


def _model_entries(with_provider: bool) -> dict[str, dict[str, Any]]:
    entries = {}
    for model_id, (label, mode, provider, description) in MODELS.items():
        entry: dict[str, Any] = {"label": label, "description": description, "mode": mode}
        if with_provider:
            entry["provider"] = provider
        entries[model_id] = entry
    return entries


def _v1_rows() -> list[dict[str, Any]]:
    return [
        {
            "label": label,
            "description": f"{label} on Perplexity",
            "subheading": None,
            "has_new_tag": new,
            "subscription_tier": tier,
            "non_reasoning_model": plain,
            "reasoning_model": thinking,
            "text_only_model": False,
            "audience": audience,
            "is_default": default,
        }
        for label, tier, plain, thinking, audience, default, new in _SEARCH_ROWS
    ]


def _v2_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"label": "Best", "subscription_tier": "free", "model": "turbo"}]
    for label, tier, plain, thinking, audience, _default, _new in _SEARCH_ROWS:
        if audience == "internal":
            continue
        row: dict[str, Any] = {"label": label, "subscription_tier": tier}
        row.update(non_reasoning_model=plain, reasoning_model=thinking)
        if label == "Best":
            row.update(model="pplx_pro", fast_model="turbo")
        rows.append(row)
    return rows


def models_config(schema: str) -> dict[str, Any]:
    """Return `/rest/models/config` in schema "v1" or "v2" (protocol 2.5)."""
    if schema == "v2":
        return {
            "config_schema": "v2",
            "models": _model_entries(with_provider=True),
            "default_models": dict(DEFAULT_MODELS),
            "search_config": _v2_rows(),
            "computer_config": [{"label": "Computer", "subscription_tier": "max", "model": "pplx_asi"}],
            "agentic_research_compare_models": list(AGENTIC_COMPARE_MODELS),
        }
    if schema != "v1":
        raise ValueError(f"unknown models schema {schema!r}")
    return {
        "config_schema": "v1",
        "models": _model_entries(with_provider=True),
        "config": _v1_rows(),
        "default_models": dict(DEFAULT_MODELS),
        "agentic_research_compare_models": list(AGENTIC_COMPARE_MODELS),
    }


def rate_limit_status(valid: bool, remaining: dict[str, int | None] | None = None) -> dict[str, Any]:
    """Return `/rest/rate-limit/status` for mode -> remaining (default DEFAULT_QUOTA); an invalid session
    looks exhausted (protocol 2.7)."""
    counts = {**DEFAULT_QUOTA, **(remaining or {})}

    def entry(remaining: int | None) -> dict[str, Any]:
        if not valid:
            return {"available": False, "remaining_detail": {"kind": "exact", "remaining": 0}}
        if remaining is None:
            return {"available": True, "remaining_detail": {"kind": "not_provided"}}
        return {"available": remaining > 0, "remaining_detail": {"kind": "exact", "remaining": remaining}}

    return {
        "free_queries": entry(None),
        "modes": {
            "pro_search": entry(counts["pro_search"]),
            "research": entry(counts["research"]),
            "agentic_research": entry(counts["agentic_research"]),
            "labs": entry(counts["labs"]),
        },
        "sources": {"scholar": entry(None), "social": entry(None), "finance": entry(None)},
    }


def user_settings(query_count: int, tier: str = "pro") -> dict[str, Any]:
    """Return a small `/rest/user/settings` object with `default_model`."""
    paid = tier != "free"
    return {
        "default_model": "turbo",
        "default_image_generation_model": "default",
        "subscription_status": "active" if paid else "none",
        "subscription_source": "stripe" if paid else "none",
        "subscription_tier": tier,
        "query_count": query_count,
        "query_count_copilot": query_count,
        "disable_training": True,
        "time_zone": "UTC",
        "device_language": "en-US",
        "is_verified": True,
        "connector_limits": {"max_attachment_file_size_mb": 50, "daily_attachment_limit": 100},
    }
