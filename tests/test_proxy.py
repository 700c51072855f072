"""PERPLEXITY_PROXY: every upstream request through a real proxy on loopback, on both engines, password never shown.

The proxy is pproxy (HTTP CONNECT/forwarding and SOCKS5 on one port, with a user and password) running in a
thread of this process; each connection it relays is one line of its log, naming the target, so the tests see
that the fake was reached through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pproxy
import pytest
import trustme

from api.config import SettingError, defaults, validate
from perplexity.client import PerplexityClient
from perplexity.errors import ConfigurationError, UpstreamConnectError
from perplexity.proxy import mask_proxy, parse_proxy
from perplexity.requests_transport import RequestsTransport
from perplexity.testing import FakePerplexity, Reply

from .conftest import TOKEN, free_port

USER, PASSWORD = "proxy-user", "s3cret-pw"
ENGINES = ["chrome", "off"]  # curl_cffi impersonating Chrome; plain requests


class LoopbackProxy:
    """pproxy's HTTP + SOCKS5 server on 127.0.0.1 (one port, both protocols) in its own thread and event loop.

    `relayed` lists "protocol target" for each connection it opened to a target, e.g. "socks5 127.0.0.1:8765".
    Authentication is checked on every connection (`authtime` 0: pproxy otherwise trusts an address that
    authenticated once, for days). With `tls` (a certificate for 127.0.0.1) it is an https:// proxy, HTTP only.
    """

    def __init__(self, user: str, password: str, tls: trustme.LeafCert | None = None) -> None:
        self.lines: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._server: asyncio.Server | None = None
        self._tls = tls
        self._thread = threading.Thread(target=self._run, args=(f"{user}:{password}",), daemon=True, name="proxy")
        self._thread.start()
        if not self._started.wait(10) or self._server is None:
            raise RuntimeError("the loopback proxy did not start")
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _run(self, auth: str) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            listen = pproxy.Server(
                f"http+ssl://127.0.0.1:0#{auth}" if self._tls else f"http+socks5://127.0.0.1:0#{auth}"
            )
            if self._tls is not None:
                self._tls.configure_cert(listen.sslserver)
            args = {"rserver": [], "verbose": self.lines.append, "authtime": 0}
            self._server = self._loop.run_until_complete(listen.start_server(args))
        finally:
            self._started.set()
        self._loop.run_forever()

    def url(self, scheme: str, password: str = PASSWORD) -> str:
        return f"{scheme}://{USER}:{password}@127.0.0.1:{self.port}"

    def relayed(self) -> list[str]:
        """The connections relayed so far, as "protocol host:port" (refusals and errors left out)."""
        return [f"{line.split()[0]} {line.split(' -> ')[1]}" for line in list(self.lines) if " -> " in line]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            # The relays cancelled here end in CancelledError, their expected end: nothing to report.
            asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


@pytest.fixture(scope="module")
def loopback_proxy() -> Iterator[LoopbackProxy]:
    server = LoopbackProxy(USER, PASSWORD)
    yield server
    server.stop()


@pytest.fixture
def proxy(loopback_proxy: LoopbackProxy) -> LoopbackProxy:
    loopback_proxy.lines.clear()
    return loopback_proxy


@pytest.fixture(scope="module")
def proxy_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_proxy(proxy_ca: trustme.CA) -> Iterator[LoopbackProxy]:
    server = LoopbackProxy(USER, PASSWORD, tls=proxy_ca.issue_cert("127.0.0.1"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_fake() -> Iterator[FakePerplexity]:
    """The fake as perplexity.ai looks: TLS with ALPN h2 (its own CA, trusted through ca_bundle)."""
    with FakePerplexity(session_token=TOKEN, tls=True, http2=True) as fake:
        yield fake


def client(fake: FakePerplexity, engine: str, proxy_url: str, **options) -> PerplexityClient:
    options = {"ca_bundle": fake.ca_path, **options}
    return PerplexityClient(
        TOKEN, base_url=fake.url, impersonate=engine, proxy=proxy_url, connect_timeout=2.0, read_timeout=3.0,
        max_retries=0, **options,
    )  # fmt: skip


def target(fake: FakePerplexity) -> str:
    return f"127.0.0.1:{fake.port}"


# ---- the setting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["http://127.0.0.1:3128", "https://proxy.example:443", "socks5://u:p@10.0.0.2:1080", "socks5h://[::1]:1080/"],
)
def test_the_four_schemes_are_accepted(value):
    validate({**defaults(), "PERPLEXITY_PROXY": value})


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"ftp://{USER}:{PASSWORD}@host:21", "must start with http://, https://, socks5:// or socks5h://"),
        (f"socks4://{USER}:{PASSWORD}@host:1080", "must start with"),
        (f"http://{USER}:{PASSWORD}@proxy.example", "with its host and port"),
        (f"http://{USER}:{PASSWORD}@proxy.example:99999", "numeric port"),
        (f"http://{USER}:{PASSWORD}@proxy.example:3128/path", "no path"),
        (f"{USER}:{PASSWORD}@proxy.example:3128", "must start with"),
        (f"http://{USER}:{PASSWORD}@:3128", "with its host and port"),
        (f"http://{USER}:{PASSWORD}@proxy example:3128", "without spaces"),
    ],
)
def test_an_unusable_proxy_stops_the_start_without_showing_the_password(value, why):
    with pytest.raises(SettingError) as caught:
        validate({**defaults(), "PERPLEXITY_PROXY": value})
    message = str(caught.value)
    assert message.startswith("PERPLEXITY_PROXY ") and why in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "value",
    [
        "http://h:1",
        "https://u:p@h.example:443/",
        "socks5h://[::1]:1080",
        "SOCKS5://H:1",
        "http://h",
        "http://h:0",
        "http://h:1/x",
        "http://h:1?q",
        "http://h:1#f",
        "socks4://h:1",
        "h:1",
        "http://:1",
        "http://h :1",
        "http://h:x",
    ],
)
def test_the_start_up_check_and_the_transports_agree(value):
    """api/config.py checks the setting with the standard library alone (the client's surface is all the API layer
    may import), by the same rules as perplexity.proxy."""
    try:
        validate({**defaults(), "PERPLEXITY_PROXY": value})
        accepted = True
    except SettingError:
        accepted = False
    try:
        parse_proxy(value)
        parsed = True
    except ConfigurationError:
        parsed = False
    assert accepted == parsed


def test_the_proxy_is_shown_with_its_password_masked():
    proxy = parse_proxy(f"socks5h://{USER}:p%40ss%3Aw0rd@proxy.example:1080")
    assert proxy.password == "p@ss:w0rd" and proxy.port == 1080 and proxy.host == "proxy.example"
    assert proxy.url == f"socks5h://{USER}:p%40ss%3Aw0rd@proxy.example:1080"  # what the engines are given
    for shown in (str(proxy), repr(proxy), proxy.masked):
        assert "p@ss" not in shown and "p%40ss" not in shown and f"{USER}:***@proxy.example:1080" in shown
    echoed = f"failed: http://{USER}:p%40ss%3Aw0rd@x and 'p@ss:w0rd'"
    assert proxy.scrub(echoed) == f"failed: http://{USER}:***@x and '***'"
    assert mask_proxy(f"http://{USER}:{PASSWORD}@host:99999/x") == f"http://{USER}:***@host:99999/x"
    with pytest.raises(ConfigurationError) as caught:
        parse_proxy(f"gopher://{USER}:{PASSWORD}@host:70")
    assert PASSWORD not in str(caught.value)


def test_a_transport_and_a_proxy_are_not_both_given(fake):
    with pytest.raises(ConfigurationError):
        PerplexityClient(TOKEN, base_url=fake.url, transport=RequestsTransport(), proxy="http://127.0.0.1:3128")


# ---- asks through the proxy --------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h"])
def test_plain_http_asks_go_through_the_proxy(fake, proxy, engine, scheme):
    fake.enqueue(Reply(answer="Through the proxy [1]."))
    with client(fake, engine, proxy.url(scheme)) as px:
        result = px.ask_complete("Who carried this?")
        assert px.session().valid  # account calls take the same way
    assert result.answer == "Through the proxy [1]."
    assert len(fake.asks) == 1
    protocol = "http" if scheme == "http" else "socks5"
    assert proxy.relayed() and set(proxy.relayed()) == {f"{protocol} {target(fake)}"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scheme", ["http", "socks5h"])
def test_tls_asks_are_tunnelled_and_curl_keeps_http2(tls_fake, proxy, engine, scheme):
    tls_fake.reset()
    tls_fake.enqueue(Reply(answer="Tunnelled."), Reply(answer="Tunnelled again."))
    with client(tls_fake, engine, proxy.url(scheme)) as px:
        answers = [px.ask_complete("first").answer, px.ask_complete("second").answer]
    assert answers == ["Tunnelled.", "Tunnelled again."]
    # Inside the CONNECT (or SOCKS) tunnel curl still negotiates h2 with the server, as Chrome does.
    assert [ask.http_version for ask in tls_fake.asks] == (["2", "2"] if engine == "chrome" else ["1.1", "1.1"])
    protocol = "http" if scheme == "http" else "socks5"
    assert set(proxy.relayed()) == {f"{protocol} {target(tls_fake)}"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tls", [False, True], ids=["http-target", "tls-target"])
def test_an_https_proxy_is_reached_over_tls_checked_against_the_ca_bundle(
    fake, tls_fake, https_proxy, proxy_ca, tmp_path, engine, tls
):
    upstream = tls_fake if tls else fake
    upstream.reset()
    https_proxy.lines.clear()
    bundle = tmp_path / "bundle.pem"  # PERPLEXITY_CA_BUNDLE: the proxy's CA and, for TLS, the upstream's
    bundle.write_bytes(proxy_ca.cert_pem.bytes() + (Path(tls_fake.ca_path).read_bytes() if tls else b""))
    upstream.enqueue(Reply(answer="Over TLS to the proxy."))
    with client(upstream, engine, https_proxy.url("https"), ca_bundle=str(bundle)) as px:
        assert px.ask_complete("q").answer == "Over TLS to the proxy."
    assert https_proxy.relayed() == [f"http {target(upstream)}"]
    if tls and engine == "chrome":
        assert upstream.asks[-1].http_version == "2"  # TLS inside TLS, h2 inside that
    # A proxy whose certificate the bundle does not vouch for is never used.
    untrusted = tmp_path / "other.pem"
    untrusted.write_bytes(trustme.CA().cert_pem.bytes() + (Path(tls_fake.ca_path).read_bytes() if tls else b""))
    with client(upstream, engine, https_proxy.url("https"), ca_bundle=str(untrusted)) as px:
        with pytest.raises(UpstreamConnectError) as caught:
            px.ask_complete("q")
    assert_masked(caught.value)
    assert len(upstream.asks) == 1 and len(https_proxy.relayed()) == 1


def test_the_environment_neither_adds_nor_bypasses_a_proxy(fake, proxy, monkeypatch):
    fake.enqueue(Reply(answer="direct"), Reply(answer="proxied"), Reply(answer="direct"), Reply(answer="proxied"))
    monkeypatch.setenv("NO_PROXY", "*")  # would exempt every host if the environment were read
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for engine in ENGINES:
        monkeypatch.setenv("HTTP_PROXY", proxy.url("http"))  # would carry requests if the environment were read
        monkeypatch.setenv("http_proxy", proxy.url("http"))
        monkeypatch.setenv("ALL_PROXY", proxy.url("socks5"))
        with client(fake, engine, "") as px:
            assert px.ask_complete("q").answer == "direct"
        assert proxy.relayed() == []
        with client(fake, engine, proxy.url("socks5")) as px:
            assert px.ask_complete("q").answer == "proxied"
        assert proxy.relayed() == [f"socks5 {target(fake)}"]
        proxy.lines.clear()


# ---- failures: a connect error that names the proxy, never its password ------------------------------------


def assert_masked(error: BaseException) -> None:
    assert PASSWORD not in str(error) and "wrong-pw" not in str(error) and "wrong-pw" not in repr(error)
    assert f"{USER}:***@127.0.0.1:" in str(error)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scheme", ["http", "socks5"])
@pytest.mark.parametrize("tls", [False, True], ids=["http-target", "tls-target"])
def test_wrong_proxy_credentials_are_a_connect_error(fake, tls_fake, proxy, engine, scheme, tls):
    upstream = tls_fake if tls else fake
    upstream.reset()
    with (
        client(upstream, engine, proxy.url(scheme, password="wrong-pw")) as px,
        pytest.raises(UpstreamConnectError) as caught,
    ):
        px.ask_complete("q")
    assert_masked(caught.value)
    assert upstream.asks == [] and proxy.relayed() == []


@pytest.mark.parametrize("engine", ENGINES)
def test_an_unreachable_proxy_is_a_connect_error(fake, engine):
    closed = free_port()  # nothing listens there
    with client(fake, engine, f"http://{USER}:{PASSWORD}@127.0.0.1:{closed}") as px:
        with pytest.raises(UpstreamConnectError) as caught:
            px.ask_complete("q")
    assert_masked(caught.value)
    assert f"the proxy http://{USER}:***@127.0.0.1:{closed}" in str(caught.value) and fake.asks == []


def test_pysocks_is_installed_for_the_requests_engine():
    # requests needs it for socks5:// (requirements.txt pins it); without it the transport says so at once.
    RequestsTransport(proxy=f"socks5h://{USER}:{PASSWORD}@127.0.0.1:{free_port()}").close()


# ---- the server -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("engine", "scheme"), [("chrome", "http"), ("off", "socks5h")])
def test_a_live_server_answers_a_chat_through_the_proxy(fake, proxy, live_server_factory, engine, scheme):
    server = live_server_factory(PERPLEXITY_PROXY=proxy.url(scheme), PERPLEXITY_IMPERSONATE=engine)
    fake.enqueue(Reply(answer="Served through the proxy [1]."))
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as sdk:
        reply = sdk.chat.completions.create(
            model="perplexity-auto", messages=[{"role": "user", "content": "Who carried this?"}]
        )
    assert reply.choices[0].message.content == "Served through the proxy [1]."
    assert len(fake.asks) == 1
    assert f"{'http' if scheme == 'http' else 'socks5'} {target(fake)}" in proxy.relayed()
    assert PASSWORD not in server.log()


def test_a_live_server_with_a_bad_proxy_setting_does_not_start(live_server_factory):
    with pytest.raises(RuntimeError) as caught:
        live_server_factory(PERPLEXITY_PROXY=f"socks4://{USER}:{PASSWORD}@127.0.0.1:1080")
    assert "PERPLEXITY_PROXY must start with" in str(caught.value) and PASSWORD not in str(caught.value)


def test_a_live_server_behind_a_dead_proxy_fails_without_showing_the_password(fake, live_server_factory):
    closed = free_port()  # nothing listens there
    server = live_server_factory(
        PERPLEXITY_PROXY=f"socks5h://{USER}:{PASSWORD}@127.0.0.1:{closed}", PERPLEXITY_MAX_RETRIES="0"
    )
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="perplexity-auto", messages=[{"role": "user", "content": "q"}])
    assert caught.value.status_code >= 500 and PASSWORD not in caught.value.response.text
    assert fake.asks == [] and PASSWORD not in server.log()


def test_an_accounts_own_proxy_carries_its_asks_only(fake, proxy, live_server_factory, tmp_path):
    """An accounts-file line's third field is that account's proxy; the other account goes direct."""
    from .conftest import TOKEN

    other = "acct-token-direct-0123456789"
    fake.add_account(other, label="direct")
    path = tmp_path / "accounts"
    path.write_text(f"proxied {TOKEN} {proxy.url('socks5h')}\ndirect {other}\n")
    server = live_server_factory(PERPLEXITY_ACCOUNTS_FILE=str(path), PERPLEXITY_IMPERSONATE="chrome")
    served = set()
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as sdk:
        for n in range(6):
            raw = sdk.chat.completions.with_raw_response.create(
                model="perplexity-auto", messages=[{"role": "user", "content": f"Question {n}?"}]
            )
            served.add(raw.headers["x-perplexity-account"])
    assert served == {"proxied", "direct"}  # equal accounts take turns
    # The proxy relayed the proxied account's connection(s) (kept alive between its asks); the other account's
    # asks reached the fake directly: it saw both, the proxy only one kind.
    assert f"socks5 {target(fake)}" in proxy.relayed()
    assert {ask.account for ask in fake.asks} == {"default", "direct"}
    assert PASSWORD not in server.log()
