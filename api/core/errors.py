"""The error a request is refused with: a plain value, mapped to an HTTP response by `api.edge.errors` only."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["APIError"]


@dataclass
class APIError(Exception):
    """An error to send to the client as `{"error": {message, type, param, code}}` with `status`."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message
