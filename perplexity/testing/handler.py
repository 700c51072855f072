"""The request handlers of the fake upstream: parsing, recording, routing and endpoint faults."""

from __future__ import annotations

import json
import re
import socket
import sys
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .faults import Canned, cf_ray, fault_response, json_body
from .script import PRE_STREAM_FAULTS, Fault, RecordedRequest
from .wire import BodyStream, ChunkedStream, ClientGone, ServerStopping, reset_socket

if TYPE_CHECKING:
    from .accounts import FakeAccount
    from .script import ThreadRecord
    from .server import FakePerplexity

__all__ = ["ASK_PATH", "COOKIE_NAME", "FakeHandler", "RouteHandler", "route"]

ASK_PATH = "/rest/sse/perplexity_ask"
COOKIE_NAME = "__Secure-next-auth.session-token"

Route = Callable[["RouteHandler", RecordedRequest, dict[str, str]], None]
_ROUTES: list[tuple[frozenset[str], re.Pattern[str], Route]] = []


def route(methods: str, pattern: str) -> Callable[[Route], Route]:
    """Register an endpoint function for `methods` (space-separated) and a full-match path regex."""

    def register(func: Route) -> Route:
        _ROUTES.append((frozenset(methods.split()), re.compile(pattern), func))
        return func

    return register


class RouteHandler:
    """What routes see of one request, whatever the wire (HTTP/1.1 here, HTTP/2 in h2conn.py).

    Subclasses set `command`, `path`, `requestline`, `headers` (an http.client-style message: case-insensitive
    `get` and `get_all`) and `close_connection`, and provide the body reader and the sending primitives:
    `send_bytes`, `start_stream`, `chunked` and `reset_connection`.
    """

    http_version = "1.1"
    command: str
    path: str
    requestline: str
    headers: Any
    close_connection: bool
    # The account the request's cookie names (valid or not), set by serve_request; None for none.
    account: FakeAccount | None = None

    @property
    def fake(self) -> FakePerplexity:
        raise NotImplementedError

    # ---- request side ---------------------------------------------------------------------------

    def serve_request(self) -> None:
        """Record the request, then answer it: endpoint fault, canned answer, route or 404."""
        try:
            request = self._read_request()
            self.account = self.fake.account_of(self.session_cookie())
            request.account = self.account.label if self.account is not None else None
            self.fake.record(request)
            fault = self.fake.take_path_fault(request.path)
            if fault is not None and self.apply_endpoint_fault(fault):
                return
            if request.path in self.fake.canned:
                status, content_type, body = self.fake.canned[request.path]
                self.send_bytes(status, body, [("Content-Type", content_type)])
                return
            for methods, pattern, func in _ROUTES:
                match = pattern.fullmatch(request.path)
                if match and self.command in methods:
                    func(self, request, match.groupdict())
                    return
            self.send_json(404, {"detail": "Not Found"})
        except (ClientGone, ServerStopping, OSError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: make it loud, not a silent hang-up
            self._report_bug(exc)

    def _report_bug(self, exc: Exception) -> None:
        self.close_connection = True
        self.fake.errors.append(exc)
        traceback.print_exc(file=sys.stderr)
        try:
            self.send_json(500, {"detail": f"fake upstream bug: {exc!r}"})
        except Exception:  # headers may already be out; the connection is dropped anyway
            pass

    def _read_request(self) -> RecordedRequest:
        parts = urlsplit(self.path)
        body = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            joiner = "; " if key == "cookie" else ", "
            headers[key] = f"{headers[key]}{joiner}{value}" if key in headers else value
        return RecordedRequest(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=headers,
            json=_json_or_none(body),
            body=body,
            http_version=self.http_version,
        )

    def _read_body(self) -> bytes:
        raise NotImplementedError

    def session_cookie(self) -> str | None:
        """Return the session cookie, joining NextAuth's chunked `.0`, `.1`, ... cookies."""
        jar: dict[str, str] = {}
        for header in self.headers.get_all("Cookie") or []:
            for pair in header.split(";"):
                name, sep, value = pair.strip().partition("=")
                if sep:
                    jar[name] = value
        if COOKIE_NAME in jar:
            return jar[COOKIE_NAME]
        pieces = []
        while f"{COOKIE_NAME}.{len(pieces)}" in jar:
            pieces.append(jar[f"{COOKIE_NAME}.{len(pieces)}"])
        return "".join(pieces) or None

    def logged_in(self) -> bool:
        return self.fake.authenticated(self.session_cookie())

    @property
    def label(self) -> str | None:
        """The label of the request's account (None without a known cookie)."""
        return self.account.label if self.account is not None else None

    def own_thread(self, entry: str | None) -> ThreadRecord | None:
        """The thread holding `entry` if the request's account created it; None for unknown or foreign ones."""
        thread = self.fake.thread_of_entry(entry)
        return thread if thread is not None and thread.account == self.label else None

    # ---- response side --------------------------------------------------------------------------

    def send_bytes(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        """Send a complete response with Content-Length (none for 204)."""
        raise NotImplementedError

    def start_stream(self, extra_headers: list[tuple[str, str]] | None = None) -> BodyStream:
        """Send the 200 headers of an SSE response and return its body writer."""
        raise NotImplementedError

    def chunked(self) -> BodyStream:
        """A body writer for this response (its headers must be out before it sends)."""
        raise NotImplementedError

    def reset_connection(self) -> None:
        """Break the response off the way a crashed upstream or proxy would."""
        raise NotImplementedError

    def send_json(self, status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_bytes(status, json_body(value), [("Content-Type", "application/json"), *(headers or [])])

    def send_canned(self, canned: Canned) -> None:
        status, headers, body = canned
        self.send_bytes(status, body, headers)

    def not_logged_in(self) -> None:
        """Answer like an expired or bad session cookie: 403 with a JSON body."""
        self.send_json(403, {"detail": "Not authenticated: the session has expired or is invalid."})

    def apply_endpoint_fault(self, fault: Fault) -> bool:
        """Apply a `fault_for()` fault; return True if it answered the request itself."""
        kind = fault.kind
        if kind in PRE_STREAM_FAULTS:
            self.send_canned(fault_response(fault, self.requestline))
        elif kind in ("slow_first_byte", "stall"):
            self.chunked().wait(fault.delay)
            return False
        elif kind == "reset":
            self.reset_connection()
        elif kind in ("eof", "truncated"):
            # No response at all: HTTP/1.1 closes the connection; HTTP/2 resets the unanswered stream.
            self.close_connection = True
        elif kind == "malformed":
            self.send_bytes(200, b'{"results": {"truncated', [("Content-Type", "application/json")])
        elif kind == "rate_limited_in_stream":
            self.send_canned(fault_response(Fault("rate_limit", retry_after=fault.retry_after)))
        else:
            self.send_canned(fault_response(Fault("server_error", status=fault.status)))
        return True


class FakeHandler(RouteHandler, BaseHTTPRequestHandler):
    """One HTTP/1.1 connection (plain or TLS); keep-alive, so it may serve several requests in turn."""

    protocol_version = "HTTP/1.1"
    server: Any  # the _Server, which carries `.fake`

    @property
    def fake(self) -> FakePerplexity:
        return self.server.fake

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle plus the client's delayed
        # ACK would add ~40 ms to every keep-alive response and hold back small SSE frames.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake.track_connection(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake.track_connection(self.connection, False)

    def version_string(self) -> str:
        return "cloudflare"  # every real response comes through Cloudflare

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean; the fake records requests in `fake.requests` instead."""

    def do_GET(self) -> None:
        self.serve_request()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            pieces = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(pieces)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_bytes(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("cf-ray", cf_ray(self.requestline))
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204 and body:
            self.wfile.write(body)

    def start_stream(self, extra_headers: list[tuple[str, str]] | None = None) -> ChunkedStream:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("cf-ray", cf_ray(self.requestline))
        for name, value in extra_headers or []:
            self.send_header(name, value)
        self.end_headers()
        return self.chunked()

    def chunked(self) -> ChunkedStream:
        return ChunkedStream(self.connection, self.wfile, self.fake.cancel_check())

    def reset_connection(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed upstream or proxy would."""
        self.close_connection = True
        reset_socket(self.connection)
        # rfile and wfile hold references to the socket; all three must close for the RST to go out.
        self.wfile.close()
        self.rfile.close()
        self.connection.close()


def _json_or_none(body: bytes) -> Any | None:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
