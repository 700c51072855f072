"""The account pool end to end: real gunicorn, the fake with several accounts, Redis where state is shared."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from perplexity.testing import Reply

from .conftest import REDIS_URL, TOKEN


def tokens(n: int) -> list[str]:
    return [f"acct-token-{secrets.token_hex(12)}" for _ in range(n)]


def accounts_file(tmp_path, lines: list[str]):
    path = tmp_path / f"accounts-{secrets.token_hex(3)}"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def chat(server, messages, **extra):
    body = {"model": "perplexity-auto", "messages": messages, **extra}
    return requests.post(server.url + "/v1/chat/completions", json=body, timeout=30)


def wait_until(predicate, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_three_accounts_one_rate_limited_one_expired(fake, live_server_factory, tmp_path, redis_up) -> None:
    token_b, token_c = tokens(2)
    fake.add_account(token_b, label="b")
    fake.add_account(token_c, label="c")
    fake.rate_limit("b", retry_after=3)
    fake.expire("c")
    path = accounts_file(tmp_path, [f"a {TOKEN}", f"b {token_b}", f"c {token_c}"])
    server = live_server_factory(
        PERPLEXITY_ACCOUNTS_FILE=str(path), WEB_CONCURRENCY="2", CONVERSATION_STORE_URI=REDIS_URL
    )
    conversations = []
    for number in range(100):
        messages = [{"role": "user", "content": f"Question number {number}?"}]
        first = chat(server, messages)
        assert first.status_code == 200, first.text
        account = first.headers["x-perplexity-account"]
        messages += [{"role": "assistant", "content": first.json()["choices"][0]["message"]["content"]}]
        conversations.append((messages, account))
    served = [account for _, account in conversations]
    assert "c" not in served  # the expired account answers nothing
    assert len(fake.asks_of("c")) == 0  # its quota and session checks found it out before any ask
    # The rate-limited account comes back after its Retry-After.
    assert wait_until(
        lambda: chat(server, [{"role": "user", "content": secrets.token_hex(4)}]).headers["x-perplexity-account"] == "b"
    )
    # Every follow-up goes to its thread's account, as a follow-up.
    for messages, account in conversations:
        second = chat(server, [*messages, {"role": "user", "content": "And then?"}])
        assert second.status_code == 200 and second.headers["x-perplexity-account"] == account
        assert second.headers["x-conversation-continued"] == "true"
    followups = [ask for ask in fake.asks if ask.json["params"].get("query_source") == "followup"]
    assert len(followups) == 100
    owners = {thread.context_uuid: thread.account for thread in fake.threads.values()}
    assert all(owners[ask.thread] == ask.account for ask in followups)
    ready = requests.get(server.url + "/health/ready", timeout=10).json()
    assert {a["label"]: a["state"] for a in ready["accounts"]}["c"] == "expired" and ready["status"] == "ready"


def test_every_account_out_of_quota(fake, live_server_factory, tmp_path) -> None:
    (token_b,) = tokens(1)
    fake.add_account(token_b, label="b")
    for label in ("default", "b"):
        fake.set_quota(label, pro_search=0)
    path = accounts_file(tmp_path, [f"a {TOKEN}", f"b {token_b}"])
    server = live_server_factory(PERPLEXITY_ACCOUNTS_FILE=str(path), QUOTA_RETRY_AFTER="1234")
    refused = chat(server, [{"role": "user", "content": "Hi"}])
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1234"
    assert refused.json()["error"]["code"] == "quota_exhausted" and not fake.asks
    fallback = live_server_factory(PERPLEXITY_ACCOUNTS_FILE=str(path), QUOTA_FALLBACK_MODEL="perplexity-labs")
    served = chat(fallback, [{"role": "user", "content": "Hi"}])
    assert served.status_code == 200 and served.json()["model"] == "perplexity-labs"
    assert served.headers["x-perplexity-quota-fallback"] == "perplexity-auto"
    assert fake.asks[-1].json["params"]["model_preference"] == "pplx_beta"


def test_the_accounts_file_edited_while_streams_run(fake, live_server_factory, tmp_path) -> None:
    token_b, token_d = tokens(2)
    fake.add_account(token_b, label="b")
    fake.add_account(token_d, label="d")
    path = accounts_file(tmp_path, [f"a {TOKEN}", f"b {token_b}"])
    server = live_server_factory(PERPLEXITY_ACCOUNTS_FILE=str(path))
    fake.default_reply = Reply(answer="word " * 60, chunk_size=5, frame_delay=0.05)
    body = {"model": "perplexity-auto", "stream": True}
    streams = [
        requests.post(
            server.url + "/v1/chat/completions",
            json={**body, "messages": [{"role": "user", "content": f"Stream {n}?"}]},
            stream=True,
            timeout=30,
        )
        for n in range(20)
    ]
    on = {response.headers["x-perplexity-account"] for response in streams}
    path.write_text(f"a {TOKEN}\nd {token_d}\n")  # b goes, d comes, while the 20 run
    bodies = [response.content.decode() for response in streams]
    assert all(text.rstrip().endswith("data: [DONE]") and '"error"' not in text for text in bodies)
    assert on <= {"a", "b"}
    fake.default_reply = Reply()
    seen = set()
    assert wait_until(
        lambda: (
            seen.add(chat(server, [{"role": "user", "content": secrets.token_hex(4)}]).headers["x-perplexity-account"])
            or "d" in seen
        )
    )
    later = {chat(server, [{"role": "user", "content": secrets.token_hex(4)}]).headers["x-perplexity-account"]
             for _ in range(10)}  # fmt: skip
    assert "b" not in later


def test_the_keepalive_keeps_a_rotated_cookie_across_a_restart(fake, live_server_factory, tmp_path) -> None:
    path = accounts_file(tmp_path, [f"a {TOKEN}"])
    fake.set_rotation("default", on_session=True, grace=0)  # the old cookie stops at once
    first = live_server_factory(PERPLEXITY_ACCOUNTS_FILE=str(path), SESSION_KEEPALIVE_SECONDS="1")
    assert wait_until(lambda: TOKEN not in path.read_text())
    rotated = path.read_text().split()[1]
    assert rotated == fake.account("default").token and path.stat().st_mode & 0o777 == 0o600
    assert rotated not in first.log() and TOKEN not in first.log()
    fake.set_rotation("default", on_session=False)
    second = live_server_factory(PERPLEXITY_ACCOUNTS_FILE=str(path))
    answer = chat(second, [{"role": "user", "content": "Still there?"}])
    assert answer.status_code == 200 and fake.asks[-1].account == "default"


class Webhook:
    """A loopback webhook that records the JSON it receives."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_states_in_quota_readiness_metrics_and_one_alert_per_change(fake, live_server_factory, tmp_path) -> None:
    (token_b,) = tokens(1)
    fake.add_account(token_b, label="b")
    fake.set_quota("b", pro_search=7)
    hook = Webhook()
    try:
        path = accounts_file(tmp_path, [f"a {TOKEN}", f"b {token_b}"])
        server = live_server_factory(
            PERPLEXITY_ACCOUNTS_FILE=str(path), ALERT_WEBHOOK_URL=hook.url, SESSION_KEEPALIVE_SECONDS="1"
        )
        quota = requests.get(server.url + "/v1/quota", timeout=10).json()["data"]
        assert [a["label"] for a in quota] == ["a", "b"] and quota[1]["quota"]["pro_search"]["remaining"] == 7
        assert token_b not in json.dumps(quota) and TOKEN not in json.dumps(quota)
        fake.expire("b")  # the keep-alive's next session check finds it; asks meanwhile go to a
        for _ in range(3):
            assert chat(server, [{"role": "user", "content": secrets.token_hex(4)}]).status_code == 200
        assert wait_until(lambda: len(hook.received) >= 1)
        time.sleep(0.5)  # room for a duplicate to show up, if one were sent
        assert [(e["account"], e["state"]) for e in hook.received] == [("b", "expired")]
        assert token_b not in json.dumps(hook.received)
        ready = requests.get(server.url + "/health/ready", timeout=10).json()
        assert {a["label"]: a["state"] for a in ready["accounts"]} == {"a": "ready", "b": "expired"}
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        assert 'pplx_account_state{account="b",state="expired"} 1.0' in metrics
        assert 'pplx_account_alerts_total{account="b",state="expired"} 1.0' in metrics
    finally:
        hook.close()
