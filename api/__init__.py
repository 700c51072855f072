"""The HTTP layer: OpenAI- and Anthropic-shaped endpoints over the Perplexity client, grouped by concern.

- `edge/`: what every request passes through at the HTTP edge: errors (the one exception-to-HTTP mapping),
  API keys, quotas, Prometheus metrics, SSE encoding.
- `core/`: the Flask-free translation between the APIs and Perplexity: the chat service, messages, the turn
  (citations, stop sequences, length limits), completion objects, the model map, and `continuity`, the one
  thread rule for every endpoint family.
- `stores/`: conversations and stored responses (records and interfaces, memory, Redis) and the token file.
- `chat/`, `responses/`, `messages/` (Anthropic's API), `completions/`, `models/`, `ops/`: one package per
  endpoint family, each a blueprint; `docs/`: the OpenAPI document and Swagger UI, generated from `schemas/`;
  `console/`: the browser console at /console (template, script, styles).
- `steps`: the view steps the answering families share (body, limits, stream slots, opening the upstream, the
  one stream-failure path); `state`: the worker's shared state; `config`: every setting, validated.

Imports point one way: endpoint packages -> steps/edge -> core -> stores and `perplexity`; no endpoint package
imports another; core and stores never import Flask (tests/test_layers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # gunicorn's master imports api.config before gevent patches sockets: no Flask at import
    from flask import Flask

__all__ = ["register_blueprints"]


def register_blueprints(app: Flask) -> None:
    """Register every endpoint family's blueprint."""
    from . import chat, completions, console, docs, messages, models, ops, responses

    for family in (chat, responses, messages, completions, models, ops, docs, console):
        app.register_blueprint(family.bp)
