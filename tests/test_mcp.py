"""The MCP server (mcp_server.py) driven by the MCP SDK's own client, over stdio and streamable HTTP, on the fake."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from perplexity.testing import FakePerplexity, Reply

from .conftest import ROOT, TOKEN, free_port

pytestmark = pytest.mark.timeout(90)

CALL_TIMEOUT = 30  # seconds any one scenario may take, so a hung server fails the test instead of stalling it
SOURCES = [
    {"name": "Python 3.13 notes", "url": "https://docs.python.org/3.13/whatsnew", "snippet": "free-threaded build"},
    {"name": "PEP 703", "url": "https://peps.python.org/pep-0703/", "snippet": "Making the GIL optional"},
]


def server_env(fake: FakePerplexity, **extra: str) -> dict[str, str]:
    """The MCP server's environment: the fake upstream and its token, nothing of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPLEXITY_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("API_KEYS", None)
    env.update(
        {
            "PERPLEXITY_BASE_URL": fake.url,
            "PERPLEXITY_SESSION_TOKEN": TOKEN,
            "PERPLEXITY_IMPERSONATE": "chrome",
            "PERPLEXITY_MAX_RETRIES": "0",
            "LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


def over_stdio(fake: FakePerplexity, scenario: Callable[[Client], Awaitable[None]]) -> None:
    """Spawn `python mcp_server.py` and run `scenario` with a connected client, bounded by CALL_TIMEOUT."""
    params = StdioServerParameters(command=sys.executable, args=["mcp_server.py"], env=server_env(fake), cwd=ROOT)

    async def main() -> None:
        with anyio.fail_after(CALL_TIMEOUT):
            async with Client(params) as client:
                await scenario(client)

    run(main)


def run(main: Callable[[], Awaitable[None]]) -> None:
    """anyio.run, raising the scenario's own failure rather than the task groups' wrappers around it."""
    try:
        anyio.run(main)
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        raise group from None


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def test_tools_are_listed_with_their_schemas(fake: FakePerplexity) -> None:
    async def scenario(client: Client) -> None:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) == {"perplexity_ask", "perplexity_search", "perplexity_research", "perplexity_quota"}
        ask = listed["perplexity_ask"]
        assert ask.description and "thread" in ask.description
        props = ask.input_schema["properties"]
        assert ask.input_schema["required"] == ["query"]
        assert {"query", "model", "sources", "recency", "citation_mode", "thread"} <= set(props)
        assert "ctx" not in props
        assert "perplexity-sonar" in props["model"]["description"]  # the public ids are named
        assert '"social"' in str(props["sources"]).replace("'", '"')
        assert {"answer", "thread", "sources"} <= set(ask.output_schema["properties"])
        assert set(listed["perplexity_search"].input_schema["properties"]) == {"query", "sources", "recency"}
        assert "clarifying_questions" in listed["perplexity_research"].output_schema["properties"]
        assert listed["perplexity_quota"].input_schema.get("properties", {}) == {}

    over_stdio(fake, scenario)


def test_ask_returns_sources_and_a_follow_up_continues_the_thread(fake: FakePerplexity) -> None:
    fake.enqueue(Reply(answer="Python 3.13 has a free-threaded build [1][2].", sources=SOURCES))
    fake.enqueue(Reply(answer="It is experimental [1].", sources=SOURCES[:1]))

    async def scenario(client: Client) -> None:
        first = await client.call_tool(
            "perplexity_ask", {"query": "What changed in Python 3.13?", "sources": ["web", "academic"]}
        )
        assert not first.is_error, text_of(first)
        data = first.structured_content
        assert data["answer"] == "Python 3.13 has a free-threaded build [1][2]."
        assert data["continued"] is False
        assert [s["url"] for s in data["sources"]] == [s["url"] for s in SOURCES]
        assert data["sources"][1] == {"title": "PEP 703", "url": SOURCES[1]["url"], "snippet": SOURCES[1]["snippet"]}
        assert "https://peps.python.org/pep-0703/" in text_of(first)
        assert fake.asks[-1].json["params"]["sources"] == ["web", "scholar"]

        second = await client.call_tool(
            "perplexity_ask", {"query": "Is it stable?", "thread": data["thread"], "citation_mode": "clean"}
        )
        assert not second.is_error, text_of(second)
        assert second.structured_content["thread"] == data["thread"]
        assert second.structured_content["continued"] is True
        assert second.structured_content["answer"] == "It is experimental."  # clean: markers dropped
        assert fake.asks[-1].json["params"]["query_source"] == "followup"
        assert fake.asks[-1].json["query_str"].startswith("Is it stable?")

    over_stdio(fake, scenario)


def test_search_returns_sources_only_and_quota_lists_the_account(fake: FakePerplexity) -> None:
    fake.enqueue(Reply(answer="Some answer [1].", sources=SOURCES))

    async def scenario(client: Client) -> None:
        found = await client.call_tool("perplexity_search", {"query": "python 3.13", "recency": "week"})
        assert not found.is_error, text_of(found)
        assert found.structured_content["sources"][0]["title"] == "Python 3.13 notes"
        assert "answer" not in found.structured_content
        assert fake.asks[-1].json["params"]["search_recency_filter"] == "WEEK"
        quota = await client.call_tool("perplexity_quota", {})
        assert not quota.is_error, text_of(quota)
        accounts = quota.structured_content["accounts"]
        assert len(accounts) == 1 and accounts[0]["state"] == "ready"
        assert TOKEN not in text_of(quota)

    over_stdio(fake, scenario)


def test_research_sends_progress_and_returns_clarifying_questions(fake: FakePerplexity) -> None:
    fake.enqueue(Reply(research=True, clarifying=True, reasoning=True, sources=SOURCES, chunk_size=8))
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async def scenario(client: Client) -> None:
        result = await client.call_tool(
            "perplexity_research", {"query": "State of Python free threading"}, progress_callback=on_progress
        )
        assert not result.is_error, text_of(result)
        assert result.structured_content["model"] == "perplexity-research"
        assert result.structured_content["answer"]
        assert result.structured_content["clarifying_questions"]
        assert result.structured_content["clarifying_questions"][0] in text_of(result)

    over_stdio(fake, scenario)
    assert len(progress) >= 2
    assert [value for value, _ in progress] == sorted(value for value, _ in progress)


def test_an_expired_session_is_a_tool_error_with_the_http_message(fake: FakePerplexity) -> None:
    fake.expire()

    async def scenario(client: Client) -> None:
        result = await client.call_tool("perplexity_ask", {"query": "hello"})
        assert result.is_error
        assert "session" in text_of(result).lower() and "expired" in text_of(result).lower()
        assert TOKEN not in text_of(result)
        unknown = await client.call_tool("perplexity_ask", {"query": "hello", "model": "no-such-model"})
        assert unknown.is_error
        assert text_of(unknown) == "The model 'no-such-model' does not exist; GET /v1/models lists them."

    over_stdio(fake, scenario)


def wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    """Until the HTTP server accepts connections (bounded; fails at once if it exited)."""
    deadline = time.monotonic() + CALL_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mcp_server.py exited early: {process.stderr.read().decode(errors='replace')}")
        try:
            with httpx2.Client(timeout=1) as http:
                http.get(f"http://127.0.0.1:{port}/mcp")
            return
        except httpx2.TransportError:  # not listening yet
            time.sleep(0.05)
    raise RuntimeError("mcp_server.py --http did not start listening")


@contextlib.contextmanager
def http_server(fake: FakePerplexity, **env: str) -> Iterator[str]:
    """`mcp_server.py --http` on a free port with `env` (over the fake's): its /mcp URL once it listens; stopped
    (terminated, then killed if it lingers) on the way out."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "mcp_server.py", "--http", "--port", str(port)],
        cwd=ROOT,
        env=server_env(fake, **env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(process, port)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        process.stderr.close()


def test_http_mode_is_protected_by_the_api_keys(fake: FakePerplexity) -> None:
    fake.enqueue(Reply(answer="Answer over HTTP [1].", sources=SOURCES))
    fake.enqueue(Reply(answer="The follow-up.", sources=SOURCES[:1]))
    with http_server(fake, OPENAI_API_KEY="mcp-test-key", API_KEYS="other-key") as url:
        with httpx2.Client(timeout=5) as http:
            refused = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            wrong = http.post(url, json={}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert wrong.json()["error"]["message"] == "Incorrect API key provided."

        async def ask(key: str, arguments: dict[str, Any]) -> Any:
            # The SDK leaves a client it was given open: closed here, with its connections.
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=CALL_TIMEOUT) as http:
                async with Client(streamable_http_client(url, http_client=http)) as mcp:
                    return await mcp.call_tool("perplexity_ask", arguments)

        async def main() -> None:
            with anyio.fail_after(CALL_TIMEOUT):
                first = await ask("mcp-test-key", {"query": "What is new?"})
                assert not first.is_error, text_of(first)
                assert first.structured_content["sources"][0]["url"] == SOURCES[0]["url"]
                thread = first.structured_content["thread"]
                # A new MCP session with the same key: the thread belongs to the key, as the HTTP API's do.
                second = await ask("mcp-test-key", {"query": "And then?", "thread": thread})
                assert second.structured_content["continued"] is True, text_of(second)
                assert fake.asks[-1].json["params"]["query_source"] == "followup"
                other = await ask("other-key", {"query": "And then?", "thread": thread})
                assert other.is_error  # another key's conversations are not this one's
                assert "Unknown or expired thread" in text_of(other)

        run(main)
