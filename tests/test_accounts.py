"""The account pool (api.core.accounts): configuration, the pick, failover states and cooldowns."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from api.core.accounts import AccountPool, AccountSpec, account_specs, parse_accounts
from perplexity.errors import AuthenticationError, CloudflareChallengeError, RateLimitError
from perplexity.types import ModeQuota, RateLimitStatus, SessionInfo


def test_accounts_file_lines() -> None:
    specs = parse_accounts(
        "# label token proxy\n"
        "work  tok-work-123\n"
        "tok-anon-456\n"
        "home tok-home-789 socks5://127.0.0.1:1080  # a comment\n"
        "\n"
    )
    assert specs == [
        AccountSpec("work", "tok-work-123"),
        AccountSpec("account-2", "tok-anon-456"),
        AccountSpec("home", "tok-home-789", "socks5://127.0.0.1:1080"),
    ]
    with pytest.raises(ValueError, match="used twice"):
        parse_accounts("a t1\na t2\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_accounts("a b c d\n")


def test_where_accounts_come_from(tmp_path) -> None:
    path = tmp_path / "accounts"
    path.write_text("one t1\ntwo t2 http://proxy:8080\n")
    config = {
        "PERPLEXITY_ACCOUNTS_FILE": str(path),
        "PERPLEXITY_SESSION_TOKENS": "x,y",
        "PERPLEXITY_PROXY": "http://p:1",
    }
    assert [(s.label, s.proxy) for s in account_specs(config)] == [("one", "http://p:1"), ("two", "http://proxy:8080")]
    assert [s.token for s in account_specs({"PERPLEXITY_SESSION_TOKENS": " x, y ,"})] == ["x", "y"]
    assert account_specs({"PERPLEXITY_SESSION_TOKEN": "solo"}) == [AccountSpec("default", "solo")]
    assert account_specs({}) == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stub_client(spec: AccountSpec) -> SimpleNamespace:
    """A client stand-in: open streams, and a session check that says what the test sets."""
    return SimpleNamespace(open_streams=0, session_valid=True, session=None, close=lambda: None, spec=spec)


def make_pool(*labels: str) -> tuple[AccountPool, Clock]:
    clock = Clock()
    pool = AccountPool([AccountSpec(label, f"tok-{label}") for label in labels], stub_client, clock)
    for account in pool.accounts:
        client = account.client
        client.session = lambda c=client: SessionInfo(valid=c.session_valid)
    return pool, clock


def pro_left(remaining: int | None) -> RateLimitStatus:
    """A rate-limit status with `remaining` Pro searches (None: not metered)."""
    return RateLimitStatus({"pro_search": ModeQuota(remaining is None or remaining > 0, remaining)})


def test_the_pick_prefers_the_least_busy_then_the_most_quota_then_takes_turns() -> None:
    pool, _ = make_pool("a", "b", "c")
    a, b, c = pool.accounts
    a.client.open_streams, b.client.open_streams, c.client.open_streams = 2, 0, 0
    b.quota, c.quota = pro_left(3), pro_left(50)
    assert pool.pick().label == "c"
    c.client.open_streams = 1
    assert pool.pick().label == "b"
    b.client.open_streams = c.client.open_streams = 0
    b.quota = c.quota = pro_left(None)
    assert {pool.pick().label for _ in range(4)} == {"b", "c"}  # equal: they take turns
    assert pool.pick(exclude={"b", "c"}).label == "a"


def test_failures_set_an_account_aside_by_kind() -> None:
    pool, clock = make_pool("a", "b")
    a, b = pool.accounts
    pool.failed(a, RateLimitError("429", status_code=429, retry_after=30))
    assert a.state == "cooling" and pool.pick().label == "b" and pool.earliest_return() == 30
    clock.now += 31
    assert a.usable(clock.now) and a.state == "ready"
    pool.failed(b, CloudflareChallengeError("blocked", status_code=403))
    assert b.state == "blocked" and pool.pick().label == "a"
    a.client.session_valid = True
    pool.failed(a, AuthenticationError("401", status_code=401))  # a fluke: the session is still valid
    assert a.state == "ready"
    a.client.session_valid = False
    pool.failed(a, AuthenticationError("401", status_code=401))
    assert a.state == "expired" and pool.pick() is None and a.public(clock.now)["reason"]


def test_a_lone_account_is_not_blocked_by_cloudflare_but_honours_a_retry_after() -> None:
    pool, clock = make_pool("solo")
    (solo,) = pool.accounts
    pool.failed(solo, CloudflareChallengeError("blocked", status_code=403))
    assert solo.state == "ready"  # nowhere else to go: keep trying
    pool.failed(solo, RateLimitError("429", status_code=429, retry_after=None))
    assert solo.state == "cooling" and pool.pick() is None and pool.earliest_return() == 60


def test_an_expired_account_is_failed_over_and_shown(fake, live_server_factory) -> None:
    """With the fake's one valid token second in the pool, the first account's 401 moves every ask to it."""
    import requests

    from .conftest import TOKEN

    server = live_server_factory(PERPLEXITY_SESSION_TOKENS=f"expired-token-0000000000,{TOKEN}")
    body = {"model": "perplexity-auto", "messages": [{"role": "user", "content": "Hi"}]}
    for _ in range(3):
        response = requests.post(server.url + "/v1/chat/completions", json=body, timeout=20)
        assert response.status_code == 200 and response.headers["x-perplexity-account"] == "account-2"
    ready = requests.get(server.url + "/health/ready", timeout=20).json()
    states = {a["label"]: a["state"] for a in ready["accounts"]}
    assert states == {"account-1": "expired", "account-2": "ready"} and ready["status"] == "ready"
    assert TOKEN not in server.log() and "expired-token-0000000000" not in server.log()


def test_quota_endpoint_metrics_and_headers(fake, live_server) -> None:
    import requests

    quota = requests.get(live_server.url + "/v1/quota", timeout=20).json()
    (account,) = quota["data"]
    assert account["label"] == "default" and account["state"] == "ready" and "pro_search" in account["quota"]
    assert "token" not in str(quota).lower()
    metrics = requests.get(live_server.url + "/metrics", timeout=20).text
    assert 'pplx_account_state{account="default",state="ready"} 1.0' in metrics
    body = {"model": "perplexity-auto", "messages": [{"role": "user", "content": "Hi"}]}
    response = requests.post(live_server.url + "/v1/chat/completions", json=body, timeout=20)
    assert response.headers["x-perplexity-account"] == "default"


def test_save_token_rewrites_only_its_line(tmp_path) -> None:
    import os
    import stat

    from api.core.accounts import save_token

    path = tmp_path / "accounts"
    path.write_text("# my accounts\nwork tok-old socks5://h:1  # the office\ntok-anon\nhome tok-home\n")
    save_token(str(path), AccountSpec("work", "tok-new", "socks5://h:1"))
    save_token(str(path), AccountSpec("account-2", "tok-anon-2"))
    # The label's line is rewritten (an unlabeled line gains its label); every other line stays as it was.
    assert path.read_text() == "# my accounts\nwork tok-new socks5://h:1\naccount-2 tok-anon-2\nhome tok-home\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [s.token for s in parse_accounts(path.read_text())] == ["tok-new", "tok-anon-2", "tok-home"]


def test_the_watcher_reloads_the_file_and_keeps_what_did_not_change(tmp_path) -> None:
    from api.core.accounts import AccountWatcher

    path = tmp_path / "accounts"
    path.write_text("a tok-a\nb tok-b\n")
    config = {"PERPLEXITY_ACCOUNTS_FILE": str(path)}
    closed = []
    clock = Clock()

    def client(spec):
        made = stub_client(spec)
        made.close = lambda: closed.append(spec.label)
        return made

    pool = AccountPool(account_specs(config), client, clock)
    watcher = AccountWatcher(pool, config, lambda: account_specs(config))
    a_before, b_before = pool.accounts
    pool.failed(a_before, RateLimitError("429", status_code=429, retry_after=100))
    b_before.client.open_streams = 2  # b's streams run on while it is removed
    path.write_text("a tok-a\nc tok-c\n")
    os.utime(path, ns=(1, 10**18))  # a new mtime whatever the clock's resolution
    watcher.step()
    assert [a.label for a in pool.accounts] == ["a", "c"]
    assert pool.get("a") is a_before and a_before.state == "cooling"  # unchanged: same client, same state
    assert closed == []  # b still has streams
    b_before.client.open_streams = 0
    watcher.step()
    assert closed == ["b"]
    path.write_text("a tok-a-new\nc tok-c\n")
    os.utime(path, ns=(1, 2 * 10**18))
    watcher.step()
    assert pool.get("a") is not a_before and pool.get("a").state == "ready"  # a new token: a fresh account
    path.write_text("a a b c d e\n")  # a broken file: the old set stays
    os.utime(path, ns=(1, 3 * 10**18))
    watcher.step()
    assert [a.label for a in pool.accounts] == ["a", "c"]


def test_each_state_change_is_alerted_once_to_the_webhook() -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from api.alerts import Alerter

    received, answers = [], [500, 200, 200, 200]

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(answers.pop(0) if answers else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        alerter = Alerter(f"http://127.0.0.1:{server.server_port}/hook", first_delay=0.05)
        pool, clock = make_pool("a", "b")
        pool._on_change = lambda account, previous, state: alerter.account_changed(
            account.label, previous, state, account.reason
        )
        a, _ = pool.accounts
        pool.failed(a, RateLimitError("429", status_code=429, retry_after=5))
        pool.failed(a, RateLimitError("429", status_code=429, retry_after=5))  # no change: no second alert
        a.client.session_valid = False
        pool.failed(a, AuthenticationError("401", status_code=401))
        for _ in range(200):
            if alerter.sent == 2:
                break
            threading.Event().wait(0.05)
    finally:
        server.shutdown()
        server.server_close()
    assert alerter.sent == 2
    events = [(e["account"], e["previous"], e["state"]) for e in received]
    # Two changes, so two alerts; the first POST to arrive got a 500 and was sent again.
    assert sorted(set(events)) == [("a", "cooling", "expired"), ("a", "ready", "cooling")] and len(events) == 3
    assert all("tok-" not in json.dumps(e) for e in received)


def test_two_pools_share_states_and_open_asks_through_redis() -> None:
    """Two workers' pools on one Redis: a cooldown one sets is the other's within a sync, open asks are counted
    across both, and a new token starts clean."""
    import secrets

    import redis

    from api.stores.accounts import SharedAccounts
    from api.stores.streams import StreamLeases

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"pplx-test-{secrets.token_hex(4)}:"
    clock = Clock()

    def pool() -> AccountPool:
        shared = SharedAccounts(client, StreamLeases(client, 30, prefix=prefix), prefix=prefix)
        made = AccountPool([AccountSpec("a", "tok-a"), AccountSpec("b", "tok-b")], stub_client, clock, shared=shared)
        return made

    one, two = pool(), pool()
    try:
        one.failed(one.get("a"), RateLimitError("429", status_code=429, retry_after=120))
        clock.now += 2  # past the sync interval
        assert two.pick().label == "b" and two.get("a").state == "cooling"
        done = [one.opened(one.get("b")) for _ in range(3)]  # worker one holds three asks on b
        clock.now += 200  # a's cooldown is over: now "least busy" decides, across both workers
        assert two.pick().label == "a"
        for close in done:
            close()
        two.reload([AccountSpec("a", "tok-a-new"), AccountSpec("b", "tok-b")])
        one.failed(one.get("b"), RateLimitError("429", status_code=429, retry_after=120))
        clock.now += 2
        assert two.get("a").state == "ready"  # a new token: the shared state of the old one does not apply
    finally:
        for made in (one, two):
            made._shared.close()
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
