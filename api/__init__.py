"""The HTTP layer: blueprints and what only they use."""

from __future__ import annotations

from flask import Flask

__all__ = ["register_blueprints"]


def register_blueprints(app: Flask) -> None:
    """Register the chat, responses, legacy completions, models and ops blueprints."""
    from . import chat, legacy, models, ops, responses

    app.register_blueprint(chat.bp)
    app.register_blueprint(responses.bp)
    app.register_blueprint(legacy.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(ops.bp)
