"""No secret in any stream or log line: upstream text is redacted, and clients get generic messages for it."""

from __future__ import annotations

import json
import logging
import socket
import time
from urllib.parse import quote, quote_plus

import pytest
import requests

from api.edge import redact
from perplexity.testing import Fault

from .conftest import TOKEN

KEY_ONE = "sk-live-Secret1234567890ABCDEF"
KEY_TWO = "team-key-QWERTYUIOP-987654"
ASK = [{"role": "user", "content": "Hello?"}]


def leaky_message() -> str:
    """A Perplexity FAILED message carrying every form of every secret the server knows."""
    return (
        f"Request failed. Cookie: __Secure-next-auth.session-token={TOKEN}; other=1 | "
        f"token {TOKEN} | key {KEY_ONE} | Bearer {KEY_TWO} | lower {KEY_ONE.lower()} | "
        f"encoded {quote(KEY_TWO, safe='')} and {quote_plus(TOKEN)} | url ?api_key={KEY_ONE}&x=1"
    )


def secret_forms() -> list[str]:
    forms = []
    for secret in (TOKEN, KEY_ONE, KEY_TWO):
        forms += [secret, secret.lower(), secret.upper(), quote(secret, safe=""), quote_plus(secret)]
    return forms


def assert_clean(text: str) -> None:
    lowered = text.lower()
    leaked = [form for form in secret_forms() if form.lower() in lowered]
    assert not leaked, f"secrets leaked: {leaked}"


@pytest.fixture(autouse=True)
def _fresh_secrets():
    redact.reset()
    yield
    redact.reset()


def test_redact_masks_every_form_and_pattern() -> None:
    redact.register(TOKEN, KEY_ONE, KEY_TWO, "short")
    cleaned = redact.redact(leaky_message())
    assert_clean(cleaned)
    assert "short" not in redact.redact("a short word") or True  # too short to be a secret: left alone
    assert redact.redact("a short word") == "a short word"
    assert redact.redact("Authorization: Bearer abc.def") == "Authorization: ***"
    assert redact.redact("x-api-key: zzzzzzzz") == "x-api-key: ***"
    assert redact.redact("GET /v1/models?api_key=whatever&b=2") == "GET /v1/models?api_key=***&b=2"


def test_a_source_is_read_at_each_use() -> None:
    live = ["rotated-cookie-value-one"]
    redact.register_source(lambda: live)
    assert redact.redact("c=rotated-cookie-value-one") == "c=***"
    live[0] = "rotated-cookie-value-two"
    assert redact.redact("rotated-cookie-value-two and rotated-cookie-value-one") == "*** and rotated-cookie-value-one"


def test_the_log_filter_masks_messages_arguments_and_tracebacks(caplog) -> None:
    redact.register(KEY_ONE)
    logger = logging.getLogger("test.redaction")
    handler = logging.Handler()
    records: list[str] = []
    handler.emit = lambda record: records.append(record.getMessage() + (record.exc_text or ""))  # type: ignore[method-assign]
    handler.addFilter(redact.RedactFilter())
    logger.addHandler(handler)
    try:
        logger.warning("upstream said %s", f"key={KEY_ONE}")
        try:
            raise ValueError(f"boom {KEY_ONE}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert len(records) == 2 and all(KEY_ONE not in record for record in records)


@pytest.fixture(scope="module")
def keyed(live_server_factory):
    return live_server_factory(API_KEYS=f"{KEY_ONE},{KEY_TWO}")


def test_a_failed_frame_reaches_no_client_and_no_log_unredacted(fake, keyed) -> None:
    headers = {"Authorization": f"Bearer {KEY_ONE}"}
    body = {"model": "perplexity-auto", "messages": ASK, "stream": True}
    fake.enqueue(Fault("failed", after_frames=3, error_code="INTERNAL_ERROR", message=leaky_message()))
    with requests.post(keyed.url + "/v1/chat/completions", json=body, headers=headers, stream=True, timeout=20) as r:
        streamed = r.content.decode()
    error = json.loads(streamed.strip().split("data: ")[-1])["error"]
    assert error["message"] == "Perplexity could not answer this request (Perplexity error INTERNAL_ERROR)."
    fake.enqueue(Fault("failed", after_frames=3, error_code="INTERNAL_ERROR", message=leaky_message()))
    whole = requests.post(
        keyed.url + "/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=20
    )
    assert whole.status_code == 502
    fake.enqueue(Fault("failed", after_frames=3, error_code="INTERNAL_ERROR", message=leaky_message()))
    anthropic_body = {"model": "sonnet", "max_tokens": 100, "messages": ASK, "stream": True}
    with requests.post(keyed.url + "/v1/messages", json=anthropic_body, headers=headers, stream=True, timeout=20) as r:
        messages = r.content.decode()
    assert "event: error" in messages
    for text in (streamed, whole.text, messages):
        assert_clean(text)
        assert "Request failed" not in text  # Perplexity's prose is not forwarded at all
    log = keyed.log()
    assert "Request failed" in log  # the operator still sees what Perplexity said, redacted
    assert_clean(log)


def test_transport_details_stay_out_of_client_messages(fake, keyed) -> None:
    fake.enqueue(Fault("reset", after_frames=3))
    body = {"model": "perplexity-auto", "messages": ASK, "stream": True}
    headers = {"Authorization": f"Bearer {KEY_TWO}"}
    with requests.post(keyed.url + "/v1/chat/completions", json=body, headers=headers, stream=True, timeout=20) as r:
        text = r.content.decode()
    error = json.loads(text.strip().split("data: ")[-1])["error"]
    assert error["code"] == "upstream_stream_truncated"
    assert "127.0.0.1" not in error["message"] and "curl" not in error["message"]
    assert error["message"] == "The connection to Perplexity broke mid-answer."


def test_an_unknown_model_id_is_echoed_truncated(keyed) -> None:
    headers = {"Authorization": f"Bearer {KEY_ONE}"}
    huge = "m" * 5000
    r = requests.post(
        keyed.url + "/v1/chat/completions", json={"model": huge, "messages": ASK}, headers=headers, timeout=20
    )
    assert r.status_code == 404 and len(r.json()["error"]["message"]) < 300


def test_a_malformed_request_line_with_a_key_is_logged_masked(keyed) -> None:
    """gunicorn logs a request line it cannot parse whole, at warning level: the key in its query is masked."""
    lines = [
        f"GET /v1/models?api_key={KEY_ONE}\r\nHost: x\r\n\r\n",  # no HTTP version
        f"GET /v1/m\x00odels?key={quote(KEY_TWO, safe='')} HTTP/1.1\r\n\r\n",  # a control character
    ]
    for raw in lines:
        with socket.create_connection(("127.0.0.1", keyed.port), timeout=5) as conn:
            conn.sendall(raw.encode())
            assert conn.recv(64).startswith(b"HTTP/1.1 400")
    deadline = time.monotonic() + 5
    while keyed.log().count("Invalid HTTP request line") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = keyed.log()
    assert log.count("Invalid HTTP request line: 'GET /v1/models?api_key=***'") == 1
    assert KEY_ONE not in log and KEY_TWO not in log and quote(KEY_TWO, safe="") not in log


def test_a_key_in_the_query_string_stays_out_of_the_access_log(monkeypatch, capsys) -> None:
    import datetime

    from .conftest import access_logger

    monkeypatch.delenv("ACCESS_LOG", raising=False)
    logger = access_logger("gunicorn_conf_redact")

    class Resp:
        status, sent, headers = "200 OK", 10, [("X-Request-ID", "req_1")]

    uri = f"/v1/models?api_key={KEY_ONE}&key={quote(KEY_TWO, safe='')}&limit=5"
    environ = {"REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "GET", "RAW_URI": uri, "SERVER_PROTOCOL": "HTTP/1.1"}
    logger.access(Resp, None, environ, datetime.timedelta(milliseconds=3))
    line = capsys.readouterr().out.strip()
    assert line == '10.0.0.7 "GET /v1/models?api_key=***&key=***&limit=5 HTTP/1.1" 200 10 3ms rid=req_1'
