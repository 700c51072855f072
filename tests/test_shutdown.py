"""Graceful shutdown with real gunicorn and SIGTERM: readiness turns 503, and streams still open at the drain
deadline end with their family's closing event instead of a bare TCP close."""

from __future__ import annotations

import json
import threading
import time

import requests

from perplexity.sse import SSEDecoder
from perplexity.testing import Reply

ASK = [{"role": "user", "content": "Tell me a long story."}]
BODIES = {
    "/v1/chat/completions": {"model": "perplexity-auto", "messages": ASK, "stream": True},
    "/v1/completions": {"model": "perplexity-auto", "prompt": "Tell me a long story.", "stream": True},
    "/v1/responses": {"model": "perplexity-auto", "input": "Tell me a long story.", "stream": True},
    "/v1/messages": {"model": "sonnet", "max_tokens": 100_000, "messages": ASK, "stream": True},
}


def read_all(response: requests.Response, into: dict, path: str) -> None:
    """Read a stream to its end; record its events, and whether the connection broke instead of ending."""
    decoder = SSEDecoder()
    events = []
    try:
        for chunk in response.iter_content(None):
            events += decoder.feed(chunk)
        events += decoder.close()
        into[path] = (events, None)
    except requests.RequestException as exc:  # a bare close mid-body
        into[path] = (events, exc)


def test_sigterm_ends_open_streams_properly_and_readiness_turns_503(fake, live_server_factory) -> None:
    server = live_server_factory(GRACEFUL_TIMEOUT="4", HEARTBEAT_INTERVAL="0.5")
    long_answer = "word " * 400
    fake.enqueue(*[Reply(answer=long_answer, chunk_size=5, frame_delay=0.1) for _ in BODIES])
    keepalive = requests.Session()
    assert keepalive.get(server.url + "/health", timeout=5).status_code == 200
    streams = {}
    for path, body in BODIES.items():
        response = requests.post(server.url + path, json=body, stream=True, timeout=30)
        assert response.status_code == 200, path
        streams[path] = response
    assert fake.wait_until(lambda: fake.open_streams == len(BODIES), timeout=10)
    results: dict = {}
    readers = [threading.Thread(target=read_all, args=(r, results, p)) for p, r in streams.items()]
    for reader in readers:
        reader.start()
    server.process.terminate()  # SIGTERM to the master, which passes it on to its worker
    try:
        # The kept-alive connection is still served; the signal reaches the worker through the master.
        for _ in range(30):
            ready = keepalive.get(server.url + "/health/ready", timeout=5)
            if ready.status_code == 503:
                break
            time.sleep(0.1)
        assert ready.status_code == 503 and "draining" in " ".join(ready.json()["reasons"])
        for reader in readers:
            reader.join(timeout=20)
        assert not any(reader.is_alive() for reader in readers)
    finally:
        keepalive.close()
        for response in streams.values():
            response.close()
    for path, (events, broken) in results.items():
        assert broken is None, f"{path}: the connection was cut: {broken}"
        assert events, path
    chat_like = [results["/v1/chat/completions"][0], results["/v1/completions"][0]]
    for events in chat_like:
        assert events[-1].data == "[DONE]"
        assert json.loads(events[-2].data)["error"]["code"] == "server_shutting_down"
    responses = results["/v1/responses"][0]
    final = json.loads(responses[-1].data)
    assert final["type"] == "response.failed" and "server_shutting_down" in final["response"]["error"]["message"]
    messages = results["/v1/messages"][0]
    assert messages[-1].event == "error"
    assert json.loads(messages[-1].data)["error"]["type"] == "overloaded_error"
    server.wait_stopped()
    assert server.process.returncode == 0
