"""The HTTP layer: blueprints and what only they use."""

from __future__ import annotations

from flask import Flask

__all__ = ["register_blueprints"]


def register_blueprints(app: Flask) -> None:
    """Register the chat, models and ops blueprints."""
    from . import chat, models, ops

    app.register_blueprint(chat.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(ops.bp)
