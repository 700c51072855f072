"""The exception tree of the Perplexity client; every failure the client raises is one of these.

    PerplexityError
    ├── ConfigurationError            no session token, bad option values
    ├── TransportError                the HTTP exchange itself failed
    │   ├── UpstreamConnectError      could not connect (nothing reached Perplexity: safe to retry)
    │   └── UpstreamTimeoutError      connect or read deadline passed (before or during a stream)
    ├── UpstreamStatusError           Perplexity answered with an error status before streaming
    │   ├── BadRequestError           400/404/413/422 ...: the request itself was refused
    │   ├── AuthenticationError       401/403 with a JSON or empty body: session cookie bad or expired
    │   ├── CloudflareChallengeError  403/503 HTML challenge page: the TLS fingerprint or IP was blocked
    │   ├── ThreadNotFoundError       403 `{}` for a thread call: the thread was deleted or never existed
    │   ├── RateLimitError            429, with `retry_after` seconds when Perplexity sent one
    │   └── UpstreamServerError       5xx
    ├── StreamError                   the answer stream broke after it started (never retried)
    │   ├── MalformedFrameError       a frame was not one JSON object, or the body was not SSE
    │   ├── StreamTruncatedError      the stream ended (or was cut) before a COMPLETED frame
    │   └── AskFailedError            Perplexity reported `status: FAILED` or an `error_code`
    │       └── AskRateLimitedError   ... and the code says rate limited
    └── UploadError                   a file could not be validated, presigned or uploaded

Every class carries `kind`, a short stable label for metrics and logs. Messages never contain the
session cookie, API keys or thread tokens: they are built from status codes and short body excerpts
that pass through `redact()`.
"""

from __future__ import annotations

import re

__all__ = [
    "AskFailedError",
    "AskRateLimitedError",
    "AuthenticationError",
    "BadRequestError",
    "CloudflareChallengeError",
    "ConfigurationError",
    "MalformedFrameError",
    "PerplexityError",
    "RateLimitError",
    "StreamError",
    "StreamTruncatedError",
    "ThreadNotFoundError",
    "TransportError",
    "UploadError",
    "UpstreamConnectError",
    "UpstreamServerError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "redact",
]

# Values that look like secrets: JWT-ish session tokens, uuid-like thread tokens after a key name.
_SECRET_PATTERNS = (
    re.compile(r"(__Secure-next-auth\.session-token(?:\.\d+)?=)[^;\s,\"']+", re.I),
    re.compile(r"(\"?read_write_token\"?\s*[:=]\s*\"?)[^\"\s,;}]+", re.I),
    re.compile(r"((?:authorization|cookie|set-cookie)\"?\s*[:=]\s*\"?)[^\"\n]+", re.I),
    re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.?[\w-]*"),  # JWT / JWE compact forms
    # The password in a URL's userinfo (a proxy's, a Redis URL's), whoever echoed the URL.
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s/@]+(?=@)", re.I),
)


def redact(text: str, *secrets: str | None) -> str:
    """Return `text` with known secrets and secret-looking values masked."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


class PerplexityError(Exception):
    """Base class of every error the Perplexity client raises."""

    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigurationError(PerplexityError):
    """The client is missing configuration (e.g. no session token) or got an invalid option."""

    kind = "configuration"


class TransportError(PerplexityError):
    """The HTTP exchange with Perplexity failed below the HTTP status level."""

    kind = "transport"


class UpstreamConnectError(TransportError):
    """The connection to Perplexity could not be made; the request never reached it."""

    kind = "connect"


class UpstreamTimeoutError(TransportError):
    """A connect or read deadline passed."""

    kind = "timeout"


class UpstreamStatusError(PerplexityError):
    """Perplexity answered a request with an error status."""

    kind = "status"

    def __init__(
        self, message: str, *, status_code: int, body_excerpt: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body_excerpt = body_excerpt
        self.retry_after = retry_after


class BadRequestError(UpstreamStatusError):
    """Perplexity refused the request itself (4xx other than auth and rate limits)."""

    kind = "bad_request"


class AuthenticationError(UpstreamStatusError):
    """The session cookie was rejected: it is wrong, expired or logged out."""

    kind = "auth"


class CloudflareChallengeError(UpstreamStatusError):
    """Cloudflare answered with a bot challenge page instead of Perplexity."""

    kind = "cloudflare"


class ThreadNotFoundError(UpstreamStatusError):
    """The thread (or entry) named in the request no longer exists."""

    kind = "thread_not_found"


class RateLimitError(UpstreamStatusError):
    """Perplexity rate limited the account (HTTP 429)."""

    kind = "rate_limit"


class UpstreamServerError(UpstreamStatusError):
    """Perplexity failed with a 5xx status."""

    kind = "upstream_5xx"


class StreamError(PerplexityError):
    """The answer stream broke after it had started; carries what had arrived so far."""

    kind = "stream"

    def __init__(self, message: str, *, partial_answer: str = "") -> None:
        super().__init__(message)
        self.partial_answer = partial_answer


class MalformedFrameError(StreamError):
    """A frame could not be decoded as one JSON object, or the response was not an SSE stream."""

    kind = "malformed"


class StreamTruncatedError(StreamError):
    """The stream ended, or the connection dropped, before Perplexity sent a COMPLETED frame."""

    kind = "truncated"


class AskFailedError(StreamError):
    """Perplexity reported the run as failed (`status: FAILED` or an `error_code`)."""

    kind = "failed"

    def __init__(self, message: str, *, code: str | None = None, partial_answer: str = "") -> None:
        super().__init__(message, partial_answer=partial_answer)
        self.code = code


class AskRateLimitedError(AskFailedError):
    """The run failed because the account hit a rate limit (an in-stream `error_code`)."""

    kind = "rate_limit"


class UploadError(PerplexityError):
    """A file could not be validated, presigned or uploaded."""

    kind = "upload"
