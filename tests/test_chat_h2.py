"""Chat on the production wire: gunicorn on the curl engine, Perplexity (the fake) over TLS + HTTP/2."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from perplexity.sse import SSEDecoder
from perplexity.testing import FakePerplexity, Fault, Reply

from .conftest import TOKEN

USER = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "Paris is the capital of France [1]. It lies on the Seine [2]."
STREAM = {"model": "perplexity-auto", "messages": USER, "stream": True}


@pytest.fixture(scope="module")
def h2_upstream() -> Iterator[FakePerplexity]:
    with FakePerplexity(session_token=TOKEN, tls=True, http2=True) as upstream:
        yield upstream


@pytest.fixture
def h2(h2_upstream: FakePerplexity) -> Iterator[FakePerplexity]:
    h2_upstream.reset()
    yield h2_upstream
    h2_upstream.reset()


@pytest.fixture(scope="module")
def h2_server(h2_upstream, live_server_factory):
    """gunicorn impersonating Chrome towards the TLS + HTTP/2 fake, trusting the fake's CA."""
    return live_server_factory(PERPLEXITY_BASE_URL=h2_upstream.url, PERPLEXITY_CA_BUNDLE=str(h2_upstream.ca_path))


def sse_data(response: requests.Response) -> list[bytes]:
    decoder = SSEDecoder()
    return [event.data.encode() for chunk in response.iter_content(None) for event in decoder.feed(chunk)]


def test_chat_streams_and_answers_over_tls_and_http2(h2, h2_server):
    h2.enqueue(Reply(answer=ANSWER), Reply(answer=ANSWER, chunk_size=5))
    with openai.OpenAI(base_url=h2_server.url + "/v1", api_key="unused", max_retries=0) as sdk:
        whole = sdk.chat.completions.create(model="perplexity-auto", messages=USER)
        stream = sdk.chat.completions.create(model="perplexity-auto", messages=USER, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert whole.choices[0].message.content == ANSWER == streamed
    assert [r.http_version for r in h2.asks] == ["2", "2"]
    assert h2.connections_opened <= 1  # both asks (and any catalogue call) on one kept-alive h2 connection


def test_a_reset_stream_ends_in_one_error_event_and_the_connection_carries_on(h2, h2_server):
    h2.enqueue(Fault("reset", after_frames=3), Reply(answer=ANSWER))
    with requests.post(h2_server.url + "/v1/chat/completions", json=STREAM, stream=True, timeout=20) as response:
        events = sse_data(response)
    assert b"[DONE]" not in events and events[-1].startswith(b'{"error":')
    assert b"upstream_stream_truncated" in events[-1]
    opened = h2.connections_opened
    with requests.post(h2_server.url + "/v1/chat/completions", json=STREAM, stream=True, timeout=20) as response:
        assert sse_data(response)[-1] == b"[DONE]"
    assert h2.connections_opened == opened <= 1  # RST_STREAM ended one stream, not the connection
    assert "Traceback" not in h2_server.log()


def test_a_client_that_leaves_resets_its_upstream_stream(h2, h2_server):
    h2.enqueue(Reply(answer=ANSWER * 50, chunk_size=4, frame_delay=0.1))
    response = requests.post(h2_server.url + "/v1/chat/completions", json=STREAM, stream=True, timeout=20)
    try:
        next(response.iter_content(64))
        assert h2.wait_until(lambda: h2.open_streams == 1)
    finally:
        response.close()
    assert h2.wait_until(lambda: h2.open_streams == 0, timeout=5)
    assert h2.streams_closed_by_client == 1


def test_a_hundred_concurrent_streams_share_few_connections(h2, h2_server):
    """As a browser does: HTTP/2 multiplexes the streams, the pool does not open a connection per stream."""
    h2.default_reply = Reply(answer=ANSWER * 4, chunk_size=16, frame_delay=0.05)
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], h2.open_streams)
            stop.wait(0.005)

    def one(_: int) -> bool:
        with requests.post(h2_server.url + "/v1/chat/completions", json=STREAM, stream=True, timeout=60) as r:
            return sse_data(r)[-1] == b"[DONE]"

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            done = list(pool.map(one, range(100)))
    finally:
        stop.set()
        watcher.join(5)
    assert all(done) and len(h2.asks) == 100
    assert peak[0] >= 50  # most of them were open at the same time
    assert h2.connections_opened <= 3  # 100 streams at once, at most 100 per connection
