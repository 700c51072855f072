"""The fake upstream's several accounts: attribution, thread ownership, per-account faults, expiry, quotas, rotation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from perplexity import errors
from perplexity.client import PerplexityClient
from perplexity.testing import DEFAULT_ACCOUNT, FakeAccount, FakePerplexity, Fault, Reply
from perplexity.types import AskOptions, ModeQuota

from .conftest import TOKEN
from .test_fake_upstream import ask_body

COOKIE = "__Secure-next-auth.session-token"
ASK = "/rest/sse/perplexity_ask"
ANSWER = "Paris is the capital of France [1]."
TOKENS = {"alpha": "alpha-token-0001", "beta": "beta-token-0002", "gamma": "gamma-token-0003"}


# ---- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def trio(fake: FakePerplexity) -> dict[str, FakeAccount]:
    """Three accounts besides the default one (removed again by the fixture's reset)."""
    return {label: fake.add_account(token, label=label) for label, token in TOKENS.items()}


@contextmanager
def client(fake: FakePerplexity, token: str | None, **options: Any) -> Iterator[PerplexityClient]:
    """A client without retries (so one ask is one request) unless asked otherwise."""
    settings: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 2.0, "max_retries": 0, "backoff": 0.01}
    settings.update(options)
    with PerplexityClient(token, base_url=fake.url, **settings) as c:
        yield c


def raw(fake: FakePerplexity, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
    """One request with `token` as the session cookie; the whole body is read."""
    headers = {"Cookie": f"{COOKIE}={token}"} if token else {}
    return requests.request(method, fake.url + path, headers=headers, timeout=5, **kwargs)


def _cookie(request: Any) -> str:
    """The session cookie value a recorded request carried ("" when none)."""
    cookie = next((v for k, v in request.headers.items() if k.lower() == "cookie"), "")
    return cookie.partition(f"{COOKIE}=")[2].partition(";")[0]


def raw_ask(fake: FakePerplexity, token: str | None, **params: Any) -> requests.Response:
    return raw(fake, "POST", ASK + "?version=2.18&source=default", token, json=ask_body("q", **params))


def modes(fake: FakePerplexity, token: str) -> dict[str, Any]:
    return raw(fake, "GET", "/rest/rate-limit/status", token).json()["modes"]


# ---- accounts and attribution -------------------------------------------------------------------


def test_each_account_has_its_own_user_and_requests_are_attributed(fake, trio):
    sessions = {}
    for label, token in TOKENS.items():
        with client(fake, token) as c:
            sessions[label] = c.session()
            fake.enqueue(Reply(answer=f"hello {label}"))
            assert c.ask_complete("hi").answer == f"hello {label}"
    assert len({info.user_id for info in sessions.values()} | {fake.user["id"]}) == 4
    assert sessions["beta"].email == trio["beta"].email == "beta@example.com"
    assert all(info.valid and info.tier == "pro" for info in sessions.values())
    for label in TOKENS:
        asks = fake.asks_of(label)
        assert len(asks) == 1 and asks[0].account == label
        assert [r.path for r in fake.requests_of(label)] == ["/api/auth/session", ASK]
        assert fake.threads_of(label)[0].account == label
    assert fake.threads_of("gamma")[0].context_uuid == fake.asks_of("gamma")[0].thread
    # The answer envelope names the asking account as the author.
    assert f'"author_id":"{trio["gamma"].user_id}"'.encode() in raw_ask(fake, TOKENS["gamma"]).content


def test_the_default_account_and_requests_without_a_known_cookie(fake, trio):
    with client(fake, TOKEN) as c:
        c.ask_complete("q")
    assert raw_ask(fake, "never-issued").status_code == 403
    assert raw(fake, "GET", "/api/auth/session").json() == {}
    assert fake.account() is fake.account(DEFAULT_ACCOUNT) and fake.account().token == TOKEN == fake.session_token
    assert [r.account for r in fake.asks] == [DEFAULT_ACCOUNT, None]
    # Only this test's two requests: a cookie the fake never issued, and none at all. (Matched by cookie, not
    # counted, so a late request from an earlier test's leftover thread cannot make this flaky.)
    unknown = [(r.path, _cookie(r)) for r in fake.requests_of(None) if _cookie(r) in ("", "never-issued")]
    assert unknown == [(ASK, "never-issued"), ("/api/auth/session", "")] and fake.asks_of("alpha") == []
    assert list(fake.accounts) == [DEFAULT_ACCOUNT, *TOKENS]


def test_add_account_options_and_refusals(fake, trio):
    account = fake.add_account("max-token", tier="max", email="m@example.org", user_id="user-m")
    assert account.label.startswith("account-") and (account.user_id, account.email, account.tier) == (
        "user-m",
        "m@example.org",
        "max",
    )
    settings = raw(fake, "GET", "/rest/user/settings", "max-token").json()
    assert settings["subscription_tier"] == "max" and settings["query_count"] == 0
    assert raw(fake, "GET", "/api/auth/session", "max-token").json()["user"]["id"] == "user-m"
    free = fake.add_account("free-token", label="free", tier="free")
    assert free.user["payment_tier"] == "free" and free.user["subscription_status"] == "none"
    with pytest.raises(ValueError, match="already has"):
        fake.add_account("other", label="alpha")
    for token in (TOKENS["beta"], TOKEN, ""):
        with pytest.raises(ValueError, match="no other account"):
            fake.add_account(token, label="dup")
    with pytest.raises(KeyError, match="nobody"):
        fake.account("nobody")
    with pytest.raises(KeyError):
        fake.enqueue(Reply(), account="nobody")


def test_settings_and_uploads_are_the_accounts_own(fake, trio):
    with client(fake, TOKENS["alpha"]) as c:
        c.ask_complete("one")
        c.ask_complete("two")
        url = c.upload("a.txt", b"data", "text/plain")
    assert f"/attachments/{trio['alpha'].user_id}/" in url
    assert raw(fake, "GET", "/rest/user/settings", TOKENS["alpha"]).json()["query_count"] == 2
    assert raw(fake, "GET", "/rest/user/settings", TOKENS["beta"]).json()["query_count"] == 0


# ---- threads belong to their account ------------------------------------------------------------


def test_another_accounts_thread_is_refused_like_an_unknown_one(fake, trio):
    with client(fake, TOKENS["alpha"]) as alpha, client(fake, TOKENS["beta"]) as beta:
        first = alpha.ask_complete("one")
        thread = first.thread
        with pytest.raises(errors.ThreadNotFoundError):
            beta.ask("two", AskOptions(follow_up=thread))
        with pytest.raises(errors.ThreadNotFoundError):
            beta.delete_thread(thread)
        with pytest.raises(errors.AuthenticationError):  # export is no thread call for the client: 403 {}
            beta.export_thread(thread)
        assert beta.list_threads() == [] and len(alpha.list_threads()) == 1
        entry = thread.backend_uuid
        for method, path, body in [
            ("POST", f"{ASK}/reconnect/{entry}", {"reconnectInitialSnapshot": True}),
            ("POST", "/rest/sse/perplexity_terminate", {"entry_uuid": entry}),
            ("POST", "/rest/thread/export", {"thread_uuid": entry, "format": "md"}),
        ]:
            refused = raw(fake, method, path, TOKENS["beta"], json=body)
            assert (refused.status_code, refused.json()) == (403, {}), path
        assert raw(fake, "POST", f"{ASK}/reconnect/{entry}", TOKENS["alpha"], json={}).status_code == 200
        assert alpha.export_thread(thread).markdown
        second = alpha.ask_complete("two", AskOptions(follow_up=thread))
        assert second.thread.context_uuid == thread.context_uuid
        alpha.delete_thread(second.thread)
    assert fake.threads == {}


def test_a_refused_follow_up_leaves_the_accounts_script_and_quota_alone(fake, trio):
    with client(fake, TOKENS["alpha"]) as alpha, client(fake, TOKENS["beta"]) as beta:
        thread = alpha.ask_complete("one").thread
        fake.enqueue(Reply(answer="kept for beta"), account="beta")
        fake.set_quota("beta", pro_search=1)
        with pytest.raises(errors.ThreadNotFoundError):
            beta.ask("two", AskOptions(follow_up=thread))
        assert fake.quota_of("beta")["pro_search"] == 1
        assert beta.ask_complete("three").answer == "kept for beta"
        assert fake.quota_of("beta")["pro_search"] == 0


# ---- per-account scripts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault("rate_limit", retry_after=7), errors.RateLimitError),
        (Fault("cloudflare"), errors.CloudflareChallengeError),
        (Fault("rate_limited_in_stream"), errors.AskRateLimitedError),
        (Fault("failed", error_code="INTERNAL_ERROR"), errors.AskFailedError),
    ],
)
def test_one_accounts_script_fails_while_the_others_answer(fake, trio, fault, error):
    fake.enqueue(fault, account="beta")
    fake.enqueue(Reply(answer="shared one"), Reply(answer="shared two"))
    with client(fake, TOKENS["beta"]) as beta, client(fake, TOKENS["alpha"]) as alpha:
        assert alpha.ask_complete("q").answer == "shared one"
        with pytest.raises(error) as info:
            beta.ask_complete("q")
        if fault.kind == "rate_limit":
            assert info.value.retry_after == 7
        # Its own script used up, the account takes from the shared one again.
        assert beta.ask_complete("q").answer == "shared two"
    assert [len(fake.asks_of(label)) for label in ("alpha", "beta")] == [1, 2]


def test_an_accounts_script_goes_before_the_shared_one(fake, trio):
    fake.enqueue(Reply(answer="shared"))
    fake.enqueue(Fault("rate_limit", retry_after=0.01, times=2), Reply(answer="own"), account="gamma")
    with client(fake, TOKENS["gamma"], max_retries=2) as gamma:
        assert gamma.ask_complete("q").answer == "own"
        assert gamma.ask_complete("q").answer == "shared"
    assert [r.account for r in fake.asks] == ["gamma"] * 4


# ---- expiry -------------------------------------------------------------------------------------


def test_an_expired_account_looks_logged_out_and_exhausted(fake, trio):
    fake.expire("beta")
    token = TOKENS["beta"]
    session = raw(fake, "GET", "/api/auth/session", token)
    assert (session.status_code, session.json()) == (200, {})
    table = raw(fake, "GET", "/rest/rate-limit/status", token)
    assert table.status_code == 200 and not table.json()["free_queries"]["available"]
    assert all(
        m == {"available": False, "remaining_detail": {"kind": "exact", "remaining": 0}}
        for m in table.json()["modes"].values()
    )
    refused = raw_ask(fake, token)
    assert refused.status_code == 403 and refused.headers["Content-Type"] == "application/json"
    assert "detail" in refused.json()
    assert raw(fake, "GET", "/rest/user/settings", token).status_code == 403
    with client(fake, token) as beta:
        assert beta.session().valid is False
        assert not any(q.available for q in beta.rate_limits().modes.values())
        with pytest.raises(errors.AuthenticationError):
            beta.ask("q")
    assert len(fake.asks_of("beta")) == 2, "refused asks are still attributed to the account"
    with client(fake, TOKENS["alpha"]) as alpha:
        assert alpha.session().valid and alpha.ask_complete("q").answer
    fake.revive("beta")
    assert raw_ask(fake, token).status_code == 200


def test_three_accounts_one_rate_limited_one_expired(fake, trio):
    """The account pool's scenario: alpha answers, beta is rate limited, gamma's session has expired."""
    fake.rate_limit("beta", retry_after=60)
    fake.expire("gamma")
    fake.enqueue(Reply(answer=ANSWER))
    outcomes = {}
    for label, token in TOKENS.items():
        with client(fake, token) as c:
            try:
                outcomes[label] = c.ask_complete("q").answer
            except errors.PerplexityError as exc:
                outcomes[label] = type(exc).__name__
    assert outcomes == {"alpha": ANSWER, "beta": "RateLimitError", "gamma": "AuthenticationError"}
    assert [len(fake.asks_of(label)) for label in TOKENS] == [1, 1, 1]


# ---- rate limiting ------------------------------------------------------------------------------


def test_a_rate_limited_account_gets_429_until_the_clock_passes(fake, trio):
    now = [1000.0]
    fake.clock = lambda: now[0]
    fake.rate_limit("beta", retry_after=30)
    first = raw_ask(fake, TOKENS["beta"])
    assert (first.status_code, first.headers["Retry-After"]) == (429, "30")
    now[0] += 12.55
    assert raw_ask(fake, TOKENS["beta"]).headers["Retry-After"] == "17.5"
    assert fake.rate_limited_for("beta") == 17.5 and fake.rate_limited_for("alpha") is None
    with client(fake, TOKENS["beta"], max_retries=3, max_retry_after=10) as beta:
        with pytest.raises(errors.RateLimitError) as info:  # longer than max_retry_after: reported, not slept
            beta.ask("q")
        assert info.value.retry_after == 17.5
        assert raw_ask(fake, TOKENS["alpha"]).status_code == 200
        # Other calls of the account still answer while its asks are limited.
        assert beta.session().valid and beta.rate_limits().modes["research"].available
        fake.advance(18)
        assert beta.ask_complete("q").answer
    assert fake.rate_limited_for("beta") is None


def test_a_short_rate_limit_is_waited_out_by_the_client(fake, trio):
    fake.rate_limit("alpha", retry_after=0.05)
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        fake.advance(seconds)

    with client(fake, TOKENS["alpha"], max_retries=2, sleep=sleep) as alpha:
        assert alpha.ask_complete("q").answer
    assert slept == [0.1] and len(fake.asks_of("alpha")) == 2
    fake.rate_limit("alpha", retry_after=30)
    fake.rate_limit("alpha", retry_after=None)
    assert raw_ask(fake, TOKENS["alpha"]).status_code == 200


# ---- quotas -------------------------------------------------------------------------------------


def test_quota_counts_are_reported_and_spent_by_asks_of_their_mode(fake, trio):
    fake.set_quota("alpha", pro_search=3, research=2, labs=0)
    table = modes(fake, TOKENS["alpha"])
    assert table["pro_search"] == {"available": True, "remaining_detail": {"kind": "exact", "remaining": 3}}
    assert table["research"]["remaining_detail"]["remaining"] == 2
    assert table["labs"] == {"available": False, "remaining_detail": {"kind": "exact", "remaining": 0}}
    assert table["agentic_research"]["remaining_detail"] == {"kind": "exact", "remaining": 5}  # the default
    with client(fake, TOKENS["alpha"]) as alpha:
        alpha.ask_complete("search", AskOptions(model="claude50sonnet"))
        alpha.ask_complete("research", AskOptions(model="pplx_alpha"))
        alpha.ask_complete("council", AskOptions(model="pplx_agentic_research", compare_models=("gpt55",) * 3))
        status = alpha.rate_limits().modes
    assert (status["pro_search"].remaining, status["research"].remaining) == (2, 1)
    assert status["agentic_research"].remaining == 5, "a mode no test metered is never spent"
    assert fake.quota_of("alpha") == {"pro_search": 2, "research": 1, "agentic_research": 5, "labs": 0}
    assert modes(fake, TOKENS["beta"])["research"]["remaining_detail"]["remaining"] == 20, "beta's are its own"
    fake.set_quota("alpha", pro_search=None)
    assert modes(fake, TOKENS["alpha"])["pro_search"] == {
        "available": True,
        "remaining_detail": {"kind": "not_provided"},
    }


def test_an_exhausted_mode_fails_in_stream_while_other_modes_and_accounts_answer(fake, trio):
    fake.set_quota("beta", research=1)
    with client(fake, TOKENS["beta"]) as beta:
        beta.ask_complete("r", AskOptions(model="pplx_alpha"))
        assert beta.rate_limits().modes["research"] == ModeQuota(available=False, remaining=0)
        fake.enqueue(Reply(answer="scripted"))
        with pytest.raises(errors.AskRateLimitedError) as info:
            beta.ask_complete("r", AskOptions(model="pplx_alpha"))
        assert info.value.code == "RATE_LIMIT_EXCEEDED"
        assert beta.ask_complete("search").answer == "scripted", "the exhausted ask left the script alone"
    raw_answer = raw_ask(fake, TOKENS["beta"], model_preference="pplx_alpha")
    assert raw_answer.status_code == 200 and b'"status":"FAILED"' in raw_answer.content
    assert b"RATE_LIMIT_EXCEEDED" in raw_answer.content and b"end_of_stream" in raw_answer.content
    with client(fake, TOKENS["alpha"]) as alpha:
        assert alpha.ask_complete("r", AskOptions(model="pplx_alpha")).answer


def test_exhaustion_can_be_a_429_and_the_quota_resets_on_the_clock(fake, trio):
    fake.set_quota("gamma", labs=1, reset=3600, when_exhausted=Fault("rate_limit", retry_after=3600))
    with client(fake, TOKENS["gamma"]) as gamma:
        gamma.ask_complete("lab", AskOptions(model="pplx_beta"))
        with pytest.raises(errors.RateLimitError) as info:
            gamma.ask("lab", AskOptions(model="pplx_beta"))
        assert info.value.retry_after == 3600
        fake.advance(3601)
        assert gamma.rate_limits().modes["labs"].remaining == 1
        gamma.ask_complete("lab", AskOptions(model="pplx_beta"))
        assert fake.quota_of("gamma")["labs"] == 0
        fake.advance(2 * 3600)
        assert fake.quota_of("gamma")["labs"] == 1
    with pytest.raises(ValueError):
        fake.set_quota("gamma", research=-1)


# ---- cookie rotation ----------------------------------------------------------------------------


def test_rotation_on_the_session_call_is_adopted_and_the_old_token_has_a_grace_period(fake, trio):
    fake.set_rotation("beta", grace=10)
    persisted = []
    old = TOKENS["beta"]
    with client(fake, old, on_token_rotated=persisted.append) as beta:
        assert beta.session().valid
        new = fake.account("beta").token
        assert new != old and beta.cookie.value == new and persisted == [new]
        assert fake.account("beta").rotations == 1 and fake.account("alpha").rotations == 0
        assert raw_ask(fake, old).status_code == 200, "within the grace period"
        fake.advance(11)
        assert raw_ask(fake, old).status_code == 403
        assert raw(fake, "GET", "/api/auth/session", old).json() == {}
        assert fake.asks_of("beta")[-1].account == "beta", "a retired token is still the account's"
        fake.enqueue(Reply(answer=ANSWER))
        assert beta.ask_complete("q").answer == ANSWER
        assert f"{COOKIE}={new}" in fake.asks_of("beta")[-1].headers["cookie"]
    # The session call of an account without rotation sets no cookie.
    assert "Set-Cookie" not in raw(fake, "GET", "/api/auth/session", TOKENS["alpha"]).headers


def test_rotation_on_asks_without_grace(fake, trio):
    fake.set_rotation("alpha", on_session=False, on_ask=True, grace=0)
    old = TOKENS["alpha"]
    with client(fake, old) as alpha:
        assert "Set-Cookie" not in raw(fake, "GET", "/api/auth/session", old).headers
        alpha.ask_complete("one")
        first = fake.account("alpha").token
        assert alpha.cookie.value == first != old
        assert raw_ask(fake, old).status_code == 403, "no grace: the old token stops at once"
        alpha.ask_complete("two")
        assert alpha.cookie.rotations == 2 and alpha.cookie.value == fake.account("alpha").token != first
    cookie = raw_ask(fake, fake.account("alpha").token).headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=rotated-") and "HttpOnly" in cookie
    assert fake.account("alpha").rotations == 3


def test_a_refused_ask_does_not_rotate(fake, trio):
    fake.set_rotation("alpha", on_session=False, on_ask=True)
    fake.enqueue(Fault("rate_limit"), account="alpha")
    assert "Set-Cookie" not in raw_ask(fake, TOKENS["alpha"]).headers
    assert fake.account("alpha").rotations == 0


def test_manual_and_global_rotation_keep_the_old_tokens_by_default(fake, trio):
    token = fake.rotate_token("gamma")
    assert fake.account("gamma").tokens == [TOKENS["gamma"], token]
    fake.rotate_on_session = True
    answer = raw(fake, "GET", "/api/auth/session", TOKENS["alpha"])
    issued = answer.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    assert issued == fake.account("alpha").token != TOKENS["alpha"]
    for token in (TOKENS["gamma"], fake.account("gamma").token, TOKENS["alpha"], fake.account("alpha").token):
        assert raw_ask(fake, token).status_code == 200


def test_rotation_over_tls_and_http2():
    """Set-Cookie on an HTTP/2 ask stream reaches curl_cffi, and the account's asks are attributed."""
    with FakePerplexity(session_token=TOKEN, tls=True, http2=True, accounts={"beta": "beta-h2"}) as fake:
        fake.set_rotation("beta", on_session=False, on_ask=True)
        options = {"impersonate": "chrome", "ca_bundle": fake.ca_path, "connect_timeout": 2, "read_timeout": 2}
        with PerplexityClient("beta-h2", base_url=fake.url, **options) as beta:
            beta.ask_complete("q")
            assert beta.cookie.value == fake.account("beta").token != "beta-h2"
        assert [(r.account, r.http_version) for r in fake.asks] == [("beta", "2")]
        assert not fake.errors


# ---- reset --------------------------------------------------------------------------------------


def test_reset_clears_every_account_switch():
    with FakePerplexity(session_token="default-token", accounts={"kept": "kept-token"}) as fake:
        fake.add_account("gone-token", label="gone")
        for label in (None, "kept"):
            fake.expire(label)
            fake.rate_limit(label, retry_after=60)
            fake.set_quota(label, research=0, reset=10)
            fake.set_rotation(label, on_ask=True, grace=0)
            fake.rotate_token(label)
            fake.enqueue(Fault("cloudflare"), account=label or DEFAULT_ACCOUNT)
        fake.clock = lambda: 100.0
        fake.advance(5)
        assert fake.now() == 105.0
        rotated = fake.session_token
        fake.reset()
        assert list(fake.accounts) == [DEFAULT_ACCOUNT, "kept"]
        # The default account keeps its current token (as before accounts); the others get their first back.
        assert fake.account().tokens == [rotated] and fake.account("kept").tokens == ["kept-token"]
        fake.clock = lambda: 1.0
        assert fake.now() == 1.0
        for label, token in ((None, rotated), ("kept", "kept-token")):
            account = fake.account(label)
            assert not account.expired and account.rate_limited_until is None and not account.metered
            assert not account.rotate_on_ask and account.rotations == 0 and not account.script
            assert raw_ask(fake, token, model_preference="pplx_alpha").status_code == 200
            assert b"COMPLETED" in raw_ask(fake, token, model_preference="pplx_alpha").content
        assert fake.account_of("gone-token") is None
        assert raw_ask(fake, "gone-token").status_code == 403
        assert not fake.errors
