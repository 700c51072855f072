"""Shared fixtures: a clean environment, the fake Perplexity upstream, a client, and live gunicorn servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis
import requests

from perplexity.client import PerplexityClient
from perplexity.testing import FakePerplexity

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"  # the Redis every machine here runs (CI's too); tests use their own key prefixes
TOKEN = "test-session-token-0123456789abcdef"
CAPTURES = Path(__file__).parent / "fixtures" / "captures"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's real token, keys or proxies."""
    for name in list(os.environ):
        if name.startswith(("PERPLEXITY_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")) or name in (
            "OPENAI_API_KEY",
            "API_KEYS",
            "http_proxy",
            "https_proxy",
        ):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakePerplexity]:
    with FakePerplexity(session_token=TOKEN) as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakePerplexity) -> Iterator[FakePerplexity]:
    """The session's fake upstream, reset for each test."""
    fake_server.reset()
    fake_server.session_token = TOKEN
    yield fake_server
    fake_server.reset()


@pytest.fixture
def px(fake: FakePerplexity) -> Iterator[PerplexityClient]:
    """A Perplexity client with short timeouts and near-zero backoff against the fake."""
    with PerplexityClient(
        TOKEN, base_url=fake.url, connect_timeout=2.0, read_timeout=2.0, max_retries=2, backoff=0.01
    ) as c:
        yield c


def access_logger(name: str):
    """gunicorn.conf.py's access logger, as gunicorn builds it with the access log on stdout."""
    import importlib.util

    from gunicorn.config import Config

    spec = importlib.util.spec_from_file_location(name, ROOT / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    cfg = Config()
    cfg.set("accesslog", "-")
    return conf.logger_class(cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """gunicorn (gevent worker) serving app:app on a loopback port, with its log kept for assertions."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"gunicorn-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PERPLEXITY_")}
        full_env.update({"PORT": str(self.port), "LOG_LEVEL": "INFO", "GRACEFUL_TIMEOUT": "2", **env})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "app:app", "--bind", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.log()}")
            try:
                with requests.get(self.url + "/health", timeout=1) as response:
                    if response.status_code == 200:
                        return
            except requests.RequestException:  # not listening yet, or the worker is still booting
                time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not start:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.wait_stopped()

    def wait_stopped(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture(scope="session")
def live_server_factory(tmp_path_factory: pytest.TempPathFactory, fake_server: FakePerplexity) -> Iterator:
    """Start gunicorn servers with extra environment; all are stopped at the end of the session."""
    servers: list[LiveServer] = []
    tmp = tmp_path_factory.mktemp("servers")

    def start(**env: str) -> LiveServer:
        base = {
            "PERPLEXITY_SESSION_TOKEN": TOKEN,
            "PERPLEXITY_BASE_URL": fake_server.url,
            # The production engine (curl_cffi impersonating Chrome), not the plain requests fallback.
            "PERPLEXITY_IMPERSONATE": "chrome",
            "PERPLEXITY_READ_TIMEOUT": "3",
            "PERPLEXITY_CONNECT_TIMEOUT": "2",
            "HEARTBEAT_INTERVAL": "0.5",
        }
        server = LiveServer({**base, **env}, tmp)
        servers.append(server)
        return server

    yield start
    # SIGTERM to all first, then wait: each waits up to GRACEFUL_TIMEOUT, so one at a time adds up.
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        server.wait_stopped()


@pytest.fixture(scope="session")
def live_server(live_server_factory):
    """The default server: open access, fake upstream."""
    return live_server_factory()


@pytest.fixture
def sdk(live_server) -> Iterator[openai.OpenAI]:
    """The official openai SDK against the default live server (no retries: tests see each failure)."""
    with openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as client:
        yield client


@pytest.fixture
def app(fake: FakePerplexity):
    """The app on `create_app(test_config)` against the fake (flaskr style), on the curl engine as in production."""
    from app import create_app

    application = create_app(
        {
            "TESTING": True,
            "PERPLEXITY_SESSION_TOKEN": TOKEN,
            "PERPLEXITY_BASE_URL": fake.url,
            "PERPLEXITY_IMPERSONATE": "chrome",
            "PERPLEXITY_READ_TIMEOUT": 3.0,
            "PERPLEXITY_CONNECT_TIMEOUT": 2.0,
            "HEARTBEAT_INTERVAL": 0.5,
        }
    )
    yield application
    application.extensions["perplexity"].close()


@pytest.fixture
def client(app):
    """The app's test client (flaskr style): view-level tests without a server."""
    with app.test_client() as test_client:
        yield test_client


@pytest.fixture(scope="session")
def redis_up() -> Iterator[redis.Redis]:
    """A client of the local Redis (the shared-state tests' store); skips them when there is none."""
    from api.stores.redis_store import redis_client

    client = redis_client(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        pytest.skip("no Redis on 127.0.0.1:6379")
    yield client
    client.close()
