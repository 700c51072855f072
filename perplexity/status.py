"""Classify Perplexity's HTTP error responses into the client's exceptions: the one place that does it."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from .errors import (
    AuthenticationError,
    BadRequestError,
    CloudflareChallengeError,
    RateLimitError,
    ThreadNotFoundError,
    UpstreamServerError,
    UpstreamStatusError,
    redact,
)

__all__ = ["error_for_status", "is_cloudflare", "parse_retry_after"]

# Markers of a Cloudflare challenge page.
_CLOUDFLARE_MARKERS = (
    "just a moment",
    "cf-mitigated",
    "__cf_chl_",
    "challenge-platform",
    "enable javascript and cookies to continue",
    "checking your browser",
    "_cf_chl_opt",
    "/cdn-cgi/styles/challenges.css",
    "cf-ray",
)
_CLOUDFLARE_STATUSES = {403, 503, 520, 521, 522, 523, 524, 525, 526}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `retry-after` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if "," in value else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds)


def is_cloudflare(status: int, headers: Mapping[str, str], body: str) -> bool:
    """True when the response is a Cloudflare block page rather than an answer from Perplexity."""
    if status not in _CLOUDFLARE_STATUSES:
        return False
    content_type = headers.get("content-type", "").lower()
    if "html" not in content_type and not body.lstrip().lower().startswith(("<!doctype", "<html")):
        return False
    lowered = body[:65536].lower()
    return headers.get("cf-mitigated") is not None or any(m in lowered for m in _CLOUDFLARE_MARKERS)


def _excerpt(body: str) -> str:
    return redact(" ".join(body.split())[:200])


def error_for_status(
    status: int, headers: Mapping[str, str], body: str, *, what: str = "request", thread_call: bool = False
) -> UpstreamStatusError:
    """Build the exception for an error response; `thread_call` marks calls that name a thread."""
    excerpt = _excerpt(body)
    kwargs = {"status_code": status, "body_excerpt": excerpt}
    if is_cloudflare(status, headers, body):
        return CloudflareChallengeError(
            f"Cloudflare blocked the Perplexity {what} (HTTP {status} challenge page). The session cookie "
            "is probably fine: enable browser impersonation (PERPLEXITY_IMPERSONATE=chrome with curl_cffi "
            "installed) or try from another IP.",
            **kwargs,
        )
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return RateLimitError(
            f"Perplexity rate limited the {what} (HTTP 429"
            + (f", retry after {retry_after:g}s)" if retry_after is not None else ")"),
            retry_after=retry_after,
            **kwargs,
        )
    if status in (401, 403):
        if thread_call and status == 403 and body.strip() in ("{}", ""):
            return ThreadNotFoundError(
                f"The Perplexity thread named by the {what} no longer exists (HTTP 403 {{}}).", **kwargs
            )
        return AuthenticationError(
            f"Perplexity rejected the session cookie on the {what} (HTTP {status}). Log in to "
            "perplexity.ai again and set PERPLEXITY_SESSION_TOKEN to the new "
            "__Secure-next-auth.session-token value.",
            **kwargs,
        )
    if status >= 500:
        return UpstreamServerError(f"Perplexity failed the {what} with HTTP {status}.", **kwargs)
    return BadRequestError(
        f"Perplexity refused the {what} with HTTP {status}" + (f": {excerpt}" if excerpt else "."), **kwargs
    )
