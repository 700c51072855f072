"""`GET /openapi.json` (the OpenAPI 3.1 document, built once per app) and `GET /docs` (Swagger UI, served from the
swagger-ui-bundle package: no CDN, nothing copied into the repository)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Response, abort, current_app, send_from_directory, url_for
from markupsafe import escape
from swagger_ui_bundle import swagger_ui_path

from ..edge.auth import configured_keys
from .document import build_document

__all__ = ["bp"]

bp = Blueprint("docs", __name__)

_STATIC = Path(__file__).parent / "static"
_ASSETS = Path(swagger_ui_path)
_ASSET_SUFFIXES = (".js", ".css", ".png", ".map")
_NOT_SERVED = {"swagger-initializer.js"}  # the bundle's own initializer points at the petstore
# Swagger UI needs inline styles (React style attributes) and data: images; every script is a file from here.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_VERSIONS = {"3.1": "3.1.0", "3.0": "3.0.3"}

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


def _document(version: str) -> bytes:
    """The serialised document of `version`, built at the first request and kept for the app's life."""
    cache: dict[str, bytes] = current_app.extensions.setdefault("openapi_documents", {})
    if version not in cache:
        secured = bool(configured_keys(current_app.config))
        cache[version] = orjson.dumps(build_document(_VERSIONS[version], secured=secured))
    return cache[version]


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of every endpoint."""
    return Response(_document("3.1"), mimetype="application/json")


@bp.get("/docs/openapi-3.0.json")
def openapi_document_30() -> Response:
    """The same document as OpenAPI 3.0, for the bundled Swagger UI (4.15, which cannot read 3.1)."""
    return Response(_document("3.0"), mimetype="application/json")


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
        document=escape(url_for("docs.openapi_document_30")),
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
