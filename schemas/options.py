"""Perplexity's own request options and this server's, shared by the chat, Responses and legacy request schemas."""

from __future__ import annotations

from marshmallow import validate

from schemas.common import RequestPartSchema, array, boolean, choice, integer, nested, number, string

__all__ = [
    "CITATION_MODES",
    "ApproximateLocationSchema",
    "PerplexityOptionsSchema",
    "UserLocationSchema",
    "WebSearchOptionsSchema",
]

CITATION_MODES = ("default", "markdown", "clean", "footnotes")


class ApproximateLocationSchema(RequestPartSchema):
    """`user_location.approximate` (OpenAI)."""

    country = string()
    region = string()
    city = string()
    timezone = string()


class UserLocationSchema(RequestPartSchema):
    """`web_search_options.user_location`: OpenAI's `{type, approximate}` or Perplexity's flat coordinates."""

    type = string()
    approximate = nested(ApproximateLocationSchema)
    latitude = number(-90, 90)
    longitude = number(-180, 180)
    country = string()
    region = string()
    city = string()


class WebSearchOptionsSchema(RequestPartSchema):
    """`web_search_options` as OpenAI and Perplexity define it."""

    search_context_size = choice("low", "medium", "high")
    search_type = choice("fast", "pro", "auto")
    user_location = nested(UserLocationSchema)
    image_results_enhanced_relevance = boolean()


class PerplexityOptionsSchema(RequestPartSchema):
    """Perplexity options every endpoint takes (chat, Responses, legacy), so `ChatService.prepare` reads them alike."""

    web_search_options = nested(WebSearchOptionsSchema)
    # Perplexity's official API names (docs.perplexity.ai; perplexity-py completion_create_params.py).
    search_mode = choice("web", "academic", "sec", "social")
    search_recency_filter = choice("hour", "day", "week", "month", "year")
    search_domain_filter = array(string(allow_none=False))
    search_language_filter = array(string(allow_none=False))
    # Perplexity writes these dates "%m/%d/%Y"; `core.sonar` reads them (and ISO dates), a 400 for anything else.
    search_after_date_filter = string()
    search_before_date_filter = string()
    last_updated_after_filter = string()
    last_updated_before_filter = string()
    language_preference = string()
    return_related_questions = boolean()
    return_images = boolean()
    # Sonar's image filters and result count: `core.sonar` applies them to what Perplexity returns.
    image_domain_filter = array(string(allow_none=False))
    image_format_filter = array(string(allow_none=False))
    num_search_results = integer(validate=validate.Range(min=1, max=100, error="must be between {min} and {max}."))
    disable_search = boolean()
    # This server's own option; None means "use the server's configured default".
    citation_mode = choice(*CITATION_MODES, load_default=None)
