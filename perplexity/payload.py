"""Build the JSON body of `POST /rest/sse/perplexity_ask` from a query and AskOptions."""

from __future__ import annotations

from typing import Any

from .types import AskOptions

__all__ = ["API_VERSION", "SOURCE_IDS", "SUPPORTED_BLOCK_USE_CASES", "build_ask_payload"]

API_VERSION = "2.18"

# User-facing source names -> Perplexity ids. `finance` follows CT (2026-09), the newest source.
SOURCE_IDS = {"web": "web", "scholar": "scholar", "social": "social", "finance": "finance"}

# The block catalogue we can read. Diff blocks keep frames small; workflow_* would move the answer
# into workflow_root, which we read too, but the ask_text form streams finer-grained (AK 2026-09).
SUPPORTED_BLOCK_USE_CASES = (
    "answer_modes",
    "media_items",
    "knowledge_cards",
    "inline_entity_cards",
    "place_widgets",
    "finance_widgets",
    "sports_widgets",
    "news_widgets",
    "shopping_widgets",
    "search_result_widgets",
    "inline_images",
    "inline_assets",
    "placeholder_cards",
    "diff_blocks",
    "inline_knowledge_cards",
    "entity_group_v2",
    "refinement_filters",
    "answer_tabs",
    "preserve_latex",
    "in_context_suggestions",
    "pending_followups",
)


def build_ask_payload(query: str, options: AskOptions, frontend_uuid: str) -> dict[str, Any]:
    """Return the ask body: first-message fields for a new thread, follow-up fields otherwise."""
    params: dict[str, Any] = {
        "version": API_VERSION,
        "source": "default",
        "language": options.language,
        "timezone": options.timezone,
        "search_focus": options.search_focus,
        "sources": [SOURCE_IDS[s] for s in options.sources] if options.search_focus != "writing" else [],
        "search_recency_filter": options.recency.upper() if options.recency else None,
        "model_preference": options.model,
        "mode": options.mode or "copilot",  # the model, not the mode, selects behaviour (AK 2026-06)
        "is_incognito": options.incognito,
        "attachments": list(options.attachments),
        "frontend_uuid": frontend_uuid,
        "prompt_source": "user",
        "is_related_query": False,
        "is_sponsored": False,
        "use_schematized_api": True,
        "send_back_text_in_streaming_api": False,
        "supported_block_use_cases": list(SUPPORTED_BLOCK_USE_CASES),
        "client_coordinates": None,
        "local_search_enabled": False,
        "mentions": [],
        "skip_search_enabled": options.search_focus == "writing",
        # A UI-only confirmation would park the run forever (AK): never ask for one.
        "should_ask_for_mcp_tool_confirmation": False,
        "supports_tool_approval_modal": False,
    }
    if options.latitude is not None and options.longitude is not None:
        params["client_coordinates"] = {
            "location_lat": options.latitude,
            "location_lng": options.longitude,
            "name": "",
        }
        params["local_search_enabled"] = True
    if options.compare_models:
        params["compare_model_preferences"] = list(options.compare_models)
    thread = options.follow_up
    if thread is None:
        params.update(
            {
                "query_source": "home",
                "frontend_context_uuid": frontend_uuid,
                "client_search_results_cache_key": frontend_uuid,
                "dsl_query": query,
                "last_backend_uuid": None,
            }
        )
    else:
        params.update(
            {
                "query_source": "followup",
                "followup_source": "link",
                "last_backend_uuid": thread.backend_uuid,
            }
        )
        if thread.read_write_token:
            params["read_write_token"] = thread.read_write_token
    return {"query_str": query, "params": params}
