"""Models: `GET /v1/models`, `GET /v1/models/<id>` and `POST /v1/models/refresh`, in the OpenAI shape."""

from .views import bp

__all__ = ["bp"]
