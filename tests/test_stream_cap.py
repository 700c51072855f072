"""MAX_CONCURRENT_STREAMS under concurrent bursts: one worker, two workers and two instances sharing Redis."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import secrets
import signal
import threading
import time

import flask
import psutil
import pytest
import redis
import requests

from api.stores.redis_store import redis_client
from api.stores.streams import StreamLeases
from perplexity.testing import Fault, Reply

from .conftest import REDIS_URL, free_port

USER = [{"role": "user", "content": "hello"}]
CHAT = {"model": "perplexity-auto", "messages": USER, "stream": True}
MESSAGES = {"model": "sonnet", "max_tokens": 1024, "messages": USER, "stream": True}
# Long enough (30 s) that every stream of a burst is still open when the last request of the burst is answered.
SLOW = Reply(answer="slow " * 300, chunk_size=5, frame_delay=0.1)


def new_key() -> str:
    return "sk-" + secrets.token_hex(8)


def slots_key(key: str) -> str:
    """The Redis set of the caller an API key is (api/edge/auth.py names keyed callers `key:<sha256[:16]>`)."""
    return "pplx:streams:key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def post(url, key, path="/v1/chat/completions", body=CHAT):
    return requests.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=30)


def burst(urls, key, n=9, path="/v1/chat/completions", body=CHAT):
    """`n` streamed requests released at once (spread over `urls`); their responses, still open."""
    gate = threading.Barrier(n)
    responses: list[requests.Response | None] = [None] * n

    def one(i):
        gate.wait(timeout=30)
        responses[i] = post(urls[i % len(urls)], key, path, body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r is not None for r in responses)
    return responses


def admitted(responses) -> int:
    """How many were admitted; every refusal must be the cap's 429, in its family's error shape."""
    for refused in (r for r in responses if r.status_code != 200):
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        error = refused.json()
        if error.get("type") == "error":  # Anthropic's shape
            assert error["error"]["type"] == "rate_limit_error"
            assert "concurrent streams" in error["error"]["message"]
        else:
            assert error["error"]["code"] == "concurrent_streams_exceeded"
    return sum(r.status_code == 200 for r in responses)


def close_all(responses):
    for response in responses:
        response.close()


def capped_burst(urls, key, **kwargs) -> int:
    """A burst's admitted count; the streams are closed afterwards."""
    responses = burst(urls, key, **kwargs)
    try:
        return admitted(responses)
    finally:
        close_all(responses)


def wait_for(predicate, what, attempts=300, interval=0.1):
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"never happened: {what}")


def open_streams(server) -> int:
    return requests.get(server.url + "/stats", timeout=10).json()["open_streams"]


def live_slots(store: redis.Redis, key: str) -> list[tuple[str, int]]:
    """(worker pid, lease expiry) of every slot the caller holds in Redis whose lease has not lapsed."""
    seconds, micros = store.time()
    now_ms = seconds * 1000 + micros // 1000
    members = store.zrange(slots_key(key), 0, -1, withscores=True)
    return [(int(m.decode().rsplit(":", 2)[1]), int(score)) for m, score in members if score > now_ms]


def workers(server) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children()


# ---- the burst -------------------------------------------------------------------------------------------


def test_a_burst_admits_exactly_the_cap_on_one_worker(fake, live_server_factory):
    key, other = new_key(), new_key()
    server = live_server_factory(MAX_CONCURRENT_STREAMS="3", API_KEYS=f"{key},{other}")
    fake.default_reply = SLOW
    responses = burst([server.url], key)
    try:
        assert admitted(responses) == 3
        assert admitted([post(server.url, other)]) == 1  # another caller has slots of its own
    finally:
        close_all(responses)


def test_a_burst_admits_exactly_the_cap_on_two_workers_with_redis(fake, live_server_factory, redis_up):
    key = new_key()
    server = live_server_factory(
        MAX_CONCURRENT_STREAMS="3", API_KEYS=key, WEB_CONCURRENCY="2", RATELIMIT_STORAGE_URI=REDIS_URL
    )
    fake.default_reply = SLOW
    for _ in range(3):  # a fresh connection per request: each burst lands on both workers in some split
        assert capped_burst([server.url], key) == 3
        wait_for(lambda: not live_slots(redis_up, key), "the closed streams' slots came back")


def test_a_burst_spread_over_two_instances_admits_exactly_the_cap(fake, live_server_factory, redis_up):
    key = new_key()
    env = {"MAX_CONCURRENT_STREAMS": "3", "API_KEYS": key, "RATELIMIT_STORAGE_URI": REDIS_URL}
    one, other = live_server_factory(**env), live_server_factory(**env)
    fake.default_reply = SLOW
    assert capped_burst([one.url, other.url], key) == 3


def test_messages_streams_are_capped_the_same_way(fake, live_server_factory, redis_up):
    key = new_key()
    fake.default_reply = SLOW
    alone = live_server_factory(MAX_CONCURRENT_STREAMS="3", API_KEYS=key)
    assert capped_burst([alone.url], key, path="/v1/messages", body=MESSAGES) == 3
    shared = live_server_factory(
        MAX_CONCURRENT_STREAMS="3", API_KEYS=key, WEB_CONCURRENCY="2", RATELIMIT_STORAGE_URI=REDIS_URL
    )
    assert capped_burst([shared.url], key, path="/v1/messages", body=MESSAGES) == 3
    wait_for(lambda: not live_slots(redis_up, key), "the closed streams' slots came back")
    # Chat and messages streams draw on the same slots.
    held = [post(shared.url, key) for _ in range(3)]
    try:
        assert [r.status_code for r in held] == [200, 200, 200]
        assert admitted([post(shared.url, key, "/v1/messages", MESSAGES)]) == 0
    finally:
        close_all(held)


# ---- slots come back -------------------------------------------------------------------------------------


def test_slots_come_back_after_streams_end_disconnect_or_fail(fake, live_server_factory):
    key = new_key()
    server = live_server_factory(MAX_CONCURRENT_STREAMS="3", API_KEYS=key, PERPLEXITY_MAX_RETRIES="0")
    # Streams read to their end.
    fake.default_reply = Reply(answer="short answer", chunk_size=4, frame_delay=0.05)
    responses = burst([server.url], key)
    assert admitted(responses) == 3
    for response in responses:
        if response.status_code == 200:
            assert b"[DONE]" in response.content
    wait_for(lambda: open_streams(server) == 0, "ended streams gave their slots back")
    # Clients that leave mid-stream.
    fake.default_reply = SLOW
    assert capped_burst([server.url], key) == 3
    wait_for(lambda: open_streams(server) == 0, "departed clients' slots came back")
    # An upstream that fails before the stream starts (more often than the cap), and one that breaks mid-stream.
    fake.enqueue(Fault("server_error", times=4), Fault("reset", after_frames=2))
    assert [post(server.url, key).status_code for _ in range(4)] == [502] * 4
    broken = post(server.url, key)
    assert broken.status_code == 200 and b'"error"' in broken.content
    wait_for(lambda: open_streams(server) == 0, "failed streams' slots came back")
    assert capped_burst([server.url], key) == 3


def test_slots_come_back_in_redis_after_disconnect(fake, live_server_factory, redis_up):
    key = new_key()
    server = live_server_factory(
        MAX_CONCURRENT_STREAMS="3",
        API_KEYS=key,
        WEB_CONCURRENCY="2",
        RATELIMIT_STORAGE_URI=REDIS_URL,
        PERPLEXITY_MAX_RETRIES="0",
    )
    fake.default_reply = SLOW
    held = [post(server.url, key) for _ in range(3)]
    assert [r.status_code for r in held] == [200, 200, 200] and len(live_slots(redis_up, key)) == 3
    close_all(held)
    wait_for(lambda: not redis_up.exists(slots_key(key)), "the slots were removed from Redis")
    fake.enqueue(Fault("server_error", times=4))  # open failures release their leases as well
    assert [post(server.url, key).status_code for _ in range(4)] == [502] * 4
    assert not live_slots(redis_up, key)
    assert capped_burst([server.url], key) == 3


def test_a_killed_workers_slots_come_back_within_a_lease(fake, live_server_factory, redis_up):
    key = new_key()
    server = live_server_factory(
        MAX_CONCURRENT_STREAMS="3",
        API_KEYS=key,
        WEB_CONCURRENCY="2",
        RATELIMIT_STORAGE_URI=REDIS_URL,
        STREAM_LEASE_SECONDS="2",
    )
    fake.default_reply = SLOW
    held = [post(server.url, key) for _ in range(3)]
    try:
        assert [r.status_code for r in held] == [200, 200, 200]
        holders = {pid for pid, _ in live_slots(redis_up, key)}
        assert holders and holders <= {p.pid for p in workers(server)}
        for pid in holders:
            os.kill(pid, signal.SIGKILL)  # no release, no exit hook: only the lease can give the slots back
    finally:
        close_all(held)
    wait_for(lambda: len(workers(server)) == 2 and not holders & {p.pid for p in workers(server)}, "respawned")
    wait_for(lambda: not redis_up.exists(slots_key(key)), "the dead workers' leases lapsed")
    assert capped_burst([server.url], key) == 3


def test_an_instance_shut_down_mid_stream_gives_its_slots_back(fake, live_server_factory, redis_up):
    key = new_key()
    env = {
        "MAX_CONCURRENT_STREAMS": "3",
        "API_KEYS": key,
        "RATELIMIT_STORAGE_URI": REDIS_URL,
        "STREAM_LEASE_SECONDS": "2",
        "GRACEFUL_TIMEOUT": "1",
    }
    leaving, staying = live_server_factory(**env), live_server_factory(**env)
    fake.default_reply = SLOW
    held = [post(leaving.url, key) for _ in range(3)]
    try:
        assert [r.status_code for r in held] == [200, 200, 200]
        assert admitted([post(staying.url, key)]) == 0  # the other instance sees them
        leaving.stop()  # the streams outlive the graceful timeout
    finally:
        close_all(held)
    wait_for(lambda: not live_slots(redis_up, key), "the stopped instance's slots came back")
    assert capped_burst([staying.url], key) == 3


# ---- Redis unreachable -----------------------------------------------------------------------------------


def test_an_unreachable_redis_falls_back_to_the_workers_count_with_one_warning(fake, live_server_factory):
    key = new_key()
    server = live_server_factory(
        MAX_CONCURRENT_STREAMS="3", API_KEYS=key, RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0"
    )
    fake.default_reply = SLOW
    assert capped_burst([server.url], key) == 3
    wait_for(lambda: open_streams(server) == 0, "slots came back")
    time.sleep(2.1)  # past the store's retry pause, so Redis is tried (and fails) again
    assert capped_burst([server.url], key) == 3
    assert server.log().count("stream cap: Redis unreachable") == 1


# ---- the store itself ------------------------------------------------------------------------------------


@pytest.fixture
def leases(redis_up):
    store = StreamLeases(redis_client(REDIS_URL), 30, prefix=f"pplx-test-{secrets.token_hex(4)}:")
    yield store
    store.close()
    for name in store.redis.scan_iter(match=store.prefix + "*"):
        store.redis.delete(name)
    store.redis.close()


def test_leases_admit_up_to_the_cap_and_release_once(leases):
    slots = [leases.acquire("alice", 2) for _ in range(3)]
    assert [admitted for admitted, _ in slots] == [True, True, False] and slots[2][1] is None
    assert leases.acquire("bob", 2)[0]  # callers are counted apart
    leases.release("alice", slots[0][1])
    leases.release("alice", slots[0][1])  # twice is harmless
    again = leases.acquire("alice", 2)
    assert again[0] and not leases.acquire("alice", 2)[0]
    assert leases.redis.zcard(leases.key("alice")) == 2 and leases.held() == 3


def test_renewing_extends_held_leases_and_never_revives_a_dropped_one(leases):
    _, slot = leases.acquire("alice", 1)
    before = leases.redis.zscore(leases.key("alice"), slot)
    time.sleep(0.01)  # so Redis's millisecond clock has moved
    assert leases.renew() == 1 and leases.redis.zscore(leases.key("alice"), slot) > before
    leases.redis.zrem(leases.key("alice"), slot)  # as a lapsed lease is dropped by someone else's admission
    assert leases.renew() == 0 and leases.redis.zcard(leases.key("alice")) == 0


def test_a_lapsed_lease_is_dropped_on_the_next_admission(redis_up):
    short = StreamLeases(redis_client(REDIS_URL), 0.2, prefix=f"pplx-test-{secrets.token_hex(4)}:")
    try:
        _, first = short.acquire("alice", 1)
        short.abandon(first)  # as a killed worker would: nobody renews it
        wait_for(lambda: short.acquire("alice", 1)[0], "the lapsed slot came back", interval=0.05)
        assert first.encode() not in short.redis.zrange(short.key("alice"), 0, -1)
    finally:
        short.close()
        short.redis.delete(short.key("alice"))
        short.redis.close()


def test_an_outage_admits_warns_once_and_recovery_is_noticed(leases, caplog, monkeypatch):
    leases._retry_after = 0  # try Redis on every call, so each one fails
    working = leases._acquire

    def down(*args, **kwargs):
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(leases, "_acquire", down)
    with caplog.at_level(logging.INFO, logger="api.stores.streams"):
        assert [leases.acquire("alice", 1) for _ in range(5)] == [(True, None)] * 5
        monkeypatch.setattr(leases, "_acquire", working)
        assert leases.acquire("alice", 1)[0] and not leases.acquire("alice", 1)[0]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Redis unreachable" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1


def test_a_dead_redis_is_left_alone_for_a_while():
    dead = StreamLeases(redis_client(f"redis://127.0.0.1:{free_port()}/0"), 30, clock=lambda: 0.0)
    calls = []
    real = dead._acquire
    dead._acquire = lambda *a, **k: calls.append(1) or real(*a, **k)
    assert [dead.acquire("alice", 1) for _ in range(3)] == [(True, None)] * 3
    assert calls == [1]  # only the first admission waited on Redis
    dead.close()
    dead.redis.close()


# ---- paths that never run the body -----------------------------------------------------------------------


def test_a_stream_never_iterated_gives_its_slot_back(app, client, fake):
    app.config["MAX_CONCURRENT_STREAMS"] = 1
    fake.default_reply = SLOW
    server = app.extensions["perplexity"]
    response = client.post("/v1/chat/completions", json=CHAT, buffered=False)
    assert response.status_code == 200 and server.open_streams == 1
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 429
    response.close()  # what a WSGI server does when the client left before the first byte
    assert server.open_streams == 0 and fake.wait_until(lambda: fake.open_streams == 0, timeout=3)
    fake.default_reply = Reply(answer="short")
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_stream_response_dropped_unsent_gives_its_slot_back(app, client, fake):
    app.config["MAX_CONCURRENT_STREAMS"] = 1
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer the failure with a 500, as in production
    fake.default_reply = Reply(answer="short")
    server = app.extensions["perplexity"]

    @app.after_request
    def fail_late(response):
        if "X-Fail-Late" in flask.request.headers and response.mimetype == "text/event-stream":
            raise RuntimeError("after_request failed: the stream response is dropped, never closed")
        return response

    logging.disable(logging.CRITICAL)  # a kept log record's traceback would keep the dropped response alive
    try:
        dropped = client.post("/v1/chat/completions", json=CHAT, headers={"X-Fail-Late": "1"})
    finally:
        logging.disable(logging.NOTSET)
    assert dropped.status_code == 500
    gc.collect()
    assert server.open_streams == 0
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_running_streams_lease_is_renewed(fake, live_server_factory, redis_up):
    key = new_key()
    server = live_server_factory(
        MAX_CONCURRENT_STREAMS="1", API_KEYS=key, RATELIMIT_STORAGE_URI=REDIS_URL, STREAM_LEASE_SECONDS="1"
    )
    fake.default_reply = SLOW
    held = post(server.url, key)
    try:
        assert held.status_code == 200
        [(_, first_expiry)] = live_slots(redis_up, key)
        # Still held after its first lease ran out: the worker renewed it.
        wait_for(lambda: [e for _, e in live_slots(redis_up, key)] > [first_expiry + 1000], "renewed past a lease")
        assert admitted([post(server.url, key)]) == 0
    finally:
        held.close()
