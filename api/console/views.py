"""GET /console: the console page and its static files, under a strict Content-Security-Policy.

The page is public (no key, no quota: see app.py); the API calls its script makes carry the key the user
enters. The template gets harmless values only: the version and whether the server wants a key.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template

from ..edge.auth import configured_keys
from ..state import server_version

__all__ = ["bp"]

bp = Blueprint(
    "console",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/console/static",
)

# Scripts, styles, images and fetches from this origin only; nothing inline, no framing, no plugins.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@bp.get("/console")
@bp.get("/console/")
def console() -> Response:
    """The console page."""
    # With API_KEYS_FILE the API is never open, even while the file lists no key.
    keys_required = bool(configured_keys(current_app.config) or current_app.config.get("API_KEYS_FILE"))
    page = render_template("console/index.html", version=server_version(), keys_required=keys_required)
    response = Response(page, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.after_request
def _secure(response: Response) -> Response:
    """Every console response (the page and its static files) is locked down the same way."""
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response
