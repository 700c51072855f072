"""The Flask application: `create_app()` wires config, auth, quotas, errors and blueprints; gunicorn serves `app`."""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from werkzeug.middleware.proxy_fix import ProxyFix

from api import register_blueprints
from api.cli import group as perplexity_cli
from api.config import SettingError, defaults, load_dotenv_file, settings_from_env, validate
from api.core.accounts import account_specs
from api.core.keys import KeyFileError, KeyRing
from api.edge import quotas, redact
from api.edge.auth import authenticate, key_ring
from api.edge.errors import is_anthropic_request
from api.edge.errors import register as register_errors
from api.edge.logs import JsonFormatter
from api.state import ServerState
from api.state import init_app as init_state
from perplexity.proxy import proxy_problem

__all__ = ["app", "create_app"]

log = logging.getLogger("app")

# Pages and documents a browser loads before any key is entered; the API calls they make carry the key.
_PUBLIC_PREFIXES = ("/health", "/metrics", "/stats", "/docs", "/openapi.json", "/console")


class _RequestIdFilter(logging.Filter):
    """Adds the current request's id to every log record (`-` outside requests), and for the JSON format its key
    label (never the key), route (the rule, not the path), method and upstream account."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not has_request_context():
            record.request_id = "-"
            return True
        record.request_id = g.get("request_id", "-")
        entry = g.get("key")
        record.key = entry.label if entry is not None else None
        record.route = request.url_rule.rule if request.url_rule else None
        record.method = request.method
        record.account = g.get("account")
        return True


_TEXT_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s rid=%(request_id)s %(message)s"


def _configure_logging(level: str, form: str = "text") -> None:
    root = logging.getLogger()
    handler = next((h for h in root.handlers if any(isinstance(f, _RequestIdFilter) for f in h.filters)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.addFilter(_RequestIdFilter())
        handler.addFilter(redact.RedactFilter())  # no token or key in any line, whoever logs it (before formatting)
        root.handlers = [handler]
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(_TEXT_FORMAT))
    root.setLevel(level.upper())


def _config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings: defaults, then `config` or the environment (and `.env`); SettingError if one is unusable."""
    values = defaults()
    if config is None:
        load_dotenv_file()  # gunicorn.conf.py has done it already; `flask run` and scripts have not
        values.update(settings_from_env(os.environ))
    else:
        values.update(config)
    validate(values)
    try:  # the accounts (file, tokens) are read now, so a bad one stops the start like any bad setting
        specs = account_specs(values)
    except (OSError, ValueError) as exc:
        named = str(exc).startswith("PERPLEXITY_")  # the normalisation names the setting it read
        raise SettingError(str(exc) if named else f"PERPLEXITY_ACCOUNTS_FILE cannot be used: {exc}") from None
    for spec in specs:
        why = proxy_problem(spec.proxy) if spec.proxy else None
        if why is not None:
            raise SettingError(f"PERPLEXITY_ACCOUNTS_FILE: the proxy of account {spec.label} {why}")
    return values


def _install_hooks(app: Flask, server: ServerState, keys: KeyRing) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else f"req_{uuid.uuid4().hex}"
        if not request.path.startswith(_PUBLIC_PREFIXES):
            authenticate(keys)  # before the quota check, which keys on the caller it sets

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or f"req_{uuid.uuid4().hex}"
        if is_anthropic_request():  # where the Anthropic SDKs look for it
            response.headers["request-id"] = response.headers["X-Request-ID"]
        route = request.url_rule.rule if request.url_rule else "unmatched"
        request.environ["pplx.route"] = route  # for the access log (gunicorn.conf.py)
        server.counters[route] += 1
        entry = g.get("key")  # a file key's label (or id); every other key is one value: bounded cardinality
        key = entry.metric if entry is not None else "-"
        server.metrics.requests.labels(request.method, route, str(response.status_code), key).inc()
        if "started" in g:
            server.metrics.latency.labels(route).observe(time.perf_counter() - g.started)
        return response


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from `config`, or from the environment (and `.env`) when None. No network I/O.

    Raises SettingError, naming the variable, when a setting cannot be used.
    """
    app = Flask(__name__)
    app.config.from_mapping(_config(config))
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_REQUEST_BYTES"])
    _configure_logging(str(app.config["LOG_LEVEL"]), str(app.config["LOG_FORMAT"]))
    if int(app.config["TRUST_PROXY"]) > 0:
        hops = int(app.config["TRUST_PROXY"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    redact.reset()
    try:
        keys = key_ring(app.config)  # registers the file's keys with the redaction, now and on each reload
    except KeyFileError as exc:
        raise SettingError(str(exc)) from None
    tokens = [spec.token for spec in account_specs(app.config)]
    redact.register(app.config.get("PERPLEXITY_SESSION_TOKEN"), *tokens, *(key.decode() for key in keys.plain))
    if keys.table().open:
        log.warning("no OPENAI_API_KEY, API_KEYS or API_KEYS_FILE set: the API is open to anyone who can reach it")
    if not tokens:
        log.warning("no Perplexity account (PERPLEXITY_SESSION_TOKEN, ..._TOKENS or ACCOUNTS_FILE): /v1 requests fail")
    server = init_state(app)
    server.pool  # noqa: B018 - built now (no I/O): its upkeep (file reloads, keep-alive) runs from the start
    _install_hooks(app, server, keys)
    quotas.init_app(app, server.metrics)
    register_errors(app)
    register_blueprints(app)
    app.cli.add_command(perplexity_cli)  # flask --app app perplexity login | import-cookie
    return app


def _app_or_exit() -> Flask:
    try:
        return create_app()
    except SettingError as exc:
        # One line, no traceback; gunicorn reads exit status 4 as "App failed to load" and stops.
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(4) from None


app = _app_or_exit()
