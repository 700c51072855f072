"""API_KEYS_FILE: per-key labels, model lists, request and stream quotas and expiry, through the official SDKs
against real gunicorn and the fake, and the file re-read on change by every worker (two workers, Redis)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api.config import SettingError
from perplexity.testing import Reply

from .conftest import REDIS_URL, TOKEN

USER = [{"role": "user", "content": "hello"}]
SLOW = Reply(answer="slow " * 300, chunk_size=5, frame_delay=0.1)  # 30 s: open until closed
RELOAD_WAIT = 1.2  # past the file's check interval (one second per worker), so the next request re-reads it


def new_key(prefix: str = "sk-") -> str:
    return prefix + secrets.token_hex(12)


def key_id(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def write_keys(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write the file whole and swap it in (a new inode), as an editor or a config tool does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": entries}))
    os.replace(tmp, path)


def sdk(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20)


def claude(server, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=20)


# ---- one worker, one file: the policy ---------------------------------------------------------------------

KEYS = {name: new_key() for name in ("alpha", "bravo", "charlie", "old", "future", "nolabel", "plain")}


@pytest.fixture(scope="module")
def policy(live_server_factory, tmp_path_factory):
    """One worker; rate limiting and the server-wide stream cap off, so every quota seen is a key's own."""
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    write_keys(
        path,
        [
            {"key": KEYS["alpha"], "label": "alpha", "models": ["perplexity-sonar", "sonar*", "claude-*haiku*"]},
            {"key": KEYS["bravo"], "label": "bravo", "rpm": 3},
            {"key": KEYS["charlie"], "label": "charlie", "streams": 1},
            {"key": KEYS["old"], "label": "old", "expires": "2020-01-01"},
            {"key": KEYS["future"], "label": "future", "expires": "2999-01-01T00:00:00+02:00"},
            {"key": KEYS["nolabel"], "models": ["perplexity-sonar"]},
        ],
    )
    return live_server_factory(API_KEYS_FILE=str(path), API_KEYS=KEYS["plain"])


def test_a_disallowed_model_is_refused_with_model_not_allowed_on_every_endpoint(fake, policy):
    with sdk(policy, KEYS["alpha"]) as client:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(model="perplexity-auto", messages=USER)
        assert refused.value.status_code == 403 and refused.value.code == "model_not_allowed"
        assert refused.value.body["type"] == "permission_error" and refused.value.body["param"] == "model"
        assert "'perplexity-auto'" in refused.value.message
        with pytest.raises(openai.PermissionDeniedError) as responses_refused:
            client.responses.create(model="claude-4.8-opus", input="hi")
        assert responses_refused.value.code == "model_not_allowed"
        with pytest.raises(openai.PermissionDeniedError):  # a background response is refused before it is queued
            client.responses.create(model="perplexity-auto", input="hi", background=True)
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model="perplexity-research", prompt="hi")
        with pytest.raises(openai.PermissionDeniedError):  # no model named: the server's default is checked
            client.chat.completions.create(model="", messages=USER)
        asks = len(fake.asks)
        # The allowed ones: the exact id, and a Sonar name its pattern allows (it resolves to another model).
        assert client.chat.completions.create(model="perplexity-sonar", messages=USER).choices[0].message.content
        assert client.chat.completions.create(model="sonar", messages=USER).model == "sonar"
        assert len(fake.asks) == asks + 2  # the refused requests asked Perplexity nothing
    with claude(policy, KEYS["alpha"]) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            client.messages.create(model="claude-opus-4-1", max_tokens=100, messages=USER)
        assert denied.value.body["error"]["type"] == "permission_error"
        assert "claude-opus-4-1" in denied.value.body["error"]["message"]
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.count_tokens(model="claude-opus-4-1", messages=USER)
        # An Anthropic name the key's pattern allows, whatever model it maps to.
        message = client.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=USER)
        assert message.content[0].text
    with sdk(policy, KEYS["plain"]) as client:  # API_KEYS: no policy
        assert client.chat.completions.create(model="perplexity-auto", messages=USER).choices[0].message.content


def test_the_model_list_shows_only_the_allowed_models(fake, policy):
    with sdk(policy, KEYS["alpha"]) as client:
        listed = [model.id for model in client.models.list()]
        assert "perplexity-sonar" in listed and "perplexity-auto" not in listed
        assert client.models.retrieve("perplexity-sonar").id == "perplexity-sonar"
        with pytest.raises(openai.NotFoundError) as hidden:  # as an unknown id: a restricted key learns nothing
            client.models.retrieve("perplexity-auto")
        assert hidden.value.code == "model_not_found"
    with sdk(policy, KEYS["nolabel"]) as client:
        assert [model.id for model in client.models.list()] == ["perplexity-sonar"]
    with claude(policy, KEYS["alpha"]) as client:
        anthropic_ids = [model.id for model in client.models.list(limit=1000)]
        assert "perplexity-sonar" in anthropic_ids and "perplexity-auto" not in anthropic_ids
    with sdk(policy, KEYS["plain"]) as client:
        assert {"perplexity-auto", "perplexity-sonar"} <= {model.id for model in client.models.list()}


def test_a_keys_own_rpm_applies_while_other_keys_are_served(fake, policy):
    with sdk(policy, KEYS["bravo"]) as client:
        for _ in range(3):
            page = client.models.with_raw_response.list()
            assert page.headers["x-ratelimit-limit-requests"] == "3"
        with pytest.raises(openai.RateLimitError) as limited:
            client.models.list()
        assert limited.value.code == "rate_limit_exceeded"
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    # ENABLE_RATE_LIMITING is off: a key without an rpm is not limited at all.
    with sdk(policy, KEYS["plain"]) as client:
        for _ in range(6):
            page = client.models.with_raw_response.list()
            assert page.status_code == 200 and "x-ratelimit-limit-requests" not in page.headers


def _stream(server, key: str) -> requests.Response:
    body = {"model": "perplexity-auto", "messages": USER, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    return requests.post(server.url + "/v1/chat/completions", json=body, headers=headers, stream=True, timeout=30)


def test_a_keys_own_stream_cap(fake, policy):
    fake.default_reply = SLOW
    held = [_stream(policy, KEYS["charlie"])]
    try:
        assert held[0].status_code == 200
        refused = _stream(policy, KEYS["charlie"])
        held.append(refused)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "concurrent_streams_exceeded"
        assert "limit 1" in refused.json()["error"]["message"]
        # MAX_CONCURRENT_STREAMS is 0 (no cap): a key without `streams` opens more.
        held += [_stream(policy, KEYS["plain"]), _stream(policy, KEYS["plain"])]
        assert [r.status_code for r in held[2:]] == [200, 200]
    finally:
        for response in held:
            response.close()


def test_an_expired_key_is_refused_while_a_live_one_works(fake, policy):
    with sdk(policy, KEYS["old"]) as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            client.models.list()
    assert refused.value.code == "invalid_api_key"
    assert "expired at 2020-01-02T00:00:00Z" in refused.value.message  # a date: the key works through that day
    assert KEYS["old"] not in refused.value.response.text
    with claude(policy, KEYS["old"]) as client, pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=USER)
    with sdk(policy, KEYS["future"]) as client:
        assert client.models.list().data


def _metric_keys(server) -> dict[str, float]:
    """Requests counted per `key` label on /metrics."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pplx_http_requests_total":
                counts[sample.labels["key"]] = counts.get(sample.labels["key"], 0) + sample.value
    return counts


def test_the_label_not_the_key_in_the_access_log_and_metrics(fake, policy):
    for name in ("alpha", "nolabel", "plain"):
        with sdk(policy, KEYS[name]) as client:
            client.models.list()
    counts = _metric_keys(policy)
    assert counts["alpha"] >= 1 and counts[key_id(KEYS["nolabel"])] >= 1
    # API_KEYS' keys (and no key) are one value: the labels come from the file alone.
    assert counts["-"] >= 1 and key_id(KEYS["plain"]) not in counts
    log = policy.log()
    assert '"GET /v1/models HTTP/1.1" 200' in log and "key=alpha" in log
    assert f"key={key_id(KEYS['nolabel'])}" in log and f"key={key_id(KEYS['plain'])}" in log
    leaked = [name for name, key in KEYS.items() if key in log]
    assert not leaked and TOKEN not in log


# ---- start-up checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        ([{"key": "KEY_A", "label": "a"}, {"key": "KEY_A", "label": "b"}], "entry 1 (b) repeats the key of entry 0"),
        ([{"key": "KEY_A", "label": "same"}, {"key": "KEY_B", "label": "same"}], "entry 1 (same) repeats the label"),
        ([{"key": "KEY_A", "labels": "x"}], "entry 0: unknown field 'labels'"),
        ([{"key": "KEY_A", "label": "ci", "rpm": "10"}], "entry 0 (ci): rpm must be a whole number"),
        ([{"key": "KEY_A", "label": "ci", "streams": -1}], "entry 0 (ci): streams must be a whole number"),
        ([{"key": "KEY_A", "label": "ci", "models": "sonar"}], "entry 0 (ci): models must be a list"),
        ([{"key": "KEY_A", "label": "ci", "expires": "next week"}], "entry 0 (ci): expires must be an ISO 8601"),
        ([{"key": "KEY_A", "label": "has space"}], "entry 0: label must be"),
        ([{"label": "nokey"}], "entry 0 (nokey): key must be a non-empty string"),
        ([{"key": "short", "label": "tiny"}], "entry 0 (tiny): key must be at least 8"),
    ],
)
def test_a_bad_file_stops_the_app_naming_the_entry_never_the_key(tmp_path, entries, named):
    from app import create_app

    keys = {"KEY_A": new_key(), "KEY_B": new_key()}
    real = [{**entry, "key": keys.get(entry["key"], entry["key"])} if "key" in entry else entry for entry in entries]
    path = tmp_path / "keys.json"
    write_keys(path, real)
    with pytest.raises(SettingError) as stopped:
        create_app({"API_KEYS_FILE": str(path), "PERPLEXITY_SESSION_TOKEN": TOKEN})
    assert str(stopped.value).startswith(f"API_KEYS_FILE {path}: ") and named in str(stopped.value)
    assert not any(key in str(stopped.value) for key in keys.values())


def test_gunicorn_refuses_to_start_on_a_bad_file(live_server_factory, tmp_path):
    secret = new_key()
    path = tmp_path / "keys.json"
    write_keys(path, [{"key": new_key(), "label": "fine"}, {"key": secret, "label": "ci", "expires": "2026-13-01"}])
    with pytest.raises(RuntimeError, match="exited early") as failed:
        live_server_factory(API_KEYS_FILE=str(path))
    assert f"error: API_KEYS_FILE {path}: entry 1 (ci): expires must be an ISO 8601" in str(failed.value)
    assert secret not in str(failed.value)
    path.write_text('{"keys": [')
    with pytest.raises(RuntimeError, match="is not valid JSON"):
        live_server_factory(API_KEYS_FILE=str(path))


# ---- reloads, two workers, Redis ---------------------------------------------------------------------------


def _access(server) -> dict[str, dict[str, Any]]:
    """The JSON access records by request id."""
    records = {}
    for line in server.log().splitlines():
        record = json.loads(line)
        if record.get("logger") == "gunicorn.access":
            records[record["request_id"]] = record
    return records


def _pid(server, rid: str) -> int:
    """The worker that answered request `rid` (its access record is written just after the response)."""
    for _ in range(100):
        record = _access(server).get(rid)
        if record is not None:
            return record["pid"]
        time.sleep(0.05)
    raise AssertionError(f"no access record for {rid}")


def _status(server, key: str, path: str = "/v1/models/perplexity-auto") -> tuple[int, str]:
    """(status, request id) of one request on a fresh connection (so both workers take turns)."""
    rid = "req_" + secrets.token_hex(8)
    headers = {"Authorization": f"Bearer {key}", "X-Request-ID": rid, "Connection": "close"}
    with requests.get(server.url + path, headers=headers, timeout=10) as response:
        return response.status_code, rid


def _on_every_worker(server, expect: dict[str, int]) -> None:
    """Ask with each key (fresh connections) until both workers have answered all of them; every answer must be
    the expected status."""
    seen: dict[int, set[str]] = {}
    for _ in range(40):
        for key, status in expect.items():
            got, rid = _status(server, key)
            assert got == status, (key, got)
            pid = _pid(server, rid)
            seen.setdefault(pid, set()).add(key)
        if len(seen) == 2 and all(len(keys) == len(expect) for keys in seen.values()):
            return
    raise AssertionError(f"both workers never answered every key: {seen}")


def test_edits_take_effect_in_every_worker_without_a_restart(fake, live_server_factory, tmp_path, redis_up):
    a, b, c = new_key(), new_key(), new_key()
    path = tmp_path / "keys.json"
    write_keys(path, [{"key": a, "label": "a", "models": ["perplexity-sonar"]}, {"key": b, "label": "b"}])
    server = live_server_factory(
        API_KEYS_FILE=str(path), WEB_CONCURRENCY="2", RATELIMIT_STORAGE_URI=REDIS_URL, LOG_FORMAT="json"
    )
    _on_every_worker(server, {a: 404, b: 200, c: 401})  # a may not see perplexity-auto; c is no key yet
    # Add c, remove b, change a's models.
    write_keys(path, [{"key": a, "label": "a", "models": ["perplexity-*"]}, {"key": c, "label": "c"}])
    time.sleep(RELOAD_WAIT)
    _on_every_worker(server, {a: 200, b: 401, c: 200})
    # A broken edit keeps the previous policy, with one warning per worker.
    path.write_text('{"keys": [{"key": "' + c + '", "label": "c"},')
    time.sleep(RELOAD_WAIT)
    _on_every_worker(server, {a: 200, b: 401, c: 200})
    warnings = [json.loads(line) for line in server.log().splitlines() if "keeping the keys loaded before" in line]
    assert 1 <= len(warnings) <= 2 and all(w["level"] == "WARNING" for w in warnings)
    assert len({w["pid"] for w in warnings}) == len(warnings)  # one per worker, not one per request
    assert c not in server.log() and a not in server.log()
    # Fixed again: the new version applies.
    write_keys(path, [{"key": c, "label": "c", "models": ["perplexity-sonar"]}])
    time.sleep(RELOAD_WAIT)
    _on_every_worker(server, {a: 401, b: 401, c: 404})


def test_a_keys_rpm_is_shared_by_two_workers_through_redis(fake, live_server_factory, tmp_path, redis_up):
    limited, other = new_key(), new_key()
    path = tmp_path / "keys.json"
    write_keys(path, [{"key": limited, "label": "limited", "rpm": 4}, {"key": other, "label": "other", "rpm": 100}])
    server = live_server_factory(
        API_KEYS_FILE=str(path), WEB_CONCURRENCY="2", RATELIMIT_STORAGE_URI=REDIS_URL, LOG_FORMAT="json"
    )
    statuses, pids = [], set()
    for _ in range(40):  # fresh connections, until both workers have answered (and refused) some
        status, rid = _status(server, limited, "/v1/models")
        statuses.append(status)
        pids.add(_pid(server, rid))
        if len(pids) == 2 and len(statuses) > 4:
            break
    # Four in all, whichever worker counted them: a worker that admitted fewer than four refuses too.
    assert len(pids) == 2 and statuses == [200] * 4 + [429] * (len(statuses) - 4)
    assert _status(server, other, "/v1/models")[0] == 200
    with sdk(server, limited) as client, pytest.raises(openai.RateLimitError):
        client.models.list()


def test_a_key_added_by_a_reload_is_masked_in_the_log(fake, live_server_factory, tmp_path):
    from perplexity.testing import Fault

    first, added = new_key(), new_key()
    path = tmp_path / "keys.json"
    write_keys(path, [{"key": first, "label": "first"}])
    server = live_server_factory(API_KEYS_FILE=str(path))
    write_keys(path, [{"key": first, "label": "first"}, {"key": added, "label": "added"}])
    time.sleep(RELOAD_WAIT)
    fake.enqueue(Fault("failed", after_frames=2, error_code="E", message=f"saw {added} and {first} and {TOKEN}"))
    with sdk(server, added) as client, pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="perplexity-auto", messages=USER)
    log = server.log()
    assert "saw *** and *** and ***" in log
    assert added not in log and first not in log and TOKEN not in log


# ---- MCP's HTTP mode --------------------------------------------------------------------------------------


def test_mcp_http_mode_applies_a_keys_models_and_expiry(fake, tmp_path):
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from .test_mcp import CALL_TIMEOUT, http_server, run, text_of

    narrow, old = new_key(), new_key()
    path = tmp_path / "keys.json"
    write_keys(
        path,
        [
            {"key": narrow, "label": "narrow", "models": ["perplexity-sonar"]},
            {"key": old, "label": "old", "expires": "2020-01-01"},
        ],
    )
    with http_server(fake, API_KEYS_FILE=str(path)) as url:
        with httpx2.Client(timeout=5) as http:
            expired = http.post(url, json={}, headers={"Authorization": f"Bearer {old}"})
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]

        async def call(tool: str, arguments: dict[str, Any]) -> Any:
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {narrow}"}, timeout=CALL_TIMEOUT) as http:
                async with Client(streamable_http_client(url, http_client=http)) as mcp:
                    return await mcp.call_tool(tool, arguments)

        async def main() -> None:
            with anyio.fail_after(CALL_TIMEOUT):
                refused = await call("perplexity_ask", {"query": "hi", "model": "perplexity-auto"})
                assert refused.is_error and "not allowed to use the model 'perplexity-auto'" in text_of(refused)
                research = await call("perplexity_research", {"query": "hi"})
                assert research.is_error and "perplexity-research" in text_of(research)
                asks = len(fake.asks)
                allowed = await call("perplexity_ask", {"query": "hi", "model": "perplexity-sonar"})
                assert not allowed.is_error, text_of(allowed)
                assert len(fake.asks) == asks + 1  # the refused calls asked nothing

        run(main)


def test_mcp_http_tool_calls_spend_the_keys_rpm_with_the_http_api(fake, live_server_factory, tmp_path, redis_up):
    """A key's `rpm` is one budget for its /v1 requests and its MCP tool calls (HTTP mode), shared through Redis:
    two /v1 requests and one ask spend 3 of 3, the next ask is a tool error naming the limit (asking nothing),
    and the next /v1 request is a 429 too."""
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from .test_mcp import CALL_TIMEOUT, http_server, run, text_of

    key = new_key()
    path = tmp_path / "keys.json"
    write_keys(path, [{"key": key, "label": "metered", "rpm": 3}])
    shared = {"API_KEYS_FILE": str(path), "RATELIMIT_STORAGE_URI": REDIS_URL}
    api = live_server_factory(**shared)
    with openai.OpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0) as client:
        client.models.list()
        client.models.list()
        with http_server(fake, **shared) as url:

            async def ask() -> Any:
                async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=CALL_TIMEOUT) as http:
                    async with Client(streamable_http_client(url, http_client=http)) as mcp:
                        return await mcp.call_tool("perplexity_ask", {"query": "hi"})

            async def main() -> None:
                with anyio.fail_after(CALL_TIMEOUT):
                    allowed = await ask()
                    assert not allowed.is_error, text_of(allowed)
                    asks = len(fake.asks)
                    refused = await ask()
                    assert refused.is_error and "Rate limit reached for requests: 3 per minute" in text_of(refused)
                    assert len(fake.asks) == asks  # refused before anything was asked

            run(main)
        with pytest.raises(openai.RateLimitError):
            client.models.list()


def test_the_shared_budget_counts_in_memory_while_its_storage_is_down(caplog):
    """MCP's meter (api.edge.quotas.CallerQuota) with an unreachable Redis: calls are counted in memory, so the
    budget still holds (never opened), with one warning for the outage."""
    from api.edge.errors import APIError
    from api.edge.quotas import CallerQuota

    from .conftest import free_port

    config = {
        "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{free_port()}/0",
        "ENABLE_RATE_LIMITING": False,
        "REQUESTS_PER_MINUTE": 60,
    }
    meter = CallerQuota(config)
    with caplog.at_level(logging.WARNING, logger="api.edge.quotas"):
        meter.spend("key:dead-storage", None)  # rate limiting off and no rpm of its own: not counted
        meter.spend("key:dead-storage", 2)
        meter.spend("key:dead-storage", 2)
        with pytest.raises(APIError) as refused:
            meter.spend("key:dead-storage", 2)
    assert refused.value.status == 429 and "2 per minute" in refused.value.message
    assert int(refused.value.headers["retry-after"]) >= 1
    assert [r.getMessage() for r in caplog.records].count(
        "rate-limit storage failed (ConnectionError); counting in this process's memory"
    ) == 1
