"""Legacy text completions: `POST /v1/completions` on the chat core, as `text_completion` objects."""

from .views import bp

__all__ = ["bp"]
