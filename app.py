"""The Flask application: `create_app()` wires config, errors and blueprints; `app` is what gunicorn serves."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

from dotenv import load_dotenv
from flask import Flask, Response, g, request

from api import register_blueprints
from api.auth import authenticate, configured_keys
from api.config import defaults, settings_from_env
from api.errors import register as register_errors
from api.state import init_app as init_state

__all__ = ["app", "create_app"]

log = logging.getLogger("app")

_PUBLIC_PREFIXES = ("/health", "/metrics")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level.upper())


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from `config`, or from the environment (and `.env`) when None. No network I/O."""
    app = Flask(__name__)
    app.config.from_mapping(defaults())
    if config is None:
        load_dotenv()  # gunicorn does not read .env by itself
        app.config.update(settings_from_env(os.environ))
    else:
        app.config.update(config)
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_REQUEST_BYTES"])
    _configure_logging(str(app.config["LOG_LEVEL"]))
    keys = configured_keys(app.config)
    if not keys:
        log.warning("no OPENAI_API_KEY or API_KEYS set: the API is open to anyone who can reach it")
    if not app.config.get("PERPLEXITY_SESSION_TOKEN"):
        log.warning("PERPLEXITY_SESSION_TOKEN is not set: /v1 requests will fail until it is")

    @app.before_request
    def _request_id_and_auth() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else f"req_{uuid.uuid4().hex}"
        if not request.path.startswith(_PUBLIC_PREFIXES):
            authenticate(keys)

    @app.after_request
    def _stamp(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or f"req_{uuid.uuid4().hex}"
        return response

    register_errors(app)
    init_state(app)
    register_blueprints(app)
    return app


app = create_app()
