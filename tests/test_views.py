"""View-level behaviour on the app factory (no gunicorn): the shared view steps and the one stream-failure path."""

from __future__ import annotations

import pytest

from api import steps
from api.core.turn import ChatTurn
from perplexity.testing import Reply

CHAT = {"model": "perplexity-auto", "messages": [{"role": "user", "content": "Hi?"}]}
ENDPOINTS = [
    ("/v1/chat/completions", CHAT),
    ("/v1/responses", {"model": "perplexity-auto", "input": "Hi?"}),
    ("/v1/completions", {"model": "perplexity-auto", "prompt": "Hi?"}),
]


def _boom(*args, **kwargs):
    raise RuntimeError("injected between the open and the first byte")


@pytest.mark.parametrize(("path", "body"), ENDPOINTS, ids=[p for p, _ in ENDPOINTS])
def test_a_failure_after_the_open_closes_the_upstream_stream(app, client, fake, monkeypatch, path, body):
    """Streamed: the SSE body cannot be built; whole: the turn fails on the first event. Both close the upstream."""
    fake.default_reply = Reply(answer="A long answer. " * 50, chunk_size=5, frame_delay=0.05)  # 150 frames: 7 s
    monkeypatch.setattr(steps, "_stream_hooks", _boom)
    response = client.post(path, json={**body, "stream": True})
    assert response.status_code == 500 and response.json["error"]["code"] == "internal_error"
    assert len(fake.asks) == 1 and fake.wait_until(lambda: fake.open_streams == 0, timeout=3)
    assert app.extensions["perplexity"].open_streams == 0  # the stream slot came back too
    monkeypatch.setattr(ChatTurn, "feed", _boom)
    response = client.post(path, json=body)
    assert response.status_code == 500
    assert len(fake.asks) == 2 and fake.wait_until(lambda: fake.open_streams == 0, timeout=3)


def test_a_stream_that_breaks_mid_answer_ends_with_one_error_event_and_is_closed(app, client, fake, monkeypatch):
    fake.default_reply = Reply(answer="A long answer. " * 50, frame_delay=0.02)
    calls = []
    original = ChatTurn.feed

    def feed(self, event):
        calls.append(event)
        if len(calls) == 5:
            raise RuntimeError("mid-answer")
        return original(self, event)

    monkeypatch.setattr(ChatTurn, "feed", feed)
    with client.post("/v1/chat/completions", json={**CHAT, "stream": True}) as response:  # a server closes it
        events = [line for line in response.get_data().split(b"\n") if line.startswith(b"data: ")]
    assert events[-1].startswith(b'data: {"error":') and b"[DONE]" not in b"".join(events)
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=3)
    assert app.extensions["perplexity"].open_streams == 0


def test_a_request_the_turn_refuses_costs_no_ask(client, fake):
    response = client.post("/v1/chat/completions", json={**CHAT, "citation_mode": "markdwn"})
    assert response.status_code == 400 and response.json["error"]["param"] == "citation_mode"
    assert fake.asks == []
