"""The lean HTTP/1.1 adapter under `requests`: pooling, stale connections, framing, encodings and TLS, on loopback.

A raw socket server answers each request with scripted bytes, so each case controls the wire exactly.
The transport-level behaviour shared with the other engines is in test_transport.py.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import pytest
import requests
import trustme

from perplexity.errors import TransportError, UpstreamConnectError
from perplexity.lean_http import LeanHTTPAdapter
from perplexity.requests_transport import RequestsTransport

TIMEOUT = (2.0, 5.0)


class RawServer:
    """Answers requests with scripted responses: each script entry is (bytes, then) with then in keep/close/rst."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tls = tls
        self.script: list[tuple[bytes | list[bytes], str]] = []  # a list: pieces sent 0.1 s apart
        self.requests: list[bytes] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.tls:
                sock = self.tls.wrap_socket(sock, server_side=True)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += sock.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                with self.lock:
                    self.requests.append(head + b"\r\n\r\n" + body)
                    answer, then = self.script.pop(0) if self.script else (ok(b"default"), "keep")
                for i, piece in enumerate(answer if isinstance(answer, list) else [answer]):
                    if i:
                        time.sleep(0.1)
                    sock.sendall(piece)
                if then == "close":
                    time.sleep(0.05)
                    sock.close()
                    return
                if then == "rst":
                    time.sleep(0.05)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    return
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def close(self) -> None:
        self.listener.close()


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra.encode(), body)


def chunked(*pieces: bytes, trailer: bytes = b"", headers: str = "") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n%s\r\n%s0\r\n%s\r\n" % (headers.encode(), body, trailer)


@pytest.fixture
def server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


@pytest.fixture
def transport() -> Iterator[RequestsTransport]:
    t = RequestsTransport(pool_size=2)
    yield t
    t.close()


def fetch(transport: RequestsTransport, url: str, method: str = "GET", **kwargs) -> bytes:
    response = transport.request(method, url, headers={}, stream=True, timeout=TIMEOUT, **kwargs)
    try:
        return b"".join(response.iter_bytes())
    finally:
        response.close()


# --- pooling -----------------------------------------------------------------------------------------


def test_one_connection_serves_consecutive_requests(server, transport):
    server.script = [(ok(b"a"), "keep"), (chunked(b"b1", b"b2"), "keep"), (ok(b"c"), "keep")]
    assert [fetch(transport, server.url()) for _ in range(3)] == [b"a", b"b1b2", b"c"]
    assert server.connections == 1 and transport.adapter.connections_opened == 1
    assert transport.adapter.idle_connections() == 1


@pytest.mark.parametrize("how", ["close", "rst"])
def test_a_connection_the_server_closed_while_idle_is_replaced(server, transport, how):
    """The request goes out again on a new connection: the server never saw it on the dead one."""
    server.script = [(ok(b"first"), how), (ok(b"second"), "keep")]
    assert fetch(transport, server.url()) == b"first"
    time.sleep(0.2)  # the server closes the pooled connection meanwhile
    assert fetch(transport, server.url("/again"), "POST", data=b"payload") == b"second"
    assert server.connections == 2
    assert [r.split(b" ", 2)[1] for r in server.requests] == [b"/", b"/again"]  # sent once, not twice


def test_a_fresh_connection_that_dies_is_not_retried(server, transport):
    server.script = [(b"", "rst")]
    with pytest.raises(TransportError) as info:
        fetch(transport, server.url(), "POST", data=b"x")
    assert not isinstance(info.value, UpstreamConnectError)  # the request may have been processed
    assert len(server.requests) == 1


def test_a_body_closed_early_drops_its_connection(server, transport):
    unfinished = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    server.script = [(unfinished, "keep"), (ok(b"next"), "keep")]
    response = transport.request("GET", server.url(), headers={}, stream=True, timeout=TIMEOUT)
    next(response.iter_bytes())
    response.close()
    assert transport.adapter.idle_connections() == 0
    assert fetch(transport, server.url()) == b"next"
    assert server.connections == 2


def test_the_pool_keeps_at_most_pool_size_idle_connections(server, transport):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server.script = [([head, b"1\r\n%d\r\n0\r\n\r\n" % i], "keep") for i in range(3)]
    open_ = [transport.request("GET", server.url(), headers={}, stream=True, timeout=TIMEOUT) for _ in range(3)]
    assert sorted(b"".join(r.iter_bytes()) for r in open_) == [b"0", b"1", b"2"]
    assert transport.adapter.idle_connections() == 2  # pool_size=2: the third was closed


def test_connection_close_and_http10_answers_are_not_pooled(server, transport):
    server.script = [
        (ok(b"a", "Connection: close"), "close"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb", "close"),
        (ok(b"c"), "keep"),
    ]
    assert [fetch(transport, server.url()) for _ in range(3)] == [b"a", b"b", b"c"]
    assert server.connections == 3 and transport.adapter.idle_connections() == 1


def test_bytes_after_a_complete_answer_make_the_connection_unusable(server, transport):
    server.script = [(ok(b"a") + b"garbage", "keep"), (ok(b"b"), "keep")]
    assert fetch(transport, server.url()) == b"a"
    assert fetch(transport, server.url()) == b"b"
    assert server.connections == 2


# --- framing and headers -----------------------------------------------------------------------------


def test_interim_100_continue_is_skipped(server, transport):
    server.script = [(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real", "X-Real: 1"), "keep")]
    response = transport.request("GET", server.url(), headers={}, stream=False, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["x-real"] == "1"
    assert response.read() == b"real"


def test_trailers_are_ignored_and_the_connection_reused(server, transport):
    server.script = [(chunked(b"data", trailer=b"X-Checksum: 1\r\n"), "keep"), (ok(b"next"), "keep")]
    assert fetch(transport, server.url()) == b"data"
    assert fetch(transport, server.url()) == b"next"
    assert server.connections == 1


def test_repeated_headers_and_cookies(server, transport):
    server.script = [(ok(b"", "Set-Cookie: a=1; Path=/", "Set-Cookie: b=2", "Vary: x", "Vary: y"), "keep")]
    response = transport.request("GET", server.url(), headers={}, stream=False, timeout=TIMEOUT)
    assert response.set_cookies == {"a": "1", "b": "2"}
    assert response.headers["vary"] == "x, y"


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses(server, transport, status):
    server.script = [(b"HTTP/1.1 %d Nothing\r\n\r\n" % status, "keep"), (ok(b"after"), "keep")]
    response = transport.request("GET", server.url(), headers={}, stream=False, timeout=TIMEOUT)
    assert response.status_code == status and response.read() == b""
    assert fetch(transport, server.url()) == b"after" and server.connections == 1


def test_malformed_chunking_is_a_transport_error(server, transport):
    server.script = [(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "close")]
    with pytest.raises(TransportError, match="reading the response body"):
        fetch(transport, server.url())


def test_a_malformed_status_line_is_a_transport_error(server, transport):
    server.script = [(b"NOT HTTP AT ALL\r\n\r\n", "close")]
    with pytest.raises(TransportError, match="before the response"):
        fetch(transport, server.url())


def test_header_injection_is_refused(server, transport):
    with pytest.raises(TransportError):
        transport.request("GET", server.url(), headers={"X-A": "1\r\nX-B: 2"}, timeout=TIMEOUT)
    assert server.requests == []


def test_request_head_and_body_on_the_wire(server, transport):
    fetch(transport, server.url("/p?x=1"), "POST", json={"q": "café"}, params={"v": "2"})
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /p?x=1&v=2 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"Content-Type: application/json" in lines and b"Content-Length: %d" % len(body) in lines
    assert body == '{"q":"café"}'.encode()


# --- content encodings -------------------------------------------------------------------------------

TEXT = b"data: compressed event\n\n" * 200


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),  # with the zlib header
        ("deflate", zlib.compress(TEXT)[2:-4]),  # raw DEFLATE, as some servers send it
    ],
)
def test_compressed_bodies_are_decoded(server, transport, encoding, body):
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    server.script = [(chunked(*pieces, headers=f"Content-Encoding: {encoding}\r\n"), "keep")]
    assert fetch(transport, server.url()) == TEXT


def test_an_unsupported_encoding_is_an_error_not_garbage(server, transport):
    server.script = [(ok(b"\x0b\x02\x80", "Content-Encoding: br"), "keep")]
    with pytest.raises(TransportError):
        fetch(transport, server.url())


# --- fallback to the stock adapter ---------------------------------------------------------------------


def test_head_and_proxies_go_through_the_stock_adapter(server):
    adapter = LeanHTTPAdapter(pool_maxsize=2)
    sent = []
    adapter.fallback.send = lambda request, **kwargs: sent.append((request.method, kwargs["proxies"]))  # type: ignore[method-assign]
    head = requests.Request("HEAD", server.url()).prepare()
    adapter.send(head, timeout=TIMEOUT)
    post = requests.Request("POST", server.url(), data=b"x").prepare()
    adapter.send(post, timeout=TIMEOUT, proxies={"http": "http://proxy.invalid:3128"})
    assert sent == [("HEAD", None), ("POST", {"http": "http://proxy.invalid:3128"})]
    assert server.requests == []
    adapter.close()


def test_a_requests_session_can_mount_the_adapter(server):
    """The adapter is a plain requests transport adapter: Session.get works through it."""
    server.script = [(ok(b"via session"), "keep")]
    with requests.Session() as session:
        session.trust_env = False
        session.mount("http://", LeanHTTPAdapter())
        response = session.get(server.url(), timeout=TIMEOUT)
    assert response.status_code == 200 and response.text == "via session"


# --- TLS -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca) -> Iterator[RawServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    srv = RawServer(tls=context)
    yield srv
    srv.close()


def test_tls_with_a_trusted_ca_and_pooling(tls_server, ca, tmp_path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    tls_server.script = [(ok(b"secure"), "keep"), (chunked(b"again"), "keep")]
    with contextlib.closing(RequestsTransport(verify=str(bundle))) as transport:
        assert fetch(transport, tls_server.url()) == b"secure"
        assert fetch(transport, tls_server.url()) == b"again"
    assert tls_server.connections == 1


def test_tls_with_an_unknown_ca_is_a_connect_error(tls_server):
    with contextlib.closing(RequestsTransport()) as transport, pytest.raises(UpstreamConnectError, match="could not"):
        fetch(transport, tls_server.url())
    assert tls_server.requests == []
