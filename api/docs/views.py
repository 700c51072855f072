"""`GET /openapi.json` (the OpenAPI 3.1 document, built once per app) and `GET /docs` (Swagger UI 5, its files
served from the flask-swagger-ui package: no CDN, nothing copied into the repository)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flask_swagger_ui
import orjson
from flask import Blueprint, Response, abort, current_app, send_from_directory, url_for
from markupsafe import escape

from ..edge.auth import configured_keys
from ..state import server_version
from .document import build_document

__all__ = ["bp"]

bp = Blueprint("docs", __name__)

_STATIC = Path(__file__).parent / "static"
# Only the package's Swagger UI files (its dist/): its blueprint renders a page with an inline script, which the
# CSP below forbids, so the page and its initializer are this project's own.
_ASSETS = Path(flask_swagger_ui.__file__).parent / "dist"
_ASSET_SUFFIXES = (".js", ".css", ".png")
_NOT_SERVED = {"oauth2-redirect.js"}  # no OAuth here
# Swagger UI needs inline styles (React style attributes) and data: images; every script is a file from here.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>API reference</title>
<link rel="stylesheet" href="{css}">
<link rel="stylesheet" href="{index_css}">
<link rel="icon" type="image/png" href="{icon}" sizes="32x32">
</head>
<body data-openapi-url="{document}">
<div id="swagger-ui"></div>
<script src="{bundle}"></script>
<script src="{preset}"></script>
<script src="{initializer}"></script>
</body>
</html>
"""


def _document() -> bytes:
    """The serialised document, built at the first request and kept for the app's life."""
    cached = current_app.extensions.get("openapi_document")
    if cached is None:
        # With API_KEYS_FILE the API is never open, even while the file lists no key.
        secured = bool(configured_keys(current_app.config) or current_app.config.get("API_KEYS_FILE"))
        cached = orjson.dumps(build_document(secured=secured, server_version=server_version()))
        current_app.extensions["openapi_document"] = cached
    return cached


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of every endpoint."""
    return Response(_document(), mimetype="application/json")


@bp.get("/docs")
def swagger_ui() -> Response:
    """Swagger UI on this server's document."""

    def asset(name: str) -> Any:
        return escape(url_for("docs.swagger_asset", filename=name))

    page = _PAGE.format(
        css=asset("swagger-ui.css"),
        index_css=asset("index.css"),
        icon=asset("favicon-32x32.png"),
        bundle=asset("swagger-ui-bundle.js"),
        preset=asset("swagger-ui-standalone-preset.js"),
        initializer=escape(url_for("docs.initializer")),
        document=escape(url_for("docs.openapi_document")),
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _CSP
    return response


@bp.get("/docs/initializer.js")
def initializer() -> Response:
    """The script that starts Swagger UI (this project's own; the bundle's points elsewhere)."""
    return send_from_directory(_STATIC, "initializer.js", mimetype="text/javascript", max_age=3600)


@bp.get("/docs/<path:filename>")
def swagger_asset(filename: str) -> Response:
    """One of Swagger UI's files, from the installed package."""
    if not filename.endswith(_ASSET_SUFFIXES) or filename in _NOT_SERVED:
        abort(404)
    return send_from_directory(_ASSETS, filename, max_age=3600)
