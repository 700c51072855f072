"""Tests of the fake upstream's TLS and HTTP/2 wire: ALPN, multiplexing, RST_STREAM, flow control, uploads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import requests
from curl_cffi import CurlHttpVersion, CurlOpt
from curl_cffi import requests as creq
from curl_cffi.curl import CURL_WRITEFUNC_PAUSE
from urllib3 import encode_multipart_formdata

from perplexity.testing import FakePerplexity, Fault, Reply
from perplexity.testing.h2conn import CONNECTION_WINDOW, STREAM_WINDOW

COOKIE = "__Secure-next-auth.session-token"
ASK = "/rest/sse/perplexity_ask"
TOKEN = "test-session-token-wire"
END = b"event: end_of_stream\r\ndata: {}\r\n\r\n"
# Every curl call is bounded; asyncio.run bodies are bounded too.
TIMEOUT = 10
H2 = CurlHttpVersion.V2_0
H11 = CurlHttpVersion.V1_1


@pytest.fixture(scope="module")
def h2_server() -> Iterator[FakePerplexity]:
    with FakePerplexity(session_token=TOKEN, tls=True, http2=True) as server:
        yield server


@pytest.fixture
def fake(h2_server: FakePerplexity) -> Iterator[FakePerplexity]:
    """The module's TLS + HTTP/2 fake, reset for each test (which must leave no bug in the fake behind)."""
    h2_server.reset()
    yield h2_server
    errors = list(h2_server.errors)
    h2_server.reset()
    assert not errors, errors


def ask_body(query: str = "What is the capital of France?") -> dict[str, Any]:
    params = {"version": "2.18", "model_preference": "turbo", "frontend_uuid": str(uuid.uuid4())}
    return {"query_str": query, "params": params}


def curl_session(fake: FakePerplexity, http_version: CurlHttpVersion = H2) -> creq.Session:
    session = creq.Session(verify=fake.ca_path, http_version=http_version, timeout=TIMEOUT)
    session.cookies.set(COOKIE, fake.session_token, secure=True)  # __Secure- cookies are secure-only
    return session


def async_session(fake: FakePerplexity) -> creq.AsyncSession:
    """An async curl session (one multi handle): PIPEWAIT makes concurrent requests share one h2 connection."""
    session = creq.AsyncSession(
        verify=fake.ca_path, http_version=H2, timeout=TIMEOUT, max_clients=32, curl_options={CurlOpt.PIPEWAIT: 1}
    )
    session.cookies.set(COOKIE, fake.session_token, secure=True)  # __Secure- cookies are secure-only
    return session


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 2))


def frames_of(raw: bytes) -> list[dict[str, Any]]:
    """The JSON frames of an SSE body (comments and end_of_stream left out)."""
    frames = []
    for block in raw.split(b"\r\n\r\n"):
        lines = block.split(b"\r\n")
        if lines[0] == b"event: message":
            frames.append(json.loads(lines[1].removeprefix(b"data: ")))
    return frames


def assert_complete(raw: bytes) -> None:
    assert raw.endswith(END) and frames_of(raw)[-1]["status"] == "COMPLETED"


# ---- HTTP/1.1 over TLS ---------------------------------------------------------------------------


def test_http11_over_tls_answers_an_ask_stream(fake):
    assert fake.url.startswith("https://127.0.0.1:") and Path(fake.ca_path).read_bytes().startswith(b"-----BEGIN")
    with requests.Session() as session:
        session.cookies.set(COOKIE, fake.session_token)
        with session.post(fake.url + ASK, json=ask_body(), stream=True, verify=fake.ca_path, timeout=TIMEOUT) as resp:
            assert resp.status_code == 200 and resp.raw.version == 11
            assert resp.headers["Transfer-Encoding"] == "chunked" and resp.headers["Server"] == "cloudflare"
            raw = b"".join(resp.iter_content(None))
    assert_complete(raw)
    assert [r.http_version for r in fake.asks] == ["1.1"] and fake.h2_streams == 0
    assert fake.connections_opened == 1


def test_curl_negotiates_http11_when_asked_or_when_the_fake_offers_no_h2(fake):
    with curl_session(fake, H11) as session:
        resp = session.post(fake.url + ASK, json=ask_body())
    assert resp.status_code == 200 and resp.http_version == H11
    assert_complete(resp.content)
    with FakePerplexity(session_token=TOKEN, tls=True) as plain_tls, curl_session(plain_tls, H2) as session:
        resp = session.post(plain_tls.url + ASK, json=ask_body())
        assert resp.status_code == 200 and resp.http_version == H11, "ALPN offers only http/1.1"
        assert plain_tls.h2_streams == 0 and plain_tls.asks[0].http_version == "1.1"


@pytest.mark.parametrize("client", ["requests", "curl"])
def test_http11_over_tls_notices_a_client_leaving_mid_stream(fake, client):
    """requests closes without close_notify, curl sends one first: both must be seen as the client leaving."""
    fake.enqueue(Reply(chunk_size=3, frame_delay=0.05))
    if client == "requests":
        with requests.Session() as session:
            session.cookies.set(COOKIE, fake.session_token)
            with session.post(fake.url + ASK, json=ask_body(), stream=True, verify=fake.ca_path, timeout=5) as resp:
                next(resp.iter_content(None))
    else:
        with curl_session(fake, H11) as session:
            resp = session.post(fake.url + ASK, json=ask_body(), stream=True)
            next(resp.iter_content())
            resp.close()
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=2)
    assert fake.streams_closed_by_client == 1


# ---- HTTP/2 ----------------------------------------------------------------------------------------


def test_h2_is_negotiated_and_an_ask_streams_completely(fake):
    with curl_session(fake) as session:
        resp = session.post(fake.url + ASK + "?version=2.18&source=default", json=ask_body())
    assert resp.status_code == 200 and resp.http_version == H2
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["server"] == "cloudflare" and resp.headers["cf-ray"].endswith("-IAD")
    assert "transfer-encoding" not in resp.headers and "connection" not in resp.headers
    assert_complete(resp.content)
    (ask,) = fake.asks
    assert ask.http_version == "2" and ask.query == {"version": "2.18", "source": "default"}
    assert ask.headers["cookie"] == f"{COOKIE}={fake.session_token}" and ask.json["query_str"]
    assert fake.h2_streams == 1 and fake.connections_opened == 1 and fake.open_streams == 0


def test_h2_side_endpoints_set_cookie_and_404(fake):
    fake.rotate_on_session = True
    with curl_session(fake) as session:
        answer = session.get(fake.url + "/api/auth/session")
        missing = session.get(fake.url + "/rest/nothing/here")
    assert answer.status_code == 200 and answer.json()["user"]["id"] == fake.user["id"]
    assert "rotated-" in answer.headers["set-cookie"]
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert int(missing.headers["content-length"]) == len(missing.content)


def test_twenty_concurrent_asks_are_multiplexed_on_one_connection(fake):
    fake.default_reply = Reply(frame_delay=0.01)

    async def asks() -> list[Any]:
        async with async_session(fake) as session:
            return await asyncio.gather(*(session.post(fake.url + ASK, json=ask_body()) for _ in range(20)))

    answers = run(asks())
    assert [a.status_code for a in answers] == [200] * 20
    for answer in answers:
        assert_complete(answer.content)
    assert fake.connections_opened == 1 and fake.h2_streams == 20
    assert fake.streams_started == 20 and fake.open_streams == 0


def test_a_reset_fault_resets_only_its_stream(fake):
    fake.enqueue(Reply(frame_delay=0.03), Fault("reset", after_frames=2, reply=Reply(frame_delay=0.03)))

    async def both() -> list[Any]:
        async with async_session(fake) as session:
            first = asyncio.ensure_future(session.post(fake.url + ASK, json=ask_body()))
            while fake.open_streams < 1:  # the first stream is mid-answer before the faulty one starts
                await asyncio.sleep(0.005)
            second = session.post(fake.url + ASK, json=ask_body())
            return await asyncio.gather(first, second, return_exceptions=True)

    completed, reset = run(both())
    assert_complete(completed.content)
    assert isinstance(reset, creq.exceptions.RequestException), reset
    assert "HTTP/2" in str(reset) or "stream" in str(reset).lower()
    assert fake.connections_opened == 1 and fake.h2_streams == 2
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=1)


def test_an_endpoint_eof_fault_resets_the_unanswered_stream_and_the_connection_carries_on(fake):
    fake.fault_for("/rest/models/config", Fault("eof"))
    with curl_session(fake) as session:
        with pytest.raises(creq.exceptions.RequestException):
            session.get(fake.url + "/rest/models/config")
        assert session.get(fake.url + "/rest/models/config").status_code == 200
    assert fake.connections_opened == 1 and fake.h2_streams == 2


def test_truncated_and_eof_in_stream_faults_end_the_body_like_over_http11(fake):
    fake.enqueue(Fault("truncated", after_frames=3), Fault("eof", after_frames=2))
    with curl_session(fake) as session:
        truncated = session.post(fake.url + ASK, json=ask_body()).content
        eof = session.post(fake.url + ASK, json=ask_body()).content
    assert truncated.endswith(END) and [f["status"] for f in frames_of(truncated)] == ["PENDING"] * 3
    assert not eof.endswith(END) and len(frames_of(eof)) == 2


def test_a_client_closing_its_stream_mid_answer_is_noticed(fake):
    """curl drops the abandoned transfer's handle (and its connection); the raw h2 tests below send RST_STREAM."""
    fake.enqueue(Reply(chunk_size=3, frame_delay=0.05))
    with curl_session(fake) as session:
        resp = session.post(fake.url + ASK, json=ask_body(), stream=True)
        next(resp.iter_content())
        assert fake.open_streams == 1
        resp.close()  # curl abandons the transfer: RST_STREAM on that stream
        assert fake.wait_until(lambda: fake.open_streams == 0, timeout=2)
        assert fake.streams_closed_by_client == 1
        assert session.get(fake.url + "/rest/models/config").status_code == 200


def test_a_client_that_stops_reading_gets_back_pressure_on_its_stream_only(fake):
    """A paused curl transfer stops opening its stream window: the fake's writer blocks, other streams flow."""
    big = [{"status": "PENDING", "text": "x" * 65536} for _ in range(400)] + [{}]
    received: list[int] = []

    def paused(chunk: bytes) -> int:
        received.append(len(chunk))
        return CURL_WRITEFUNC_PAUSE

    async def scenario() -> tuple[Any, int, int]:
        async with async_session(fake) as session:
            fake.enqueue(Reply(frames=big))
            stuck = asyncio.ensure_future(session.post(fake.url + ASK, json=ask_body(), content_callback=paused))
            while fake.flow_blocked_streams < 1:
                await asyncio.sleep(0.01)
            other = await session.post(fake.url + ASK, json=ask_body())
            still_blocked, still_open = fake.flow_blocked_streams, fake.open_streams
            stuck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stuck
            return other, still_blocked, still_open

    other, still_blocked, still_open = run(scenario())
    assert_complete(other.content)
    assert still_blocked == 1 and still_open == 1, "the unread stream waits on its window while the other completes"
    assert received, "the paused client had the start of its answer"
    assert fake.connections_opened == 1
    assert fake.wait_until(lambda: fake.open_streams == 0 and fake.flow_blocked_streams == 0, timeout=2)
    assert fake.streams_closed_by_client == 1


def test_a_large_upload_and_download_over_h2(fake):
    # 12 MB: hundreds of stream windows each way (the multipart parser, not the wire, sets the pace).
    data = bytes(range(256)) * (12 * 1024 * 4)
    spec = {"filename": "big.bin", "content_type": "application/octet-stream", "file_size": len(data)}
    with curl_session(fake) as session:
        answer = session.post(fake.url + "/rest/uploads/batch_create_upload_urls", json={"files": {"a": spec}})
        grant = answer.json()["results"]["a"]
        body, content_type = encode_multipart_formdata([*grant["fields"].items(), ("file", ("big.bin", data))])
        upload = session.post(grant["s3_bucket_url"], data=body, headers={"Content-Type": content_type})
        back = session.get(grant["s3_object_url"])
    assert upload.status_code == 204 and upload.http_version == H2
    assert fake.uploads[grant["s3_object_url"]] == ("big.bin", "application/octet-stream", data)
    assert back.status_code == 200 and back.content == data
    assert fake.connections_opened == 1 and fake.h2_streams == 3


@pytest.mark.parametrize("http_version", [H2, H11], ids=["h2", "http1.1"])
def test_stop_closes_tls_connections_and_ends_their_streams(http_version):
    server = FakePerplexity(session_token=TOKEN, tls=True, http2=True).start()
    ca_path = Path(server.ca_path or "")
    server.enqueue(Fault("stall", after_frames=1, delay=30))
    with curl_session(server, http_version) as session, curl_session(server, http_version) as idle:
        assert idle.get(server.url + "/rest/models/config").status_code == 200  # leaves a keep-alive connection
        resp = session.post(server.url + ASK, json=ask_body(), stream=True)
        next(resp.iter_content())
        server.stop()  # its waits are bounded; only streams that were really ended leave the gauge at 0
        assert server.open_streams == 0 and not server._connections
        with contextlib.suppress(creq.exceptions.RequestException):
            resp.close()
    assert server.connections_opened == 2
    assert server.ca_path is None and not ca_path.exists()


def test_command_line_serves_tls_and_h2_and_prints_the_ca():
    command = [sys.executable, "-m", "perplexity.testing", "--port", "0", "--http2", "--frame-delay", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        token = process.stdout.readline().strip().split("=", 1)[1]
        ca_path = process.stdout.readline().split()[-1]
        assert url.startswith("https://127.0.0.1:") and Path(ca_path).is_file()
        with creq.Session(verify=ca_path, http_version=H2, timeout=TIMEOUT) as session:
            session.cookies.set(COOKIE, token, secure=True)
            resp = session.post(url + ASK, json=ask_body())
        assert resp.http_version == H2
        assert_complete(resp.content)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert not Path(ca_path).exists(), "stop() removes the CA file"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# ---- HTTP/2 frames, seen by a minimal h2 client -----------------------------------------------------


class RawH2:
    """A minimal h2 client (for what curl does not show: SETTINGS, windows, the timing of RST_STREAM)."""

    def __init__(self, fake: FakePerplexity) -> None:
        context = ssl.create_default_context(cafile=fake.ca_path)
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", fake.port), timeout=TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.token = fake.session_token
        self.received: dict[int, bytes] = {}

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def ask(self) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        body = json.dumps(ask_body()).encode()
        headers = [(":method", "POST"), (":scheme", "https"), (":authority", "127.0.0.1"), (":path", ASK)]
        headers += [("content-type", "application/json"), ("cookie", f"{COOKIE}={self.token}")]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, body, end_stream=True)
        self.flush()
        return stream_id

    def events(self) -> list[h2.events.Event]:
        data = self.sock.recv(65536)
        assert data, "the fake closed the connection"
        events = self.conn.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.received[event.stream_id] = self.received.get(event.stream_id, b"") + event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        return events

    def until(self, predicate: Any) -> list[h2.events.Event]:
        seen: list[h2.events.Event] = []
        while not any(predicate(event) for event in seen):
            seen += self.events()
        return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_h2(fake: FakePerplexity) -> Iterator[RawH2]:
    client = RawH2(fake)
    yield client
    client.close()


def test_settings_and_windows_are_like_a_real_server(raw_h2):
    events = raw_h2.until(lambda e: isinstance(e, h2.events.WindowUpdated) and e.stream_id == 0)
    (settings,) = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
    codes = h2.settings.SettingCodes
    assert settings.changed_settings[codes.MAX_CONCURRENT_STREAMS].new_value == 100
    assert settings.changed_settings[codes.INITIAL_WINDOW_SIZE].new_value == STREAM_WINDOW
    (window,) = [e for e in events if isinstance(e, h2.events.WindowUpdated) and e.stream_id == 0]
    assert window.delta == CONNECTION_WINDOW - STREAM_WINDOW


def test_max_concurrent_streams_is_advertised():
    with FakePerplexity(tls=True, http2=True, max_concurrent_streams=7) as server:
        client = RawH2(server)
        try:
            events = client.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        finally:
            client.close()
    (settings,) = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
    assert settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 7


def test_rst_stream_is_noticed_promptly_and_other_streams_carry_on(fake, raw_h2):
    fake.enqueue(Fault("stall", after_frames=1, delay=30))
    stalled = raw_h2.ask()
    raw_h2.until(lambda e: isinstance(e, h2.events.DataReceived) and e.stream_id == stalled)
    assert fake.open_streams == 1
    raw_h2.conn.reset_stream(stalled, error_code=h2.errors.ErrorCodes.CANCEL)
    raw_h2.flush()
    # Well before the 30 s stall would have ended it: the RST_STREAM itself ended the stream.
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=5, interval=0.002)
    assert fake.streams_closed_by_client == 1
    second = raw_h2.ask()
    raw_h2.until(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == second)
    assert_complete(raw_h2.received[second])


def test_an_in_stream_reset_is_rst_stream_internal_error(fake, raw_h2):
    fake.enqueue(Fault("reset", after_frames=2))
    stream_id = raw_h2.ask()
    events = raw_h2.until(lambda e: isinstance(e, h2.events.StreamReset))
    (reset,) = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert reset.stream_id == stream_id and reset.error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
    assert len(frames_of(raw_h2.received[stream_id])) == 2
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    names = {name for name, _ in response.headers}
    assert {":status", "content-type", "cf-ray", "server"} <= names
    assert not names & {"transfer-encoding", "connection", "keep-alive"}


def test_streams_of_one_connection_are_served_by_their_own_threads(fake, raw_h2):
    """A stalled stream does not hold up a second one on the same connection."""
    fake.enqueue(Fault("stall", after_frames=1, delay=30))
    stalled, quick = raw_h2.ask(), raw_h2.ask()
    raw_h2.until(lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == quick)
    assert_complete(raw_h2.received[quick])
    assert fake.open_streams == 1 and threading.active_count() > 2
    raw_h2.conn.reset_stream(stalled)
    raw_h2.flush()
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=2)
