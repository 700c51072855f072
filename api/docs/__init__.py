"""The API reference: the OpenAPI document (`/openapi.json`, generated from `schemas/`) and Swagger UI (`/docs`)."""

from .views import bp

__all__ = ["bp"]
