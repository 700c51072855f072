"""The one mapping from exceptions to error responses, and its Flask handlers.

Errors are OpenAI-shaped (`{"error": {message, type, param, code}}`), except for the Anthropic family
(`/v1/messages…`, or any request carrying `anthropic-version`), which gets Anthropic's shape
(`{"type": "error", "error": {type, message}, "request_id"}`) with Anthropic's status for an unavailable upstream.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, has_request_context, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from perplexity import errors as px

from ..core.errors import APIError
from .redact import redact

log = logging.getLogger(__name__)

__all__ = [
    "APIError",
    "anthropic_error",
    "error_payload",
    "error_response",
    "is_anthropic_request",
    "register",
    "to_api_error",
]


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


# What a client is told of these failures: never Perplexity's own prose nor the transport's details (its
# address, libcurl's text), which go to the log, redacted. The other classes' messages are this server's own.
_CLIENT_MESSAGES: dict[type[px.PerplexityError], str] = {
    px.AskRateLimitedError: "Perplexity's rate limit for this account was reached while answering.",
    px.AskFailedError: "Perplexity could not answer this request.",
    px.StreamTruncatedError: "The connection to Perplexity broke mid-answer.",
    px.MalformedFrameError: "Perplexity sent an answer this server could not read.",
    px.UpstreamTimeoutError: "Perplexity did not answer in time.",
    px.UpstreamConnectError: "Perplexity could not be reached.",
    px.TransportError: "The connection to Perplexity failed.",
}


def _client_message(exc: px.PerplexityError) -> str:
    for cls in type(exc).__mro__:
        if cls in _CLIENT_MESSAGES:
            message = _CLIENT_MESSAGES[cls]
            code = getattr(exc, "code", None)
            return f"{message[:-1]} (Perplexity error {redact(str(code))[:64]})." if code else message
    return redact(exc.message)


def _from_upstream(exc: px.PerplexityError) -> APIError:
    for cls in type(exc).__mro__:
        if cls in _UPSTREAM:
            status, kind, code, headers = _UPSTREAM[cls]
            break
    headers = dict(headers)
    retry_after = getattr(exc, "retry_after", None)
    if status == 429:
        headers["retry-after"] = str(max(1, round(retry_after))) if retry_after is not None else "5"
    return APIError(status, _client_message(exc), kind, code, None, headers)


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
    if status == 405 and getattr(exc, "valid_methods", None):  # RFC 9110: a 405 says which methods are allowed
        headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
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


# Anthropic's error types by status (its API reference); statuses it has no type for fall to api_error.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Our model failing the prompt protocol is an internal failure to Anthropic clients, not an unavailable upstream.
_MODEL_FAILURES = ("tool_call_failed", "invalid_json_output")


def is_anthropic_request() -> bool:
    """True for the Anthropic family: its paths, or a request from an Anthropic client (an `anthropic-version`
    header, a key in `x-api-key` alone, or Claude Code's or an Anthropic SDK's user agent) on a shared path."""
    if request.path.startswith("/v1/messages") or "anthropic-version" in request.headers:
        return True
    if "x-api-key" in request.headers and "Authorization" not in request.headers:
        return True
    return request.headers.get("User-Agent", "").startswith(("claude-cli/", "Anthropic/"))


def anthropic_error(error: APIError, request_id: str | None = None) -> tuple[int, dict[str, Any]]:
    """Anthropic's status and body for `error`: an unavailable upstream (502) is 529 overloaded_error, which
    Anthropic clients know to wait out; a session problem (503) stays 503. Needs no request context (streams
    build their error event after the view returned)."""
    status = error.status
    if status == 502 and error.code in _MODEL_FAILURES:
        status = 500
    elif status == 502:
        status = 529
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    if status == 503:  # a draining server is busy elsewhere: Anthropic clients retry an overload
        kind = "overloaded_error" if error.code in ("upstream_overloaded", "server_shutting_down") else "api_error"
    message = f"{error.message} ({error.code})" if error.code and status >= 500 else error.message
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return status, body


def error_response(error: APIError) -> Response:
    """A JSON response for `error` with its status and headers, in the request's family's shape."""
    anthropic = has_request_context() and is_anthropic_request()
    status, body = anthropic_error(error, g.get("request_id")) if anthropic else (error.status, error_payload(error))
    response = Response(orjson.dumps(body), status=status, mimetype="application/json")
    for name, value in error.headers.items():
        response.headers[name] = value
    if anthropic:  # the Anthropic SDKs read the id from this header (`APIStatusError.request_id`)
        response.headers["request-id"] = str(g.get("request_id") or "")
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
