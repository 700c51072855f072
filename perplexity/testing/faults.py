"""HTTP answers for scripted faults that fail before any SSE byte (Cloudflare, auth, 429, 5xx, ...)."""

from __future__ import annotations

import hashlib
import json
from http import HTTPStatus

from .script import Fault

__all__ = ["CLOUDFLARE_PAGE", "Canned", "cf_ray", "fault_response", "json_body"]

# (status, headers, body)
Canned = tuple[int, list[tuple[str, str]], bytes]

# A trimmed challenge page carrying the markers clients look for (protocol 3.8; NR #10 body).
CLOUDFLARE_PAGE = b"""<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<link rel="stylesheet" href="/cdn-cgi/styles/challenges.css"></head>
<body class="no-js"><div class="main-wrapper" role="main"><div class="main-content">
<h1 class="zone-name-title h1">www.perplexity.ai</h1>
<h2 class="h2" id="challenge-running">Checking your browser before accessing www.perplexity.ai.</h2>
<noscript><div class="h2">Enable JavaScript and cookies to continue</div></noscript></div></div>
<script>(function(){window._cf_chl_opt={cvId:'3',cZone:'www.perplexity.ai',cType:'managed'};
var a=document.createElement('script');a.src='/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1';
document.getElementsByTagName('head')[0].appendChild(a);}());</script></body></html>
"""

# What the web app's HTML shell looks like when an API path answers with a page instead of data.
_APP_PAGE = b"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Perplexity</title></head>
<body><div id="__next"></div><script id="__NEXT_DATA__" type="application/json">{"props":{}}</script>
</body></html>
"""

_HTML = "text/html; charset=UTF-8"
_JSON = "application/json"


def cf_ray(seed: str) -> str:
    """Return a cf-ray header value (16 hex digits and a colo), stable for one seed."""
    return hashlib.sha1(seed.encode()).hexdigest()[:16] + "-IAD"


def json_body(value: object) -> bytes:
    """Encode a JSON response body."""
    return json.dumps(value, separators=(",", ":")).encode()


def _retry_after(fault: Fault) -> list[tuple[str, str]]:
    return [] if fault.retry_after is None else [("Retry-After", f"{fault.retry_after:g}")]


def fault_response(fault: Fault, seed: str = "") -> Canned:
    """Return the status, headers and body a pre-stream fault answers with."""
    kind = fault.kind
    if kind in ("cloudflare", "cloudflare_503"):
        status = fault.status or (403 if kind == "cloudflare" else 503)
        headers = [("Content-Type", _HTML), ("cf-mitigated", "challenge"), ("Cache-Control", "no-cache")]
        return status, headers, CLOUDFLARE_PAGE
    if kind == "html_200":
        return fault.status or 200, [("Content-Type", _HTML)], _APP_PAGE
    if kind == "thread_gone":
        return fault.status or 403, [("Content-Type", _JSON)], b"{}"
    if kind in ("auth", "auth_401"):
        status = fault.status or (403 if kind == "auth" else 401)
        detail = fault.message or "Not authenticated: the session has expired or is invalid."
        return status, [("Content-Type", _JSON)], json_body({"detail": detail})
    if kind == "rate_limit":
        detail = fault.message or "Too many requests. Please try again later."
        return fault.status or 429, [("Content-Type", _JSON), *_retry_after(fault)], json_body({"detail": detail})
    status = fault.status or 500
    headers = [("Content-Type", _JSON)]
    if status == 503:
        headers += _retry_after(fault)
    return status, headers, json_body({"detail": fault.message or _phrase(status)})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # Cloudflare's 52x codes are not in the registry
        return "Server Error"
