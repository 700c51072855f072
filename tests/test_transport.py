"""Tests for both HTTP transports against a scripted HTTP server on 127.0.0.1, with and without gevent."""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

from perplexity.errors import ConfigurationError, TransportError, UpstreamConnectError, UpstreamTimeoutError
from perplexity.transport import (
    CurlTransport,
    RequestsTransport,
    make_transport,
    parse_set_cookies,
    resolve_impersonation,
)

from .h2_upstream import H2Upstream

ROOT = Path(__file__).resolve().parents[1]
SECRET = "__Secure-next-auth.session-token=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0.SECRETVALUE123"


# --- the scripted server -----------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    """Behaviour by path; query parameters tune it. `tag=x` lets a test ask whether the client left."""

    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route = getattr(self, "route_" + url.path.strip("/").replace("-", "_"), None)
        if route is None:
            self.send_error(404)
            return
        try:
            route()
        except (BrokenPipeError, ConnectionResetError):
            self.client_gone()

    do_POST = do_PUT = do_GET

    # helpers

    def number(self, name: str, default: float) -> float:
        return float(self.query.get(name, default))

    def client_gone(self) -> None:
        self.server.gone(self.query.get("tag", "")).set()
        self.close_connection = True

    def start_chunked(self, content_type: str = "text/event-stream") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def wait_for_client_to_leave(self, seconds: float) -> None:
        """Hold the connection open; return early (recording it) if the client closes it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.server.stop.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable:
                try:
                    data = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    data = b""
                if not data:
                    self.client_gone()
                    return

    def send_body(self, body: bytes, status: int = 200, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # routes

    def route_sse(self) -> None:
        """`n` events, `gap` seconds apart, then the chunked terminator."""
        self.start_chunked()
        for i in range(int(self.number("n", 5))):
            if i:
                time.sleep(self.number("gap", 0.05))
            self.chunk(b'event: message\r\ndata: {"i": %d}\r\n\r\n' % i)
        self.chunk(b"event: end_of_stream\r\ndata: {}\r\n\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def route_close_delimited(self) -> None:
        """No Content-Length and no chunking: the body ends when the server closes (HTTP/1.0 style)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for i in range(int(self.number("n", 3))):
            if i:
                time.sleep(self.number("gap", 0.05))
            self.wfile.write(b"data: %d\n\n" % i)
        self.close_connection = True

    def route_late(self) -> None:
        """Answer after `delay` seconds (a server that never answers, for the client's timeout)."""
        self.wait_for_client_to_leave(self.number("delay", 30))
        if not self.close_connection:
            self.send_body(b"{}")

    def route_stall(self) -> None:
        """Send `n` events, then go quiet without closing."""
        self.start_chunked()
        for i in range(int(self.number("n", 1))):
            self.chunk(b"data: %d\n\n" % i)
        self.wait_for_client_to_leave(self.number("hold", 30))

    def route_reset(self) -> None:
        """Send `n` events, then reset the connection (RST, not FIN). n=-1: reset before any response."""
        n = int(self.number("n", 1))
        if n >= 0:
            self.start_chunked()
            for i in range(n):
                self.chunk(b"data: %d\n\n" % i)
            self.wfile.flush()
            time.sleep(0.05)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def route_truncated(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True

    def route_cookies(self) -> None:
        """Sets two cookies; the body is the Cookie header the request carried ("-" if none)."""
        body = (self.headers.get("Cookie") or "-").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Set-Cookie", "a=1; Path=/; HttpOnly")
        self.send_header("Set-Cookie", "b=two; Domain=.perplexity.ai; Expires=Wed, 21 Oct 2035 07:28:00 GMT; Secure")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.send_body(
            json.dumps(
                {
                    "method": self.command,
                    "query": self.query,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("latin-1"),
                }
            ).encode()
        )

    def route_gzip(self) -> None:
        body = gzip.compress(b"data: compressed\n\n" * 100)
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_big(self) -> None:
        """`size` bytes of a position-dependent pattern, in 64 KiB chunks."""
        size = int(self.number("size", 1 << 20))
        self.start_chunked("application/octet-stream")
        for start in range(0, size, 65536):
            self.chunk(pattern(start, min(size, start + 65536)))
        self.wfile.write(b"0\r\n\r\n")

    def route_then_close(self) -> None:
        """A keep-alive response after which the server closes the connection anyway (a stale pooled socket)."""
        self.send_body(b"bye")
        self.close_connection = True

    def route_peer(self) -> None:
        """The client's port: the same one on two requests means they shared a connection."""
        self.send_body(str(self.client_address[1]).encode())

    def route_status(self) -> None:
        self.send_body(b'{"detail":"nope"}', status=int(self.number("code", 503)))


def pattern(start: int, end: int) -> bytes:
    return bytes(i % 251 for i in range(start, end))


class ScriptedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the gevent test opens 100 streams at once (socketserver's default is 5)

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self._gone: dict[str, threading.Event] = {}

    def gone(self, tag: str) -> threading.Event:
        with self.lock:
            return self._gone.setdefault(tag, threading.Event())

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that leave mid-response are the point of several tests

    def url(self, path: str) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    yield from serve(ScriptedServer())


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ScriptedServer, Path]]:
    """The scripted server over TLS, with a certificate for 127.0.0.1 from a throwaway CA (and that CA's file)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    srv = ScriptedServer()
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    for served in serve(srv):
        yield served, ca_file


@pytest.fixture(scope="module")
def h2_server() -> Iterator[H2Upstream]:
    """The scripted routes over TLS + HTTP/2 (ALPN offers h2 only), with its own throwaway CA (`ca_path`)."""
    with H2Upstream("h2", max_streams=128) as upstream:
        yield upstream


def serve(srv: ScriptedServer) -> Iterator[ScriptedServer]:
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(params=["requests", "curl"])
def transport(request: pytest.FixtureRequest) -> Iterator[RequestsTransport | CurlTransport]:
    if request.param == "curl":
        t = CurlTransport(impersonate="chrome")
    else:
        t = RequestsTransport(pool_size=8)
    yield t
    t.close()


TIMEOUT = (2.0, 5.0)


def get(transport, url: str, *, stream: bool = True, timeout=TIMEOUT, headers=None):
    return transport.request("GET", url, headers=headers or {}, stream=stream, timeout=timeout)


# --- status, headers, cookies ------------------------------------------------------------------------


def test_status_headers_and_set_cookies(server, transport):
    response = get(transport, server.url("/cookies"), stream=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["CONTENT-LENGTH"] == "1"
    assert response.set_cookies == {"a": "1", "b": "two"}
    assert response.read() == b"-"
    response.close()
    response.close()  # idempotent


def test_cookies_are_never_kept_between_requests(server, transport):
    get(transport, server.url("/cookies"), stream=False).close()
    again = get(transport, server.url("/cookies"), stream=False)
    assert again.read() == b"-"
    explicit = get(transport, server.url("/cookies"), stream=False, headers={"Cookie": "s=1"})
    assert explicit.read() == b"s=1"


def test_error_status_is_returned_not_raised(server, transport):
    response = get(transport, server.url("/status?code=503"), stream=False)
    assert response.status_code == 503
    assert response.read() == b'{"detail":"nope"}'


def test_body_encoding_is_the_same_for_both_transports(server, transport):
    def echo(method: str, **kwargs) -> dict:
        response = transport.request(method, server.url("/echo"), headers={"X-Test": "1"}, timeout=TIMEOUT, **kwargs)
        return json.loads(response.read())

    sent = echo("POST", json={"q": "café"}, params={"version": "2.18"})
    assert sent["method"] == "POST" and sent["query"] == {"version": "2.18"}
    assert json.loads(sent["body"].encode("latin-1")) == {"q": "café"}  # raw UTF-8 or \u-escaped: both JSON
    assert sent["headers"]["content-type"] == "application/json" and sent["headers"]["x-test"] == "1"
    form = echo("POST", data={"a": "1", "b": "x y"})
    assert form["body"] == "a=1&b=x+y"
    upload = echo("POST", data={"key": "k"}, files={"file": ("note.txt", b"hello", "text/plain")})
    assert upload["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert 'name="key"' in upload["body"] and 'filename="note.txt"' in upload["body"]
    assert "hello" in upload["body"]
    assert echo("PUT", data=b"raw")["method"] == "PUT"
    assert echo("GET")["body"] == ""
    empty_post = echo("POST")
    assert empty_post["method"] == "POST" and empty_post["headers"]["content-length"] == "0"


def test_gzip_body_is_decoded(server, transport):
    assert get(transport, server.url("/gzip"), stream=False).read() == b"data: compressed\n\n" * 100


def test_keep_alive_connection_is_reused(server, transport):
    get(transport, server.url("/echo"), stream=False).close()
    before = server.connections
    for _ in range(3):
        response = get(transport, server.url("/sse?n=2&gap=0"))
        assert b"end_of_stream" in b"".join(response.iter_bytes())
        response.close()
    assert server.connections == before


# --- streaming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/sse?n=5&gap=0.3", "/close-delimited?n=5&gap=0.3"])
def test_chunks_arrive_as_soon_as_they_are_sent(server, transport, path):
    start = time.monotonic()
    response = get(transport, server.url(path))
    arrivals = []
    for chunk in response.iter_bytes():
        arrivals.append((time.monotonic() - start, chunk))
    response.close()
    events = [c for _, c in arrivals if b"data" in c]
    assert len(events) >= 5
    # Each event is delivered when sent (0, 0.3, 0.6 ... s), not held back for a 512-byte buffer.
    for i, (at, _) in enumerate(arrivals[:5]):
        assert 0.3 * i - 0.05 <= at <= 0.3 * i + 0.25, (i, at)


def test_read_limit_cuts_a_long_body(server, transport):
    response = get(transport, server.url("/big?size=3000000"))
    assert response.read(limit=1000) == pattern(0, 1000)


def test_large_stream_is_complete_and_in_order(server, transport):
    # Bigger than the curl transport's pause threshold, so its backpressure path runs too.
    size = 6 * 1024 * 1024
    response = get(transport, server.url(f"/big?size={size}"))
    body = b"".join(response.iter_bytes())
    response.close()
    assert len(body) == size and body == pattern(0, size)


# --- failures ----------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused(transport):
    with pytest.raises(UpstreamConnectError, match="127.0.0.1") as info:
        get(transport, f"http://127.0.0.1:{closed_port()}/", headers={"Cookie": SECRET})
    assert "SECRETVALUE" not in str(info.value)


def test_connect_timeout_is_a_connect_error():
    # A listener with a full accept queue drops further SYNs, so connect() hangs: loopback only.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        for transport in (RequestsTransport(), CurlTransport()):
            # The read timeout (5 s) would give a read error: this one is the connect timeout's.
            with pytest.raises(UpstreamConnectError, match="timed out connecting"):
                get(transport, f"http://127.0.0.1:{port}/", timeout=(0.3, 5))
            transport.close()


def test_read_timeout_before_headers(server, transport):
    with pytest.raises(UpstreamTimeoutError) as info:  # the headers would come after 30 s
        get(transport, server.url("/late?delay=30&tag=late-" + transport.name), timeout=(2, 0.5))
    assert "SECRETVALUE" not in str(info.value)


def test_read_timeout_mid_body(server, transport):
    response = get(transport, server.url("/stall?n=1"), timeout=(2, 0.5), headers={"Cookie": SECRET})
    chunks = response.iter_bytes()
    assert next(chunks) == b"data: 0\n\n"
    start = time.monotonic()
    with pytest.raises(UpstreamTimeoutError) as info:
        next(chunks)
    assert time.monotonic() - start >= 0.4  # the stall never ends: only the read timeout ends the wait
    assert "SECRETVALUE" not in str(info.value)
    response.close()


def test_reset_mid_body(server, transport):
    response = get(transport, server.url("/reset?n=1"))
    with pytest.raises(TransportError) as info:
        b"".join(response.iter_bytes())
    assert not isinstance(info.value, (UpstreamTimeoutError, UpstreamConnectError))
    response.close()


def test_reset_before_response_is_not_a_connect_error(server, transport):
    # The request was sent, so it must not look safe to retry.
    with pytest.raises(TransportError) as info:
        get(transport, server.url("/reset?n=-1"))
    assert not isinstance(info.value, (UpstreamTimeoutError, UpstreamConnectError))


def test_truncated_body(server, transport):
    with pytest.raises(TransportError) as info:
        get(transport, server.url("/truncated"), stream=False)
    assert not isinstance(info.value, (UpstreamTimeoutError, UpstreamConnectError))


# --- early close -------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["sse?n=500&gap=0.02", "stall?n=1"])
def test_early_close_is_seen_by_the_server(server, transport, route):
    tag = f"early-{transport.name}-{route[:4]}"
    response = get(transport, server.url(f"/{route}&tag={tag}"))
    next(response.iter_bytes())
    response.close()  # on a stall that never ends: a close that waited for the upstream would hang here
    assert server.gone(tag).wait(5), "the server never saw the client leave"
    assert list(response.iter_bytes()) == []


# --- TLS and HTTP/2 (the production path) -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["requests", "curl"])
def test_tls_trusts_the_given_ca_bundle(tls_server, kind):
    secure, ca_file = tls_server
    make = RequestsTransport if kind == "requests" else CurlTransport
    trusting = make(ca_bundle=str(ca_file))
    try:
        ports = {get(trusting, secure.url("/peer"), stream=False).read() for _ in range(3)}
        assert len(ports) == 1  # one TLS connection, kept alive
    finally:
        trusting.close()
    default = make()  # certifi's bundle does not know the test CA
    try:
        with pytest.raises(UpstreamConnectError, match="could not connect"):
            get(default, secure.url("/peer"), stream=False)
    finally:
        default.close()


@pytest.fixture
def h2(h2_server) -> Iterator[CurlTransport]:
    t = CurlTransport(impersonate="chrome", pool_size=4, ca_bundle=h2_server.ca_path)
    yield t
    t.close()


def test_h2_chunks_arrive_as_soon_as_they_are_sent(h2_server, h2):
    start = time.monotonic()
    response = get(h2, h2_server.url("/sse?n=5&gap=0.3"))
    arrivals = [time.monotonic() - start for chunk in response.iter_bytes() if b"data" in chunk]
    response.close()
    assert len(arrivals) == 6  # five events and the end_of_stream one
    for i, at in enumerate(arrivals[:5]):
        assert 0.3 * i - 0.05 <= at <= 0.3 * i + 0.25, (i, at)


def test_h2_large_body_is_complete_and_in_order(h2_server, h2):
    size = 6 * 1024 * 1024  # past the pause bound and the stream's flow-control window
    response = get(h2, h2_server.url(f"/big?size={size}"))
    body = b"".join(response.iter_bytes())
    response.close()
    assert body == pattern(0, size)


def test_h2_reset_stream_is_a_transport_error_while_a_sibling_completes(h2_server, h2):
    before = h2_server.connections
    sibling = get(h2, h2_server.url("/sse?n=10&gap=0.05"))
    reset = get(h2, h2_server.url("/reset?n=1"))
    with pytest.raises(TransportError) as info:
        b"".join(reset.iter_bytes())
    assert not isinstance(info.value, (UpstreamTimeoutError, UpstreamConnectError))
    assert b"".join(sibling.iter_bytes()).count(b"event: message") == 10
    reset.close()
    sibling.close()
    assert h2_server.connections - before <= 1  # both streams on one connection, which the reset left alone


def test_h2_client_that_leaves_is_seen_by_the_server(h2_server, h2):
    sibling = get(h2, h2_server.url("/stall?n=1&tag=h2-sibling"))
    response = get(h2, h2_server.url("/stall?n=1&tag=h2-leave"))
    next(response.iter_bytes())
    response.close()  # on a stall that never ends: a close that waited for the upstream would hang here
    assert h2_server.gone("h2-leave").wait(5), "the server never saw the stream reset"
    assert not h2_server.gone("h2-sibling").is_set()  # just that stream: the connection lives on
    assert list(response.iter_bytes()) == []
    sibling.close()


def test_h2_streams_are_multiplexed_on_few_connections(h2_server, h2):
    before = h2_server.connections
    responses = [get(h2, h2_server.url("/stall?n=1&hold=10")) for _ in range(100)]
    try:
        assert all(next(r.iter_bytes()) == b"data: 0\n\n" for r in responses)
        assert h2_server.open_streams >= 100
        assert h2_server.connections - before <= 2
        ports = {int(get(h2, h2_server.url("/peer"), stream=False).read()) for _ in range(3)}
        assert len(ports) == 1
    finally:
        for response in responses:
            response.close()


def test_h2_idle_ticks_and_read_timeout(h2_server, h2):
    response = get(h2, h2_server.url("/stall?n=1&hold=5"), timeout=(2, 0.5))
    last = time.monotonic()
    ticks = 0

    def next_tick() -> float:
        return last + 0.1 - time.monotonic()

    with pytest.raises(UpstreamTimeoutError):
        for piece in response.iter_bytes(next_tick=next_tick):
            if not piece:
                ticks += 1
                last = time.monotonic()
    response.close()
    assert 3 <= ticks <= 6


def test_h2_without_gevent_threads_share_the_transport(h2_server, h2):
    """Each thread drives a multi handle of its own; a response may still be read and closed from another."""
    counts: list[int] = []

    def work() -> None:
        for _ in range(3):
            response = get(h2, h2_server.url("/sse?n=5&gap=0.01"))
            counts.append(b"".join(response.iter_bytes()).count(b"event: message"))
            response.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert counts == [5] * 12
    response = get(h2, h2_server.url("/sse?n=50&gap=0.02&tag=h2-threads"))
    first: list[bytes] = []
    reader = threading.Thread(target=lambda: first.append(next(response.iter_bytes())))
    reader.start()
    reader.join(5)
    closer = threading.Thread(target=response.close)
    closer.start()
    closer.join(5)
    assert first and first[0].startswith(b"event: message")
    assert h2_server.gone("h2-threads").wait(5)


# --- choosing a transport ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "base_url", "expected"),
    [
        (None, "https://www.perplexity.ai", "chrome"),
        ("", "https://perplexity.ai/", "chrome"),
        ("AUTO", "https://www.perplexity.ai", "chrome"),
        (None, "http://127.0.0.1:8080", None),
        ("auto", "https://notperplexity.ai", None),
        ("auto", "https://perplexity.ai.evil.example", None),
        ("off", "https://www.perplexity.ai", None),
        ("False", "https://www.perplexity.ai", None),
        ("0", "https://www.perplexity.ai", None),
        ("none", "https://www.perplexity.ai", None),
        ("chrome131", "http://127.0.0.1:8080", "chrome131"),
        (" safari ", "https://www.perplexity.ai", "safari"),
    ],
)
def test_resolve_impersonation(setting, base_url, expected):
    assert resolve_impersonation(setting, base_url) == expected


def test_resolve_impersonation_without_curl_cffi(monkeypatch):
    monkeypatch.setattr("perplexity.transport._curl_cffi_available", lambda: False)
    assert resolve_impersonation("auto", "https://www.perplexity.ai") is None
    assert resolve_impersonation("off", "https://www.perplexity.ai") is None
    with pytest.raises(ConfigurationError, match="curl_cffi"):
        resolve_impersonation("chrome", "https://www.perplexity.ai")


def test_make_transport():
    # `impersonate` is already resolved: None means requests, even for perplexity.ai.
    plain = make_transport(base_url="https://www.perplexity.ai")
    assert isinstance(plain, RequestsTransport) and plain.name == "requests"
    plain.close()
    setting = resolve_impersonation(None, "https://www.perplexity.ai")
    curl = make_transport(base_url="https://www.perplexity.ai", impersonate=setting)
    assert isinstance(curl, CurlTransport) and curl.name == "curl_cffi:chrome"
    curl.close()
    forced = make_transport(base_url="http://127.0.0.1:9", impersonate="chrome131", pool_size=4)
    assert forced.name == "curl_cffi:chrome131"
    forced.close()
    with pytest.raises(ConfigurationError):
        make_transport(base_url="ftp://www.perplexity.ai")
    with pytest.raises(ConfigurationError, match="impersonate"):
        make_transport(base_url="http://127.0.0.1:9", impersonate="netscape4")


def test_importing_the_module_loads_neither_curl_cffi_nor_gevent():
    code = "import sys, perplexity.transport; print(sorted({'curl_cffi', 'gevent'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_parse_set_cookies():
    assert parse_set_cookies(
        [
            "__Secure-next-auth.session-token=abc.def-ghi; Path=/; Expires=Wed, 21 Oct 2035 07:28:00 GMT",
            "empty=; Max-Age=0",
            "novalue",
            " spaced = v ; HttpOnly",
        ]
    ) == {"__Secure-next-auth.session-token": "abc.def-ghi", "empty": "", "spaced": "v"}


# --- gevent: the hub must keep running while streams are open ----------------------------------------

GEVENT_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import json
import sys
import time

import gevent
import gevent.event

from perplexity.curl_transport import PAUSE_AT
from perplexity.errors import TransportError, UpstreamConnectError, UpstreamTimeoutError
from perplexity.transport import CurlTransport, RequestsTransport

base, closed_port = sys.argv[1], int(sys.argv[2])
report = {}


def stream(transport, path, timeout=(2, 5)):
    url = path if path.startswith("http") else base + path
    response = transport.request("GET", url, headers={}, stream=True, timeout=timeout)
    try:
        return b"".join(response.iter_bytes())
    finally:
        response.close()


def with_ticker(work):
    ticks = 0
    running = True

    def ticker():
        nonlocal ticks
        while running:
            gevent.sleep(0.01)
            ticks += 1

    tick_greenlet = gevent.spawn(ticker)
    start = time.monotonic()
    result = work()
    elapsed = time.monotonic() - start
    running = False
    tick_greenlet.join()
    return result, ticks, elapsed


def idle_ticks(transport):
    return idle_ticks_at(transport, base)


def idle_ticks_at(transport, root):
    # Empty pieces while a stream is silent, until its read timeout.
    response = transport.request("GET", root + "/stall?n=1&hold=5", headers={}, stream=True, timeout=(2, 0.5))
    last = time.monotonic()
    ticks = 0

    def next_tick():
        return last + 0.1 - time.monotonic()

    try:
        for piece in response.iter_bytes(next_tick=next_tick):
            if not piece:
                ticks += 1
                last = time.monotonic()
    except UpstreamTimeoutError:
        return ticks
    finally:
        response.close()
    return -1  # the stream ended instead of timing out


def after_stale(transport):
    # The pooled connection was closed by the server while idle: the next requests must still succeed.
    bodies = []
    for _ in range(2):
        bodies.append(transport.request("GET", base + "/then-close", headers={}, timeout=(2, 5)).read())
        gevent.sleep(0.05)  # the server's FIN arrives while the connection sits in the pool
    bodies.append(transport.request("GET", base + "/echo", headers={}, timeout=(2, 5)).status_code)
    return bodies == [b"bye", b"bye", 200]


def big_slow_reader(transport):
    # 2 MB read by a reader that yields to the hub after every piece: complete and in order.
    size = 2_000_000
    response = transport.request("GET", base + "/big?size=%d" % size, headers={}, stream=True, timeout=(2, 5))
    pieces = []
    try:
        for piece in response.iter_bytes():
            pieces.append(piece)
            gevent.sleep(0)
    finally:
        response.close()
    return b"".join(pieces) == bytes(i % 251 for i in range(size))


def outcome(fn):
    try:
        fn()
    except TransportError as exc:
        return type(exc).__name__
    return "ok"


for transport in (RequestsTransport(), CurlTransport(impersonate="chrome")):
    # Five concurrent ~1 s streams of 20 trickled events each.
    jobs = lambda: gevent.joinall(
        [gevent.spawn(stream, transport, "/sse?n=20&gap=0.05") for _ in range(5)], raise_error=True
    )
    greenlets, ticks, elapsed = with_ticker(jobs)
    bodies = [g.value for g in greenlets]
    # A non-streaming request that waits 0.5 s for its headers must not block the hub either.
    late = lambda: transport.request("GET", base + "/late?delay=0.5", headers={}, timeout=(2, 5)).read()
    _, late_ticks, late_elapsed = with_ticker(late)

    def early_close():
        response = transport.request("GET", base + "/stall?n=1&tag=gevent-" + transport.name, headers={},
                                     stream=True, timeout=(2, 5))
        next(response.iter_bytes())
        response.close()

    report[transport.name] = {
        "ticks": ticks,
        "expected": round(elapsed / 0.01),
        "elapsed": round(elapsed, 3),
        "complete": all(b.count(b"event: message") == 20 and b"end_of_stream" in b for b in bodies),
        "late_ticks": late_ticks,
        "late_expected": round(late_elapsed / 0.01),
        "refused": outcome(lambda: stream(transport, "http://127.0.0.1:%d/" % closed_port)),
        "read_timeout": outcome(lambda: stream(transport, "/stall?n=1", timeout=(2, 0.3))),
        "reset": outcome(lambda: stream(transport, "/reset?n=1")),
        "early_close": outcome(early_close),
        "reused": len({transport.request("GET", base + "/peer", headers={}, timeout=(2, 5)).read() for _ in range(3)}),
        "idle_ticks": idle_ticks(transport),
        "after_stale": after_stale(transport),
        "big_slow_reader": big_slow_reader(transport),
    }
    transport.close()

# More streams at once than the transport pools: none may wait for another to finish (no thread cap).
for transport in (RequestsTransport(pool_size=4), CurlTransport(impersonate="chrome", pool_size=4)):
    opened = 0
    all_open = gevent.event.Event()

    def hold():
        global opened
        response = transport.request("GET", base + "/stall?n=1&hold=10", headers={}, stream=True, timeout=(2, 15))
        try:
            next(response.iter_bytes())
            opened += 1
            if opened == 100:
                all_open.set()
            return all_open.wait(10)
        finally:
            response.close()

    holders = [gevent.spawn(hold) for _ in range(100)]
    gevent.joinall(holders, timeout=30)
    report[transport.name]["all_open_at_once"] = sum(bool(g.value) for g in holders)
    transport.close()

# curl over TLS with HTTP/1.1 (a server without h2): handshakes and reads on the hub as well.
tls_base, ca_file = sys.argv[3], sys.argv[4]
curl_tls = CurlTransport(impersonate="chrome", ca_bundle=ca_file)


def tls_work():
    ports = {curl_tls.request("GET", tls_base + "/peer", headers={}, timeout=(2, 5)).read() for _ in range(3)}
    return len(ports), stream(curl_tls, tls_base + "/sse?n=20&gap=0.05")


(tls_ports, tls_body), tls_ticks, tls_elapsed = with_ticker(tls_work)
report["curl_cffi:chrome"]["tls"] = {
    "connections": tls_ports,
    "complete": tls_body.count(b"event: message") == 20 and b"end_of_stream" in tls_body,
    "ticks": tls_ticks,
    "expected": round(tls_elapsed / 0.01),
}
curl_tls.close()

# The production path: TLS + HTTP/2, 100 streams at once from a cold start with a pool of 4, multiplexed.
h2_base, h2_ca = sys.argv[5], sys.argv[6]
curl_h2 = CurlTransport(impersonate="chrome", pool_size=4, ca_bundle=h2_ca)
h2_opened = 0
h2_all_open = gevent.event.Event()


def h2_hold():
    global h2_opened
    response = curl_h2.request("GET", h2_base + "/stall?n=1&hold=10", headers={}, stream=True, timeout=(2, 15))
    try:
        for piece in response.iter_bytes(next_tick=lambda: 0.5):
            if piece:
                break
        h2_opened += 1
        if h2_opened == 100:
            h2_all_open.set()
        return h2_all_open.wait(10) and stream(curl_h2, h2_base + "/sse?n=3&gap=0.01").count(b"message") == 3
    finally:
        response.close()


def h2_work():
    holders = [gevent.spawn(h2_hold) for _ in range(100)]
    gevent.joinall(holders, timeout=30)
    return sum(bool(g.value) for g in holders)


def h2_paused_sibling():
    # A big body nobody reads: its stream is paused at the bound while a sibling on the connection streams on.
    size = 4_000_000
    big = curl_h2.request("GET", h2_base + "/big?size=%d" % size, headers={}, stream=True, timeout=(2, 5))
    try:
        pieces = big.iter_bytes()
        first = next(pieces)
        sibling = stream(curl_h2, h2_base + "/sse?n=10&gap=0.02")
        gevent.sleep(0.3)
        held = big._transfer.body_size
        body = first + b"".join(pieces)
    finally:
        big.close()
    return {
        "sibling_complete": sibling.count(b"event: message") == 10,
        "held": held,
        "paused_was_bounded": held <= PAUSE_AT + 65536,
        "big_complete": body == bytes(i % 251 for i in range(size)),
    }


h2_streams, h2_ticks, h2_elapsed = with_ticker(h2_work)
report["curl_cffi:chrome"]["h2"] = {
    "all_open_at_once": h2_streams,
    "ticks": h2_ticks,
    "expected": round(h2_elapsed / 0.01),
    "idle_ticks": idle_ticks_at(curl_h2, h2_base),
    **h2_paused_sibling(),
}
curl_h2.close()

print(json.dumps(report))
"""


def test_gevent_hub_keeps_ticking_while_streams_are_open(server, tls_server, h2_server, record_property):
    secure, ca_file = tls_server
    connections_before = h2_server.connections
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", GEVENT_SCRIPT]
        + [server.url(""), str(closed_port()), secure.url(""), str(ca_file), h2_server.url(""), h2_server.ca_path],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # For the record: shown with `-o log_cli=true` (or on failure) and stored in junit XML properties.
    logging.getLogger(__name__).info("gevent tick report: %s", json.dumps(report))
    record_property("gevent_tick_report", report)
    for name, numbers in report.items():
        assert numbers["complete"], name
        assert numbers["ticks"] >= 0.6 * numbers["expected"], (name, numbers)
        assert numbers["late_ticks"] >= 0.6 * numbers["late_expected"], (name, numbers)
        assert numbers["refused"] == "UpstreamConnectError", name
        assert numbers["read_timeout"] == "UpstreamTimeoutError", name
        assert numbers["reset"] == "TransportError", name
        assert numbers["early_close"] == "ok", name
        assert numbers["reused"] == 1, (name, numbers)  # one client port for three requests
        assert numbers["after_stale"] and numbers["big_slow_reader"], (name, numbers)
        assert 3 <= numbers["idle_ticks"] <= 6, (name, numbers)  # every 0.1 s until the 0.5 s timeout
        assert server.gone(f"gevent-{name}").wait(3), name
    # Both hold 100 streams at once with pools of 4 (curl was once capped by its threads, 64 at most).
    assert report["requests"]["all_open_at_once"] == 100
    assert report["curl_cffi:chrome"]["all_open_at_once"] == 100
    tls = report["curl_cffi:chrome"]["tls"]
    assert tls["connections"] == 1 and tls["complete"], tls
    assert tls["ticks"] >= 0.6 * tls["expected"], tls
    h2 = report["curl_cffi:chrome"]["h2"]
    assert h2["all_open_at_once"] == 100, h2
    assert h2_server.connections - connections_before <= 2, h2_server.connections - connections_before
    assert h2["ticks"] >= 0.6 * h2["expected"], h2
    assert 3 <= h2["idle_ticks"] <= 6, h2
    assert h2["sibling_complete"] and h2["paused_was_bounded"] and h2["big_complete"], h2
    assert set(report) == {"requests", "curl_cffi:chrome"}


def test_a_json_body_is_kept_at_its_own_size():
    """The body lives as long as the transfer (an answer stream: minutes): not orjson's whole output buffer."""
    import tracemalloc

    from perplexity.requests_transport import prepare_request

    body = {"query_str": "q" * 1500}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        prepared = prepare_request("POST", "http://127.0.0.1/x", {}, None, body, None, None)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(prepared.body) > 1500
    assert held < 8 * 1024, held  # orjson's output buffer alone is 16 KiB whatever the body size
