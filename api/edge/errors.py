"""The one mapping from exceptions to OpenAI-shaped error responses, and its Flask handlers."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Flask, Response, current_app, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from perplexity import errors as px

from ..core.errors import APIError

log = logging.getLogger(__name__)

__all__ = ["APIError", "error_payload", "error_response", "register", "to_api_error"]


_NO_RETRY = {"x-should-retry": "false"}

# Upstream failures: (status, type, code, headers). Most specific class first along the MRO.
_UPSTREAM: dict[type[px.PerplexityError], tuple[int, str, str, dict[str, str]]] = {
    px.ConfigurationError: (503, "server_error", "perplexity_not_configured", _NO_RETRY),
    px.AuthenticationError: (503, "server_error", "perplexity_auth_failed", _NO_RETRY),
    px.CloudflareChallengeError: (502, "server_error", "perplexity_blocked", _NO_RETRY),
    px.ThreadNotFoundError: (404, "invalid_request_error", "conversation_not_found", {}),
    px.RateLimitError: (429, "requests", "rate_limit_exceeded", {}),
    px.AskRateLimitedError: (429, "requests", "rate_limit_exceeded", {}),
    px.UpstreamServerError: (502, "server_error", "upstream_error", _NO_RETRY),
    px.BadRequestError: (400, "invalid_request_error", "upstream_rejected", {}),
    px.UpstreamConnectError: (502, "server_error", "upstream_unreachable", _NO_RETRY),
    px.UpstreamTimeoutError: (504, "server_error", "upstream_timeout", _NO_RETRY),
    px.MalformedFrameError: (502, "server_error", "upstream_protocol_error", _NO_RETRY),
    px.StreamTruncatedError: (502, "server_error", "upstream_stream_truncated", _NO_RETRY),
    px.AskFailedError: (502, "server_error", "upstream_failed", _NO_RETRY),
    px.UploadError: (400, "invalid_request_error", "invalid_attachment", {}),
    px.PerplexityError: (502, "server_error", "upstream_error", _NO_RETRY),
}

_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "unknown_url",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
}


def _from_upstream(exc: px.PerplexityError) -> APIError:
    for cls in type(exc).__mro__:
        if cls in _UPSTREAM:
            status, kind, code, headers = _UPSTREAM[cls]
            break
    headers = dict(headers)
    retry_after = getattr(exc, "retry_after", None)
    if status == 429:
        headers["retry-after"] = str(max(1, round(retry_after))) if retry_after is not None else "5"
    return APIError(status, exc.message, kind, code, None, headers)


def _from_http(exc: HTTPException) -> APIError:
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 404:
        message = f"Unknown request URL: {request.method} {request.path}. Check the base URL ends with /v1."
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.path}."
    elif status == 413:
        message = "The request body is too large (MAX_REQUEST_BYTES)."
    elif status == 415:
        message = "The request body must be JSON (Content-Type: application/json)."
    kind = "requests" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    headers = {}
    if status == 429:
        headers["retry-after"] = str(getattr(exc, "retry_after", None) or 60)
    return APIError(status, message, kind, _HTTP_CODES.get(status), None, headers)


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception to the APIError the client sees; unknown ones become a bare 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, px.PerplexityError):
        return _from_upstream(exc)
    if isinstance(exc, ValidationError):
        from schemas.common import first_error  # schemas live at the HTTP edge only

        param, message = first_error(exc)
        return APIError(400, message, "invalid_request_error", "invalid_value", param)
    if isinstance(exc, HTTPException):
        return _from_http(exc)
    return APIError(500, "The server failed to handle the request; see its log.", "server_error", "internal_error")


def error_payload(error: APIError) -> dict[str, Any]:
    """The OpenAI error body (the shape ErrorResponseSchema documents)."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_response(error: APIError) -> Response:
    """A JSON response for `error` with its status and headers."""
    response = Response(orjson.dumps(error_payload(error)), status=error.status, mimetype="application/json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def _handle(exc: Exception) -> Response:
    error = to_api_error(exc)
    if error.status >= 500 and not isinstance(exc, px.PerplexityError | APIError):
        log.exception("unhandled error on %s %s", request.method, request.path)
    elif isinstance(exc, px.PerplexityError):
        log.warning("upstream %s on %s: %s", exc.kind, request.path, exc.message)
        server = current_app.extensions.get("perplexity")
        if server is not None:
            server.record_upstream_error(exc)
    return error_response(error)


def register(app: Flask) -> None:
    """Route every error raised by a view through the one mapping."""
    app.register_error_handler(Exception, _handle)
