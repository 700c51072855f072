"""Hardening at the HTTP edge on live gunicorn: slow and refused request bodies, gunicorn's own errors, its control
socket."""

from __future__ import annotations

import json
import re
import selectors
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import requests

from api.config import GUNICORN_SETTINGS, SETTINGS, SettingError, gunicorn_settings, validate

KEY = "sk-edge-test"
CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "perplexity-auto", "messages": [{"role": "user", "content": "hello"}]}).encode()
# Every wait below is bounded by this many seconds of silence; an outcome not reached by then fails the test.
BOUND = 15.0


# ---- raw HTTP/1.1 on a socket ------------------------------------------------------------------------------


def connect(server, timeout: float = BOUND) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def head(path: str, length: int, *, key: str | None = None, content_type: str = "application/json", **extra) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}", f"Content-Length: {length}"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Reply:
    """One HTTP/1.1 response parsed from raw bytes (Content-Length framing, which every error here uses)."""

    def __init__(self, raw: bytes) -> None:
        top, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = top.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        self.body = rest[: int(self.headers.get("content-length", len(rest)))]

    def json(self) -> dict:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)


def read_reply(sock: socket.socket, buffered: bytes = b"") -> tuple[Reply, bytes]:
    """The next response on `sock` (raises socket.timeout after BOUND s of silence) and the bytes after it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", top).group(1)) if b"ontent-" in top.lower() else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-response"
        rest += chunk
    return Reply(top + b"\r\n\r\n" + rest[:length]), rest[length:]


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server ended the connection (EOF or reset); False if it is still open after BOUND s."""
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def assert_openai_error(reply: Reply, status: int, code: str) -> dict:
    assert reply.status == status, (reply.status, reply.body)
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    return error


# ---- item 1: request bodies --------------------------------------------------------------------------------


class SlowSenders:
    """Sockets that send request headers and then trickle their body a byte at a time, collecting whatever the
    server answers, until the server closes them or `stop()`; one background thread, bounded."""

    def __init__(self, server, count: int, every: float = 0.3) -> None:
        self.selector = selectors.DefaultSelector()
        self.received: dict[int, bytes] = {}
        self.closed: set[int] = set()
        self.socks: list[socket.socket] = []
        self.authed: list[bool] = []
        self.every = every
        self._stop = threading.Event()
        for i in range(count):
            authed = i % 2 == 0
            sock = connect(server)
            # Authenticated: a small body that would take hours at this rate. Not: a large one, refused with 401.
            sock.sendall(head(CHAT, 100_000 if authed else 10_000_000, key=KEY if authed else None) + b"{")
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, i)
            self.socks.append(sock)
            self.authed.append(authed)
            self.received[i] = b""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # the thread never outlives a stuck test by much
        next_byte = 0.0
        while not self._stop.is_set() and time.monotonic() < deadline and len(self.closed) < len(self.socks):
            for key, _ in self.selector.select(timeout=0.05):
                i = key.data
                try:
                    chunk = self.socks[i].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    self.received[i] += chunk
                else:
                    self.closed.add(i)
                    self.selector.unregister(self.socks[i])
            if time.monotonic() >= next_byte:
                next_byte = time.monotonic() + self.every
                for i, sock in enumerate(self.socks):
                    if i not in self.closed:
                        try:
                            sock.send(b" ")
                        except OSError:
                            pass  # closed or reset by the server: the reader side records it

    def wait_all_closed(self, bound: float) -> None:
        self._thread.join(timeout=bound)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.socks:
            sock.close()
        self.selector.close()


def test_slots_full_of_slow_senders_still_serve_an_authenticated_request(fake, live_server_factory):
    server = live_server_factory(API_KEYS=KEY, WORKER_CONNECTIONS="20", BODY_READ_TIMEOUT="1", BODY_TOTAL_TIMEOUT="2")
    senders = SlowSenders(server, 40)  # twice the worker's connection slots
    try:
        answer = requests.post(
            server.url + CHAT, data=BODY, timeout=(BOUND, 2 * BOUND),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )  # fmt: skip
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        senders.wait_all_closed(bound=4 * BOUND)
        # Every slow sender was answered and closed by the server: authenticated ones with a 408 once the body
        # timed out, the others with a 401 before their body was read.
        assert senders.closed == set(range(40))
        for i, raw in senders.received.items():
            reply = Reply(raw)
            assert reply.headers.get("connection") == "close", reply.headers
            if senders.authed[i]:
                assert_openai_error(reply, 408, "request_timeout")
            else:
                assert_openai_error(reply, 401, "invalid_api_key")
    finally:
        senders.stop()


def test_a_stalled_or_trickled_body_gets_a_408_and_a_close(fake, live_server_factory):
    server = live_server_factory(API_KEYS=KEY, BODY_READ_TIMEOUT="1", BODY_TOTAL_TIMEOUT="3")
    stalled, trickled, anthropic = connect(server), connect(server), connect(server)
    try:
        stalled.sendall(head(CHAT, 1000, key=KEY) + b'{"model"')  # then nothing
        reply, rest = read_reply(stalled)
        assert "BODY_READ_TIMEOUT" in assert_openai_error(reply, 408, "request_timeout")["message"]
        assert reply.headers["connection"] == "close" and rest == b"" and closed_by_server(stalled)

        # A byte every 0.3 s never trips the 1 s read timeout; the 3 s total cap ends it.
        trickled.sendall(head(CHAT, 1000, key=KEY))
        trickled.settimeout(0.3)
        data = b""
        deadline = time.monotonic() + BOUND
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            try:
                trickled.send(b" ")
                data += trickled.recv(65536)
            except TimeoutError:
                continue
        trickled.settimeout(BOUND)
        reply, rest = read_reply(trickled, data)
        assert "BODY_TOTAL_TIMEOUT" in assert_openai_error(reply, 408, "request_timeout")["message"]
        assert reply.headers["connection"] == "close" and closed_by_server(trickled)

        # The Anthropic family gets Anthropic's error shape for the same timeout.
        anthropic.sendall(head("/v1/messages", 1000, x_api_key=KEY, anthropic_version="2023-06-01"))
        reply, _ = read_reply(anthropic)
        assert reply.status == 408 and reply.json()["type"] == "error"
        assert reply.json()["error"]["type"] == "invalid_request_error" and closed_by_server(anthropic)
    finally:
        for sock in (stalled, trickled, anthropic):
            sock.close()


@pytest.mark.parametrize(
    ("request_head", "status", "code"),
    [
        pytest.param(head(CHAT, 10_000_000), 401, "invalid_api_key", id="no-key"),
        pytest.param(head(CHAT, 10_000_000, key="sk-wrong"), 401, "invalid_api_key", id="wrong-key"),
        pytest.param(head(CHAT, 60_000_000, key=KEY), 413, "request_too_large", id="too-large"),
        pytest.param(head(CHAT, 10_000_000, key=KEY, content_type="text/plain"), 415, "unsupported_media_type",
                     id="not-json"),
        pytest.param(head("/v1/nowhere", 10_000_000, key=KEY), 404, "unknown_url", id="unknown-path"),
    ],
)  # fmt: skip
def test_a_refused_request_is_closed_without_reading_its_body(fake, live_server_factory, request_head, status, code):
    server = live_server_factory(API_KEYS=KEY)
    sock = connect(server)
    try:
        sock.sendall(request_head + b"x" * 1000)  # then the sender stalls, as a slow one would
        reply, _ = read_reply(sock)
        assert_openai_error(reply, status, code)
        assert reply.headers["connection"] == "close"
        assert closed_by_server(sock)  # not kept open to drain 10 MB that will never come
    finally:
        sock.close()


def test_a_large_unauthenticated_body_is_not_drained(fake, live_server_factory):
    server = live_server_factory(API_KEYS=KEY)
    size = 256 * 1024 * 1024
    sock = connect(server)
    sent = 0
    try:
        sock.sendall(head(CHAT, size))
        block = b"x" * (1024 * 1024)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < size:  # bounded: at most `size` bytes, each send at most BOUND s
                sent += sock.send(block)
        assert sent < size // 4, sent  # the server stopped reading long before the end
    finally:
        sock.close()


def test_expect_100_continue_is_answered_only_once_the_body_is_wanted(fake, live_server_factory):
    server = live_server_factory(API_KEYS=KEY)
    refused, accepted = connect(server), connect(server)
    try:
        refused.sendall(head(CHAT, 10_000_000, Expect="100-continue"))
        reply, _ = read_reply(refused)  # the final answer, no "100 Continue" first: the client never sends
        assert_openai_error(reply, 401, "invalid_api_key")
        assert closed_by_server(refused)

        accepted.sendall(head(CHAT, len(BODY), key=KEY, Expect="100-continue"))
        reply, rest = read_reply(accepted)
        assert reply.status == 100
        accepted.sendall(BODY)
        reply, _ = read_reply(accepted, rest)
        assert reply.status == 200 and json.loads(reply.body)["choices"]
    finally:
        refused.close()
        accepted.close()


def test_body_timeouts_are_settings_with_checked_ranges():
    names = {s.name: s for s in SETTINGS}
    assert names["BODY_READ_TIMEOUT"].default == 60  # nginx's client_body_timeout
    assert names["BODY_TOTAL_TIMEOUT"].default >= names["BODY_READ_TIMEOUT"].default
    for name, bad in (("BODY_READ_TIMEOUT", 0), ("BODY_TOTAL_TIMEOUT", 0), ("BODY_READ_TIMEOUT", 10**6)):
        with pytest.raises(SettingError, match=name):
            validate({**{s.name: s.default for s in SETTINGS}, name: bad})
    keepalive = next(s for s in GUNICORN_SETTINGS if s.name == "KEEPALIVE")
    assert keepalive.default < 75
    with pytest.raises(SettingError, match="KEEPALIVE"):  # 0 would leave gunicorn no header timeout at all
        gunicorn_settings({"KEEPALIVE": "0"})


# ---- item 9: gunicorn's own answers and its control socket ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        pytest.param(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_line_too_long",
                     id="long-request-line"),
        pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431,
                     "header_fields_too_large", id="huge-header"),
        pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
                     + b"\r\n", 431, "header_fields_too_large", id="too-many-headers"),
        pytest.param(b"NOT AN HTTP REQUEST\r\n\r\n", 400, "invalid_request", id="bad-request-line"),
    ],
)  # fmt: skip
def test_gunicorn_errors_are_openai_json(live_server, raw, status, code):
    sock = connect(live_server)
    try:
        sock.sendall(raw)
        reply, _ = read_reply(sock)
        error = assert_openai_error(reply, status, code)
        assert error["message"] and "<" not in error["message"]
        assert reply.headers["connection"] == "close" and closed_by_server(sock)
    finally:
        sock.close()


def control_socket(server) -> Path:
    deadline = time.monotonic() + BOUND  # gunicorn starts it after the workers are up
    while time.monotonic() < deadline:
        found = re.search(r"Control socket listening at (\S+)", server.log())
        if found:
            return Path(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no control socket in the log:\n{server.log()}")


def test_two_instances_do_not_share_a_control_socket(live_server_factory):
    first, second = live_server_factory(), live_server_factory()
    paths = control_socket(first), control_socket(second)
    assert paths[0] != paths[1]
    for path, server in zip(paths, (first, second), strict=True):
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert str(server.port) in path.name
        assert not path.parent.stat().st_mode & 0o077  # a private directory
    first.stop()
    assert not paths[0].exists() and stat.S_ISSOCK(paths[1].stat().st_mode)  # one stopping leaves the other's
