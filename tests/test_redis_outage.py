"""Redis unreachable: quotas hold from the first request on (in memory), with one warning per outage."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests


@pytest.fixture
def black_hole():
    """A port that accepts connections (the kernel's backlog) and never answers: a hung Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_hung_redis_does_not_open_the_rate_limit_for_the_burst_in_flight(live_server_factory, black_hole) -> None:
    server = live_server_factory(
        ENABLE_RATE_LIMITING="true",
        REQUESTS_PER_MINUTE="20",
        RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{black_hole}/0",
    )

    def one(_: int) -> int:
        return requests.get(server.url + "/v1/models", timeout=20).status_code

    with ThreadPoolExecutor(max_workers=60) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses.count(200) == 20 and statuses.count(429) == 40, statuses
    log = server.log()
    assert log.count("Traceback") == 0
    assert log.count("Rate limit storage unreachable") == 1  # one warning for the outage, not one per request


def test_a_dead_conversation_store_is_reported_and_the_client_is_told(fake, live_server_factory, black_hole) -> None:
    server = live_server_factory(CONVERSATION_STORE_URI=f"redis://127.0.0.1:{black_hole}/0")
    ready = requests.get(server.url + "/health/ready", timeout=20)
    assert ready.status_code == 503
    assert any("conversation store" in reason for reason in ready.json()["reasons"])
    messages = [{"role": "user", "content": "First?"}]
    first = requests.post(server.url + "/v1/chat/completions", json={"messages": messages}, timeout=20)
    assert first.status_code == 200 and "x-conversation-continued" not in first.headers  # nothing to continue
    answer = first.json()["choices"][0]["message"]["content"]
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Second?"}]
    for _ in range(3):
        second = requests.post(server.url + "/v1/chat/completions", json={"messages": messages}, timeout=20)
        assert second.status_code == 200 and second.headers["x-conversation-continued"] == "false"
    assert fake.asks[-1].json["params"]["query_source"] == "home"  # a new thread, the history flattened
    assert server.log().count("redis store unreachable") == 1  # one warning for the outage


def test_a_continued_conversation_says_so(fake, live_server) -> None:
    messages = [{"role": "user", "content": "First?"}]
    first = requests.post(live_server.url + "/v1/chat/completions", json={"messages": messages}, timeout=20)
    messages += [{"role": "assistant", "content": first.json()["choices"][0]["message"]["content"]}]
    messages += [{"role": "user", "content": "Second?"}]
    body = {"messages": messages, "stream": True}
    with requests.post(live_server.url + "/v1/chat/completions", json=body, stream=True, timeout=20) as second:
        assert second.headers["x-conversation-continued"] == "true"
    assert fake.asks[-1].json["params"]["query_source"] == "followup"
