"""Models discovery, API keys, quotas, readiness, stats and metrics on live gunicorn servers."""

from __future__ import annotations

import secrets
import threading
import time

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from perplexity.testing import Fault, Reply

from .openapi import validate

USER = [{"role": "user", "content": "hello"}]


def sdk(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20)


def get(server, path, **kwargs):
    return requests.get(server.url + path, timeout=10, **kwargs)


# ---- models ------------------------------------------------------------------------------------


def test_models_are_discovered_from_the_catalogue(fake, live_server_factory):
    server = live_server_factory(MODELS_REFRESH_SECONDS="3600")
    assert requests.post(server.url + "/v1/models/refresh", timeout=10).json()["source"] == "upstream (v1)"
    with sdk(server) as client:
        models = client.models.list()
        ids = [m.id for m in models.data]
        assert ids[:4] == ["perplexity-auto", "perplexity-sonar", "perplexity-research", "perplexity-labs"]
        assert {"claude-4.8-opus", "claude-4.8-opus-thinking", "gpt-5.5-thinking"} <= set(ids)
        opus = client.models.retrieve("claude-4.8-opus")
        assert opus.owned_by == "anthropic"
        again = {m.id: m.created for m in client.models.list().data}
        assert again == {m.id: m.created for m in models.data}  # stable across calls
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")
    validate(get(server, "/v1/models").json(), "ListModelsResponse")
    validate(get(server, "/v1/models/perplexity-auto").json(), "Model")
    assert get(server, "/stats").json()["models"]["source"] == "upstream (v1)"


def test_created_is_stable_across_restarts(fake, live_server_factory):
    first = {m["id"]: m["created"] for m in get(live_server_factory(), "/v1/models").json()["data"]}
    second = {m["id"]: m["created"] for m in get(live_server_factory(), "/v1/models").json()["data"]}
    assert first == {k: second[k] for k in first}


def test_catalogue_failure_falls_back_to_the_builtin_list(fake, live_server_factory):
    fake.fault_for("/rest/models/config", Fault("server_error", status=500, times=100))
    server = live_server_factory()
    refreshed = requests.post(server.url + "/v1/models/refresh", timeout=20).json()
    assert refreshed["refreshed"] is False and refreshed["source"].startswith("builtin")
    assert "perplexity-auto" in [m["id"] for m in refreshed["data"]]
    stats = get(server, "/stats").json()
    assert stats["models"]["source"].startswith("builtin") and stats["upstream_errors"]["upstream_5xx"] >= 1
    ready = get(server, "/health/ready")
    assert ready.status_code == 503 and "catalogue" in " ".join(ready.json()["reasons"])


def test_default_model_applies_when_none_is_named(fake, live_server_factory):
    server = live_server_factory(DEFAULT_MODEL="perplexity-research")
    response = requests.post(server.url + "/v1/chat/completions", json={"messages": USER}, timeout=20)
    assert response.status_code == 200 and response.json()["model"] == "perplexity-research"
    assert fake.asks[-1].json["params"]["model_preference"] == "pplx_alpha"


# ---- keys --------------------------------------------------------------------------------------


def test_one_key(fake, live_server_factory):
    server = live_server_factory(OPENAI_API_KEY="sk-only-one")
    with sdk(server, "sk-only-one") as good, sdk(server, "sk-wrong") as bad:
        assert good.chat.completions.create(model="perplexity-auto", messages=USER).choices
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model="perplexity-auto", messages=USER)
        assert info.value.code == "invalid_api_key"
    missing = requests.get(server.url + "/v1/models", timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert get(server, "/health").status_code == 200  # health needs no key
    assert "sk-only-one" not in server.log() and "sk-wrong" not in server.log()


def test_several_keys(fake, live_server_factory):
    server = live_server_factory(API_KEYS="k-one, k-two", OPENAI_API_KEY="k-three")
    for key in ("k-one", "k-two", "k-three"):
        with sdk(server, key) as client:
            assert client.models.list().data
    with sdk(server, "k-four") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_no_key_is_open_and_warned(live_server):
    with sdk(live_server, "anything") as client:
        assert client.models.list().data
    assert "API is open" in live_server.log()


# ---- quotas ------------------------------------------------------------------------------------


def test_requests_per_minute_quota(fake, live_server_factory):
    server = live_server_factory(ENABLE_RATE_LIMITING="true", REQUESTS_PER_MINUTE="3", API_KEYS="q1,q2")
    with sdk(server, "q1") as client:
        for expected_remaining in (2, 1, 0):
            raw = client.models.with_raw_response.list()
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-remaining-requests"] == str(expected_remaining)
            assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="perplexity-auto", messages=USER)
        headers = info.value.response.headers
        assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-remaining-requests"] == "0"
        validate(info.value.response.json(), "ErrorResponse")
    with sdk(server, "q2") as other:  # quotas are per caller
        assert other.models.list().data
    for _ in range(5):
        assert get(server, "/health").status_code == 200 and get(server, "/metrics").status_code == 200
    assert fake.asks == []


def test_quota_shared_through_redis_across_workers(fake, live_server_factory):
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    key = "rk-" + secrets.token_hex(6)  # fresh counters on every run
    server = live_server_factory(
        ENABLE_RATE_LIMITING="true",
        REQUESTS_PER_MINUTE="4",
        API_KEYS=key,
        WEB_CONCURRENCY="2",
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/0",
    )
    statuses = []
    for _ in range(10):  # new connections, so both workers take some
        statuses.append(requests.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code)
    assert statuses.count(200) == 4 and statuses.count(429) == 6


def test_concurrent_stream_cap(fake, live_server_factory):
    server = live_server_factory(MAX_CONCURRENT_STREAMS="1")
    fake.enqueue(Reply(answer="slow " * 40, chunk_size=5, frame_delay=0.1))
    body = {"model": "perplexity-auto", "messages": USER, "stream": True}
    first = requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=20)
    next(first.iter_content(16))
    second = requests.post(server.url + "/v1/chat/completions", json=body, timeout=20)
    assert second.status_code == 429 and second.json()["error"]["code"] == "concurrent_streams_exceeded"
    assert second.headers["retry-after"] == "1"
    first.close()
    assert fake.wait_until(lambda: fake.open_streams == 0)
    later = requests.post(server.url + "/v1/chat/completions", json=body, timeout=20)
    assert later.status_code == 200
    # The same cap holds for the Anthropic family, in its shape.
    fake.enqueue(Reply(answer="slow " * 40, chunk_size=5, frame_delay=0.1))
    first = requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=20)
    next(first.iter_content(16))
    anthropic_body = {"model": "sonnet", "max_tokens": 100, "messages": USER, "stream": True}
    second = requests.post(server.url + "/v1/messages", json=anthropic_body, timeout=20)
    assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"
    first.close()
    assert fake.wait_until(lambda: fake.open_streams == 0)


# ---- readiness, stats, metrics ----------------------------------------------------------------


def test_readiness_follows_the_session(fake, live_server_factory):
    server = live_server_factory(SESSION_CHECK_SECONDS="0")
    ready = get(server, "/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    fake.session_valid = False
    not_ready = get(server, "/health/ready")
    assert not_ready.status_code == 503
    assert "not logged in" in " ".join(not_ready.json()["reasons"])


def test_missing_token_does_not_crash_and_is_explained(live_server_factory):
    server = live_server_factory(PERPLEXITY_SESSION_TOKEN="")
    assert get(server, "/health").status_code == 200
    ready = get(server, "/health/ready")
    assert ready.status_code == 503 and "PERPLEXITY_SESSION_TOKEN" in ready.json()["reasons"][0]
    with sdk(server) as client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="perplexity-auto", messages=USER)
    assert info.value.status_code == 503 and info.value.code == "perplexity_not_configured"
    assert "PERPLEXITY_SESSION_TOKEN" in info.value.message


def _samples(server):
    text = get(server, "/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_parse_and_move_with_traffic(fake, live_server_factory):
    server = live_server_factory()
    before = _samples(server)
    with sdk(server) as client:
        client.chat.completions.create(model="perplexity-auto", messages=USER)
        "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="perplexity-auto", messages=USER, stream=True)
            if c.choices
        )
        fake.enqueue(Fault("cloudflare"))
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="perplexity-auto", messages=USER)
    after = _samples(server)
    route = ("key", "-"), ("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200")
    assert after[("pplx_http_requests_total", route)] - before.get(("pplx_http_requests_total", route), 0) == 2
    assert after[("pplx_upstream_errors_total", (("kind", "cloudflare"),))] == 1
    assert after[("pplx_time_to_first_token_seconds_count", ())] >= 1
    assert after[("pplx_open_streams", ())] == 0
    stats = get(server, "/stats").json()
    assert stats["requests"] >= 3 and stats["upstream_errors"]["cloudflare"] == 1 and stats["open_streams"] == 0
    assert [(e["kind"], e["account"]) for e in stats["recent_upstream_errors"]] == [("cloudflare", None)]


def test_stats_lists_recent_upstream_failures_newest_first_with_their_account(fake, live_server_factory):
    server = live_server_factory()
    started = time.time()
    with sdk(server) as client:
        fake.enqueue(Fault("failed", after_frames=4, error_code="MODEL_ERROR", message="Model broke"))
        with pytest.raises(openai.APIError):  # the stream's error event
            for _ in client.chat.completions.create(model="perplexity-auto", messages=USER, stream=True):
                pass
        fake.enqueue(Fault("server_error", status=500, times=9))
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="perplexity-auto", messages=USER)
    recent = get(server, "/stats").json()["recent_upstream_errors"]
    assert [(e["kind"], e["account"]) for e in recent] == [("upstream_5xx", None), ("failed", "default")]
    assert recent[0]["at"] >= recent[1]["at"] >= started - 1
    assert "Model broke" not in str(recent)  # kinds only: /stats is public, upstream text is not


def test_gunicorn_boots_cleanly_and_never_logs_secrets(fake, live_server):
    with sdk(live_server) as client:
        client.chat.completions.create(model="perplexity-auto", messages=USER)
    log = live_server.log()
    assert "Booting worker" in log
    assert "MonkeyPatchWarning" not in log and "Traceback" not in log
    from .conftest import TOKEN

    assert TOKEN not in log


def test_open_streams_are_counted(fake, live_server_factory):
    server = live_server_factory()
    fake.enqueue(Reply(answer="slow " * 40, chunk_size=5, frame_delay=0.1))
    stop = threading.Event()
    response = requests.post(
        server.url + "/v1/chat/completions",
        json={"model": "perplexity-auto", "messages": USER, "stream": True},
        stream=True,
        timeout=20,
    )
    next(response.iter_content(16))
    assert get(server, "/stats").json()["open_streams"] == 1
    response.close()
    stop.set()
    assert fake.wait_until(lambda: fake.open_streams == 0)


def test_a_rotated_cookie_survives_a_restart_with_a_token_file(fake, live_server_factory, tmp_path):
    from .conftest import TOKEN

    path = tmp_path / "token.json"
    fake.rotate_on_session = True
    first = live_server_factory(PERPLEXITY_TOKEN_FILE=str(path), SESSION_CHECK_SECONDS="0")
    assert get(first, "/health/ready").status_code == 200  # the session check receives a rotated cookie
    rotated = fake.session_token
    assert rotated != TOKEN and path.stat().st_mode & 0o777 == 0o600
    assert TOKEN not in path.read_text() and rotated not in first.log()
    fake.rotate_on_session = False
    second = live_server_factory(PERPLEXITY_TOKEN_FILE=str(path))
    with sdk(second) as client:
        client.chat.completions.create(model="perplexity-auto", messages=USER)
    assert f"session-token={rotated}" in fake.asks[-1].headers["cookie"]
    third = live_server_factory(PERPLEXITY_TOKEN_FILE=str(path), PERPLEXITY_SESSION_TOKEN="a-new-login-token")
    with sdk(third) as client, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="perplexity-auto", messages=USER)  # the file is not used
    # The new token was what the server used (its quota and session checks found it logged out at the fake).
    assert "session-token=a-new-login-token" in fake.requests[-1].headers["cookie"]
