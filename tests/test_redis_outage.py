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
