"""Perplexity's own request options and this server's, shared by the Responses and legacy completions schemas."""

from __future__ import annotations

from schemas.chat import CITATION_MODES, WebSearchOptionsSchema
from schemas.common import RequestPartSchema, array, boolean, choice, nested, string

__all__ = ["PerplexityOptionsSchema"]


class PerplexityOptionsSchema(RequestPartSchema):
    """The same names `POST /v1/chat/completions` takes, so `ChatService.prepare` reads them alike."""

    web_search_options = nested(WebSearchOptionsSchema)
    # Perplexity's official API names (docs.perplexity.ai; perplexity-py completion_create_params.py).
    search_mode = choice("web", "academic", "sec")
    search_recency_filter = choice("hour", "day", "week", "month", "year")
    search_domain_filter = array(string(allow_none=False))
    search_language_filter = array(string(allow_none=False))
    return_related_questions = boolean()
    return_images = boolean()
    disable_search = boolean()
    # This server's own option; None means "use the server's configured default".
    citation_mode = choice(*CITATION_MODES, load_default=None)
