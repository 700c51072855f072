"""LOG_FORMAT=json: every line gunicorn and the app write is one JSON object with the documented fields, and no
secret, against real gunicorn and the fake."""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from perplexity.testing import Fault, Reply

from .conftest import TOKEN

USER = [{"role": "user", "content": "hello"}]
KEY = "sk-" + secrets.token_hex(12)  # in API_KEYS_FILE, labelled
PLAIN = "sk-" + secrets.token_hex(12)  # in API_KEYS


@pytest.fixture(scope="module")
def server(live_server_factory, tmp_path_factory):
    path: Path = tmp_path_factory.mktemp("jsonlogs") / "keys.json"
    path.write_text(json.dumps({"keys": [{"key": KEY, "label": "team-a"}]}))
    return live_server_factory(API_KEYS_FILE=str(path), API_KEYS=PLAIN, LOG_FORMAT="json")


def records(server) -> list[dict[str, Any]]:
    """Every line of the server's output (stdout and stderr), each parsed as JSON: one that does not parse fails."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def access_record(server, request_id: str) -> dict[str, Any]:
    """The access record of one request (written just after its response: waited for, bounded)."""
    for _ in range(100):
        found = [r for r in records(server) if r["logger"] == "gunicorn.access" and r.get("request_id") == request_id]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access record for {request_id}")


def test_access_records_carry_the_request_fields(fake, server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        fake.enqueue(Reply(answer="streamed answer " * 5, chunk_size=6, first_byte_delay=0.05))
        stream = client.chat.completions.with_raw_response.create(model="perplexity-auto", messages=USER, stream=True)
        "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
        model = client.models.with_raw_response.retrieve("perplexity-sonar")
    streamed = access_record(server, stream.headers["x-request-id"])
    assert streamed["method"] == "POST" and streamed["route"] == "/v1/chat/completions"
    assert streamed["status"] == 200 and streamed["key"] == "team-a"
    assert streamed["account"] == stream.headers["x-perplexity-account"]
    assert isinstance(streamed["duration_ms"], float) and 0 < streamed["ttft_ms"] <= streamed["duration_ms"]
    assert streamed["level"] == "INFO" and streamed["timestamp"].endswith("Z") and "T" in streamed["timestamp"]
    assert isinstance(streamed["pid"], int) and streamed["bytes"] > 0
    retrieved = access_record(server, model.headers["x-request-id"])
    assert retrieved["route"] == "/v1/models/<path:model_id>"  # the rule, not the raw path
    assert retrieved["path"] == "/v1/models/perplexity-sonar" and "ttft_ms" not in retrieved
    assert "account" not in retrieved  # nothing was asked of Perplexity
    # A refused request: no key label (none matched), still a record.
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong-key-000", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            client.models.list()
    denied = access_record(server, refused.value.response.headers["x-request-id"])
    assert denied["status"] == 401 and "key" not in denied and denied["route"] == "/v1/models"


def test_every_line_is_json_and_holds_no_secret(fake, server):
    leak = f"Request failed. token {TOKEN} key {KEY} plain {PLAIN} Bearer {KEY}"
    fake.enqueue(Fault("failed", after_frames=2, error_code="E", message=leak))
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=20) as client:
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="perplexity-auto", messages=USER)
    request_id = failed.value.response.headers["x-request-id"]
    access_record(server, request_id)
    lines = records(server)  # each parses, or this fails
    app_lines = [r for r in lines if r.get("request_id") == request_id and r["logger"] != "gunicorn.access"]
    warning = next(r for r in app_lines if "Request failed" in r["message"])
    assert warning["level"] == "WARNING" and warning["key"] == "team-a"
    assert warning["route"] == "/v1/chat/completions" and warning["method"] == "POST"
    assert "token *** key *** plain *** Bearer ***" in warning["message"]
    assert any(r["logger"].startswith("gunicorn.error") for r in lines)  # gunicorn's own lines are JSON too
    text = json.dumps(lines)
    assert TOKEN not in text and KEY not in text and PLAIN not in text


def test_the_formatter_keeps_the_redaction_and_tracebacks(app):
    """In process: the app's root handler masks a key and the token in a message and in a traceback."""
    from api.edge import redact
    from app import _configure_logging

    redact.register(KEY, TOKEN)
    _configure_logging("INFO", "json")
    handler = logging.getLogger().handlers[0]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        try:
            raise ValueError(f"boom {KEY}")
        except ValueError:
            logging.getLogger("test.json").exception("key %s and token %s", KEY, TOKEN)
    finally:
        handler.setStream(previous)
        _configure_logging("INFO", "text")
    record = json.loads(stream.getvalue())
    assert record["message"] == "key *** and token ***" and record["logger"] == "test.json"
    assert "ValueError: boom ***" in record["exception"] and KEY not in stream.getvalue()
