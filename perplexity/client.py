"""PerplexityClient: asks, follow-ups, uploads and account calls against Perplexity's web app API."""

from __future__ import annotations

import base64
import binascii
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .catalogue import Catalogue, parse_catalogue
from .errors import (
    ConfigurationError,
    MalformedFrameError,
    PerplexityError,
    RateLimitError,
    UploadError,
    UpstreamConnectError,
    UpstreamServerError,
    UpstreamStatusError,
    redact,
)
from .extract import JSONDecodeError, loads
from .payload import API_VERSION, build_ask_payload
from .session import SessionCookie
from .status import error_for_status
from .stream import AskStream
from .transport import Transport, TransportResponse, make_transport, resolve_impersonation
from .types import (
    AskOptions,
    AskResult,
    ModeQuota,
    RateLimitStatus,
    SessionInfo,
    ThreadExport,
    ThreadIds,
    ThreadSummary,
)
from .uploads import MAX_UPLOAD_BYTES, attachment_url, presign_body, presigned_target, validate_upload

__all__ = ["DEFAULT_BASE_URL", "PerplexityClient"]

DEFAULT_BASE_URL = "https://www.perplexity.ai"
_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
_QUERY = {"version": API_VERSION, "source": "default"}

log = logging.getLogger(__name__)


class PerplexityClient:
    """One client per process (or gevent worker): one transport, one connection pool, one cookie."""

    def __init__(
        self,
        session_token: str | None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        transport: Transport | None = None,
        impersonate: str | None = "auto",
        pool_size: int = 64,
        ca_bundle: str | None = None,
        proxy: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_retry_after: float = 20.0,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        on_token_rotated: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cookie = SessionCookie(session_token, on_rotate=on_token_rotated)
        if transport is None:
            # `proxy` (perplexity.proxy) carries every request of this client: one account, one exit.
            transport = make_transport(
                base_url=self.base_url,
                impersonate=resolve_impersonation(impersonate, self.base_url),
                pool_size=pool_size,
                ca_bundle=ca_bundle,
                proxy=proxy,
            )
        elif proxy:
            raise ConfigurationError("pass the proxy to the transport given to the client, not to the client")
        self.transport = transport
        self.timeout = (connect_timeout, read_timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.max_upload_bytes = max_upload_bytes
        self._sleep = sleep
        self.user_id: str | None = None
        self.open_streams = 0

    def __repr__(self) -> str:
        return f"PerplexityClient({self.base_url!r}, transport={self.transport.name!r}, {self.cookie!r})"

    def __enter__(self) -> PerplexityClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.transport.close()

    # ---- asking ---------------------------------------------------------------------------

    def ask(self, query: str, options: AskOptions | None = None) -> AskStream:
        """Send an ask and return its open stream; errors before the first byte raise here."""
        options = options or AskOptions()
        if not query.strip():
            raise ConfigurationError("The query is empty.")
        request_id = str(uuid.uuid4())
        body = build_ask_payload(query, options, request_id)
        headers = {"accept": "text/event-stream", "x-request-id": request_id}
        if options.follow_up is not None:
            headers["x-perplexity-request-reason"] = "ask-input-inner-followup"
            if options.follow_up.thread_url_slug:
                headers["referer"] = f"{self.base_url}/search/{options.follow_up.thread_url_slug}"
        response = self._request(
            "POST",
            "/rest/sse/perplexity_ask",
            json=body,
            headers=headers,
            stream=True,
            what="ask",
            thread_call=options.follow_up is not None,
        )
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            response.close()
            raise MalformedFrameError(
                f"Perplexity answered the ask with {content_type or 'no content type'} instead of an event stream."
            )
        self.open_streams += 1
        return AskStream(response, request_id=request_id, on_close=self._stream_closed)

    def ask_complete(self, query: str, options: AskOptions | None = None) -> AskResult:
        """Ask and wait for the whole answer."""
        with self.ask(query, options) as stream:
            return stream.collect()

    def _stream_closed(self, stream: AskStream) -> None:
        self.open_streams -= 1

    # ---- account --------------------------------------------------------------------------

    def session(self) -> SessionInfo:
        """Ask `/api/auth/session` whether the cookie is logged in (200 `{}` means it is not)."""
        if not self.cookie.present:
            return SessionInfo(valid=False)
        data = self._get_json("/api/auth/session", query=False, what="session check")
        user = data.get("user") if isinstance(data, dict) else None
        if not isinstance(user, dict):
            return SessionInfo(valid=False)
        self.user_id = str(user.get("id")) if user.get("id") else None
        tier = user.get("subscription_tier") or user.get("payment_tier")
        return SessionInfo(
            valid=True,
            user_id=self.user_id,
            email=user.get("email"),
            tier=str(tier).lower() if tier else None,
            expires=data.get("expires") if isinstance(data.get("expires"), str) else None,
        )

    def catalogue(self) -> Catalogue:
        """The model catalogue (`/rest/models/config`)."""
        return parse_catalogue(self._get_json("/rest/models/config", what="model catalogue"))

    def rate_limits(self) -> RateLimitStatus:
        """Per-mode availability (`/rest/rate-limit/status`)."""
        data = self._get_json("/rest/rate-limit/status", what="rate-limit status")
        data = data if isinstance(data, dict) else {}
        modes = data.get("modes") if isinstance(data.get("modes"), dict) else {}
        return RateLimitStatus(
            modes={name: _quota(value) for name, value in modes.items()},
            free_queries=_quota(data["free_queries"]) if "free_queries" in data else None,
        )

    def delete_thread(self, thread: ThreadIds) -> None:
        """Delete a thread by its latest entry (needs the thread's read_write_token)."""
        body = {"entry_uuid": thread.backend_uuid, "read_write_token": thread.read_write_token}
        self._request(
            "DELETE",
            "/rest/thread/delete_thread_by_entry_uuid",
            json=body,
            what="thread delete",
            thread_call=True,
        ).close()

    def export_thread(self, thread: ThreadIds) -> ThreadExport:
        """The thread as Markdown, named by its title (`/rest/thread/export`)."""
        answer = self._post_json(
            "/rest/thread/export", {"thread_uuid": thread.backend_uuid, "format": "md"}, what="thread export"
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("file_content_64"), str):
            raise MalformedFrameError("Perplexity's thread export answer has no file content.")
        try:
            markdown = base64.b64decode(answer["file_content_64"]).decode("utf-8", "replace")
        except (binascii.Error, ValueError) as exc:
            raise MalformedFrameError("Perplexity's thread export is not valid base64.") from exc
        return ThreadExport(filename=str(answer.get("filename") or "thread.md"), markdown=markdown)

    def list_threads(self, *, limit: int = 20, offset: int = 0) -> list[ThreadSummary]:
        """The account's library, newest first (incognito asks never appear here)."""
        body = {"limit": limit, "ascending": False, "offset": offset, "search_term": ""}
        answer = self._post_json("/rest/thread/list_ask_threads", body, what="thread list")
        items = answer if isinstance(answer, list) else []
        return [
            ThreadSummary(
                title=str(item.get("title") or ""),
                slug=item.get("slug"),
                context_uuid=item.get("context_uuid"),
                entry_uuid=item.get("uuid") or item.get("backend_uuid"),
                last_query_at=item.get("last_query_datetime"),
            )
            for item in items
            if isinstance(item, dict)
        ]

    # ---- uploads --------------------------------------------------------------------------

    def upload(self, filename: str, content: bytes, content_type: str | None = None) -> str:
        """Upload a file and return the URL to pass in `AskOptions.attachments`."""
        upload = validate_upload(filename, content, content_type, max_bytes=self.max_upload_bytes)
        key, body = presign_body(upload)
        answer = self._post_json("/rest/uploads/batch_create_upload_urls", body, what="upload presign")
        bucket, fields, object_url = presigned_target(answer, key)
        _check_upload_host(bucket)
        files = {"file": (upload.filename, upload.content, upload.content_type)}
        try:
            # The bucket is S3/Cloudinary, not Perplexity: no cookie, no Perplexity headers.
            response = self.transport.request(
                "POST",
                bucket,
                headers={"user-agent": _USER_AGENT},
                data=fields,
                files=files,
                timeout=self.timeout,
            )
        except PerplexityError as exc:
            # The transport's text names hosts and libcurl's codes: the kind is what a client can act on.
            raise UploadError(f"Uploading {upload.filename!r} failed ({exc.kind}).") from exc
        try:
            raw = response.read(65536)
            if response.status_code not in (200, 201, 204):
                raise UploadError(f"The file store refused {upload.filename!r} with HTTP {response.status_code}.")
        finally:
            response.close()
        return attachment_url(object_url, _json_or_none(raw))

    # ---- plumbing -------------------------------------------------------------------------

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {
            "accept": "application/json",
            "accept-language": "en-US,en;q=0.9",
            "accept-encoding": "gzip, deflate",
            "content-type": "application/json",
            "origin": self.base_url,
            "referer": self.base_url + "/",
            "x-app-apiclient": "default",
            "x-app-apiversion": API_VERSION,
        }
        if not self.transport.name.startswith("curl_cffi"):
            # An impersonating transport sends its browser's own user agent; a different one would
            # contradict the TLS fingerprint Cloudflare checks.
            headers["user-agent"] = _USER_AGENT
        if self.user_id:
            headers["x-pplx-account"] = self.user_id
        headers.update(extra or {})
        if self.cookie.present:
            headers["cookie"] = self.cookie.header()
        return headers

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        query: bool = True,
        what: str = "request",
        thread_call: bool = False,
    ) -> TransportResponse:
        """Send one request with retries (connect errors, 429, 5xx) and return a 2xx response."""
        if not self.cookie.present:
            raise ConfigurationError(
                "No Perplexity session token: set PERPLEXITY_SESSION_TOKEN to the value of the "
                "__Secure-next-auth.session-token cookie from a logged-in perplexity.ai browser session."
            )
        attempt = 0
        while True:
            try:
                return self._attempt(method, path, json, headers, stream, query, what, thread_call)
            except (UpstreamConnectError, RateLimitError, UpstreamServerError) as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                attempt += 1
                log.warning("Perplexity %s failed (%s); retry %d in %.2fs", what, exc.kind, attempt, delay)
                self._sleep(delay)

    def _attempt(
        self,
        method: str,
        path: str,
        json: Any,
        headers: Mapping[str, str] | None,
        stream: bool,
        query: bool,
        what: str,
        thread_call: bool,
    ) -> TransportResponse:
        response = self.transport.request(
            method,
            self.base_url + path,
            headers=self._headers(headers),
            params=_QUERY if query else None,
            json=json,
            stream=stream,
            timeout=self.timeout,
        )
        self.cookie.update_from(response.set_cookies)
        if response.status_code < 400:
            return response
        try:
            body = response.read(65536).decode("utf-8", "replace")
        finally:
            response.close()
        error = error_for_status(response.status_code, response.headers, body, what=what, thread_call=thread_call)
        error.body_excerpt = redact(error.body_excerpt, *self.cookie.secrets())
        raise error

    def _retry_delay(self, exc: PerplexityError, attempt: int) -> float | None:
        """Seconds to wait before the next try, or None to give up."""
        if attempt >= self.max_retries:
            return None
        if isinstance(exc, UpstreamStatusError) and exc.retry_after is not None:
            # Honour retry-after, but a long wait is better reported than slept through.
            return exc.retry_after if exc.retry_after <= self.max_retry_after else None
        # Exponential backoff with full jitter, as the OpenAI SDK and AK do.
        return random.uniform(0.5, 1.0) * min(self.backoff * (2**attempt), 8.0)

    def _get_json(self, path: str, *, query: bool = True, what: str) -> Any:
        response = self._request("GET", path, query=query, what=what)
        return self._read_json(response, what)

    def _post_json(self, path: str, body: Any, *, what: str) -> Any:
        return self._read_json(self._request("POST", path, json=body, what=what), what)

    def _read_json(self, response: TransportResponse, what: str) -> Any:
        try:
            raw = response.read(8 << 20)
        finally:
            response.close()
        value = _json_or_none(raw)
        if value is None and raw.strip():
            raise MalformedFrameError(f"Perplexity's {what} answer is not JSON.")
        return value


def _json_or_none(raw: bytes) -> Any:
    try:
        return loads(raw) if raw.strip() else None
    except JSONDecodeError:
        return None


def _quota(value: Any) -> ModeQuota:
    value = value if isinstance(value, dict) else {}
    detail = value.get("remaining_detail") if isinstance(value.get("remaining_detail"), dict) else {}
    remaining = detail.get("remaining") if detail.get("kind") == "exact" else None
    return ModeQuota(
        available=bool(value.get("available")),
        remaining=remaining if isinstance(remaining, int) else None,
        resets_at=_reset_time(detail.get("resets_at", value.get("resets_at", detail.get("reset_at")))),
    )


def _reset_time(value: Any) -> float | None:
    """A reset time as epoch seconds (a number or an ISO 8601 string); None when absent or unreadable. No capture
    shows Perplexity sending one; when it does, the pool uses it for cooldowns and Retry-After."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _check_upload_host(url: str) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise UploadError("Perplexity's upload presign answer named a bucket URL that is not http(s).")
