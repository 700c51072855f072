"""POST /v1/chat/completions on a live gunicorn (gevent) server against the fake upstream, via the openai SDK."""

from __future__ import annotations

import openai
import pytest
import requests

from perplexity.sse import SSEDecoder
from perplexity.testing import Fault, Reply

from .openapi import validate

ANSWER = "Paris is the capital of France [1]. It has about two million people [2]."
USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def no_retry_server(live_server_factory):
    return live_server_factory(PERPLEXITY_MAX_RETRIES="0", PERPLEXITY_READ_TIMEOUT="1")


@pytest.fixture
def no_retry_sdk(no_retry_server):
    with openai.OpenAI(base_url=no_retry_server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as client:
        yield client


def raw_events(server, body, headers=None):
    """POST and decode the SSE body with the project's own decoder; returns (response, data payloads)."""
    with requests.post(server.url + "/v1/chat/completions", json=body, headers=headers, stream=True, timeout=20) as r:
        decoder = SSEDecoder()
        events = [e for chunk in r.iter_content(None) for e in decoder.feed(chunk)]
        events += decoder.close()
        return r, [e.data for e in events]


def test_non_streaming_answer_with_sources_and_annotations(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER))
    raw = sdk.chat.completions.with_raw_response.create(model="perplexity-auto", messages=USER)
    body = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    completion = raw.parse()
    message = completion.choices[0].message
    assert message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert body["citations"] == ["https://example.com/1", "https://example.com/2", "https://example.com/3"]
    assert body["search_results"][0]["title"] and body["search_results"][0]["url"] == "https://example.com/1"
    spans = [(a.url_citation.start_index, a.url_citation.end_index, a.url_citation.url) for a in message.annotations]
    assert [(ANSWER[s:e], url) for s, e, url in spans] == [
        ("[1]", "https://example.com/1"),
        ("[2]", "https://example.com/2"),
    ]
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert raw.headers["x-request-id"] and raw.headers["x-conversation-id"].startswith("conv_")


def test_streaming_with_usage_validates_every_chunk(fake, live_server):
    fake.enqueue(Reply(answer=ANSWER, chunk_size=6))
    body = {"model": "perplexity-auto", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    response, data = raw_events(live_server, body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert data[-1] == "[DONE]"
    chunks = [requests.models.complexjson.loads(d) for d in data[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ANSWER
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" in c for c in chunks)
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert all(c["citations"][0] == "https://example.com/1" for c in content_chunks)


def test_streaming_through_the_sdk(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER, format="diff", chunk_size=4))
    stream = sdk.chat.completions.create(model="perplexity-auto", messages=USER, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == ANSWER


def test_reasoning_goes_to_reasoning_fields_not_content(fake, sdk, live_server):
    fake.enqueue(Reply(answer=ANSWER, reasoning=True, format="diff"))
    completion = sdk.chat.completions.create(model="claude-4.8-opus-thinking", messages=USER)
    message = completion.choices[0].message
    assert message.content == ANSWER
    extra = message.model_extra
    assert extra["reasoning_content"] and extra["reasoning_content"] == extra["reasoning"]
    assert ANSWER not in extra["reasoning_content"]
    assert completion.usage.completion_tokens_details.reasoning_tokens > 0
    assert fake.asks[-1].json["params"]["model_preference"] == "claude48opusthinking"
    fake.enqueue(Reply(answer=ANSWER, reasoning=True, format="diff"))
    _, data = raw_events(live_server, {"model": "claude-4.8-opus-thinking", "messages": USER, "stream": True})
    deltas = [requests.models.complexjson.loads(d)["choices"][0]["delta"] for d in data[:-1]]
    assert any(d.get("reasoning_content") for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == ANSWER


def test_stop_sequences_cut_the_output(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER), Reply(answer=ANSWER, chunk_size=3))
    whole = sdk.chat.completions.create(model="perplexity-auto", messages=USER, stop=["France"])
    assert whole.choices[0].message.content == "Paris is the capital of "
    stream = sdk.chat.completions.create(model="perplexity-auto", messages=USER, stop="France", stream=True)
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Paris is the capital of "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_cuts_with_finish_reason_length(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER))
    completion = sdk.chat.completions.create(model="perplexity-auto", messages=USER, max_completion_tokens=3)
    assert completion.choices[0].message.content == ANSWER[:12]
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize(("mode", "expected"), [("markdown", "[1](https://example.com/1)"), ("clean", "France.")])
def test_citation_modes(fake, sdk, mode, expected):
    fake.enqueue(Reply(answer=ANSWER))
    completion = sdk.chat.completions.create(model="perplexity-auto", messages=USER, extra_body={"citation_mode": mode})
    content = completion.choices[0].message.content
    assert expected in content
    for a in completion.choices[0].message.annotations:
        assert 0 <= a.url_citation.start_index < a.url_citation.end_index <= len(content)


def test_perplexity_options_reach_the_upstream(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER, related=["What else?"]))
    completion = sdk.chat.completions.create(
        model="perplexity-auto",
        messages=[{"role": "developer", "content": "Be brief."}, *USER],
        extra_body={
            "search_mode": "academic",
            "search_recency_filter": "week",
            "return_related_questions": True,
            "return_images": True,
            "web_search_options": {"user_location": {"latitude": 48.8, "longitude": 2.3}},
            "some_future_field": {"x": 1},
        },
        temperature=0.2,
        seed=3,
    )
    params = fake.asks[-1].json["params"]
    assert params["sources"] == ["scholar"] and params["search_recency_filter"] == "WEEK"
    assert params["client_coordinates"]["location_lat"] == 48.8
    assert "Be brief." in fake.asks[-1].json["query_str"]
    assert completion.model_extra["related_questions"] == ["What else?"]
    assert completion.model_extra["images"] == []


# ---- errors ------------------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(sdk, fake):
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="gpt-17", messages=USER)
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert fake.asks == []


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 2}, "n"), ({"temperature": 9}, "temperature"), ({"messages": []}, "messages")],
)
def test_bad_input_is_400_with_the_param(sdk, extra, param):
    body = {"model": "perplexity-auto", "messages": USER, **extra}
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(**body)
    assert info.value.param == param
    validate(info.value.body and {"error": info.value.body}, "ErrorResponse")


@pytest.mark.parametrize(
    ("fault", "exception", "status", "code"),
    [
        (Fault("cloudflare", times=9), openai.InternalServerError, 502, "perplexity_blocked"),
        (Fault("auth", times=9), openai.InternalServerError, 503, "perplexity_auth_failed"),
        (Fault("server_error", status=500, times=9), openai.InternalServerError, 502, "upstream_error"),
        (Fault("slow_first_byte", delay=3, times=9), openai.InternalServerError, 504, "upstream_timeout"),
        # Last: the server's only account then cools down for the Retry-After (asked again only after it).
        (Fault("rate_limit", retry_after=7, times=9), openai.RateLimitError, 429, "rate_limit_exceeded"),
    ],
)
def test_upstream_failures_map_to_sdk_exceptions(fake, no_retry_sdk, fault, exception, status, code):
    """The mapping, not the retries (test_client covers those): no upstream retry, a 1 s read timeout."""
    fake.enqueue(fault)
    with pytest.raises(exception) as info:
        no_retry_sdk.chat.completions.create(model="perplexity-auto", messages=USER)
    assert info.value.status_code == status and info.value.code == code
    headers = info.value.response.headers
    if status == 429:
        assert headers["retry-after"] == "7"
    else:
        assert headers["x-should-retry"] == "false"
    assert headers["x-request-id"]


def test_streaming_errors_before_the_first_byte_get_a_real_status(fake, sdk):
    fake.enqueue(Fault("auth", times=9))
    with pytest.raises(openai.InternalServerError) as info:
        sdk.chat.completions.create(model="perplexity-auto", messages=USER, stream=True)
    assert info.value.status_code == 503


def test_mid_stream_failure_is_one_error_event(fake, sdk, live_server):
    fake.enqueue(Fault("failed", after_frames=6, error_code="MODEL_ERROR", message="Model broke"))
    stream = sdk.chat.completions.create(model="perplexity-auto", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="MODEL_ERROR"):
        for _ in stream:
            pass
    fake.enqueue(Fault("reset", after_frames=6))
    _, data = raw_events(live_server, {"model": "perplexity-auto", "messages": USER, "stream": True})
    assert "[DONE]" not in data
    error = requests.models.complexjson.loads(data[-1])
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "upstream_stream_truncated"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("get", "/v1/chat/completions", {}, 405, "method_not_allowed"),
        ("post", "/v1/nope", {"json": {}}, 404, "unknown_url"),
        ("post", "/v1/chat/completions", {"data": "hi", "headers": {"content-type": "text/plain"}}, 415, None),
        ("post", "/v1/chat/completions", {"data": "{", "headers": {"content-type": "application/json"}}, 400, None),
    ],
)
def test_http_errors_are_openai_shaped(live_server, method, path, kwargs, status, code):
    response = requests.request(method, live_server.url + path, timeout=10, **kwargs)
    assert response.status_code == status
    validate(response.json(), "ErrorResponse")
    if code:
        assert response.json()["error"]["code"] == code
    assert response.headers["x-request-id"]


def test_too_large_bodies_are_413(live_server_factory):
    server = live_server_factory(MAX_REQUEST_BYTES="2000")
    response = requests.post(
        server.url + "/v1/chat/completions",
        json={"model": "perplexity-auto", "messages": [{"role": "user", "content": "x" * 5000}]},
        timeout=10,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


# ---- streams: heartbeats and disconnects -----------------------------------------------------


def test_heartbeats_during_upstream_silence(fake, live_server):
    fake.enqueue(Reply(answer=ANSWER, first_byte_delay=1.6))
    with requests.post(
        live_server.url + "/v1/chat/completions",
        json={"model": "perplexity-auto", "messages": USER, "stream": True},
        stream=True,
        timeout=20,
    ) as response:
        body = b"".join(response.iter_content(None))
    assert body.count(b": ping") >= 3  # 0.5 s interval over a 1.6 s silence, plus the opening one
    assert body.endswith(b"data: [DONE]\n\n")


def leave_mid_stream(fake, server):
    """Start a slow streamed chat, read its first bytes, hang up; True once the fake saw its stream closed."""
    fake.enqueue(Reply(answer=ANSWER * 50, chunk_size=4, frame_delay=0.2))
    response = requests.post(
        server.url + "/v1/chat/completions",
        json={"model": "perplexity-auto", "messages": USER, "stream": True},
        stream=True,
        timeout=20,
    )
    next(response.iter_content(64))
    assert fake.wait_until(lambda: fake.open_streams == 1)
    response.close()
    # Noticed on the next write (a frame or a 0.5 s heartbeat); the bound here is liveness, not speed:
    # scripts/bench.py measures how fast.
    return fake.wait_until(lambda: fake.open_streams == 0, timeout=5)


def test_client_disconnect_closes_the_upstream(fake, live_server):
    assert leave_mid_stream(fake, live_server)
    assert fake.streams_closed_by_client == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"])
def test_a_client_leaving_during_upstream_silence_releases_the_upstream(fake, live_server, path):
    """No frame arrives to write: the heartbeat tick sees the client's FIN and closes the upstream."""
    fake.enqueue(Reply(answer=ANSWER, first_byte_delay=30, heartbeat_every=0.2))
    body = {"model": "perplexity-auto", "stream": True}
    body.update(
        {"messages": USER}
        if "chat" in path
        else {"input": "hi"}
        if "responses" in path
        else {"messages": USER, "max_tokens": 1024}
        if "messages" in path
        else {"prompt": "hi"}
    )
    response = requests.post(live_server.url + path, json=body, stream=True, timeout=20)
    next(response.iter_content(1))
    assert fake.wait_until(lambda: fake.open_streams == 1)
    response.close()
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=5)


# ---- conversations ---------------------------------------------------------------------------


def test_three_turn_chat_continues_one_thread(fake, sdk):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"}]
    first = sdk.chat.completions.with_raw_response.create(model="perplexity-auto", messages=messages)
    conversation = first.headers["x-conversation-id"]
    messages += [{"role": "assistant", "content": first.parse().choices[0].message.content}]
    messages += [{"role": "user", "content": "And of Germany?"}]
    second = sdk.chat.completions.with_raw_response.create(model="perplexity-auto", messages=messages)
    messages += [{"role": "assistant", "content": second.parse().choices[0].message.content}]
    messages += [{"role": "user", "content": "And of Italy?"}]
    third = sdk.chat.completions.with_raw_response.create(model="perplexity-auto", messages=messages, stream=True)
    "".join(c.choices[0].delta.content or "" for c in third.parse() if c.choices)
    asks = fake.asks
    assert [a.json["params"]["query_source"] for a in asks] == ["home", "followup", "followup"]
    assert asks[1].json["query_str"] == "And of Germany?" and asks[2].json["query_str"] == "And of Italy?"
    assert len({a.thread for a in asks}) == 1
    assert second.headers["x-conversation-id"] == third.headers["x-conversation-id"] == conversation


def test_edited_history_starts_a_new_thread(fake, sdk):
    first = sdk.chat.completions.create(model="perplexity-auto", messages=USER)
    messages = [*USER, {"role": "assistant", "content": first.choices[0].message.content + " (edited)"}]
    messages.append({"role": "user", "content": "More?"})
    sdk.chat.completions.create(model="perplexity-auto", messages=messages)
    assert [a.json["params"]["query_source"] for a in fake.asks] == ["home", "home"]
    assert "Conversation so far" in fake.asks[-1].json["query_str"]


def test_conversation_id_pins_a_thread_and_can_be_listed_and_deleted(fake, sdk, live_server):
    extra = {"conversation_id": "my-chat-1"}
    sdk.chat.completions.create(model="perplexity-auto", messages=USER, extra_body=extra)
    sdk.chat.completions.create(
        model="perplexity-auto", messages=[{"role": "user", "content": "Next"}], extra_body=extra
    )
    assert fake.asks[-1].json["params"]["query_source"] == "followup"
    listed = requests.get(live_server.url + "/conversations", timeout=5).json()
    assert "my-chat-1" in [c["id"] for c in listed["data"]]
    assert all("read_write_token" not in str(c) for c in listed["data"])
    assert requests.delete(live_server.url + "/conversations/my-chat-1", timeout=5).status_code == 200
    assert requests.delete(live_server.url + "/conversations/my-chat-1", timeout=5).status_code == 404


def test_callers_never_continue_each_others_threads(fake, live_server_factory):
    server = live_server_factory(API_KEYS="key-a,key-b")
    a = openai.OpenAI(base_url=server.url + "/v1", api_key="key-a", max_retries=0)
    b = openai.OpenAI(base_url=server.url + "/v1", api_key="key-b", max_retries=0)
    with a, b:
        first = a.chat.completions.with_raw_response.create(model="perplexity-auto", messages=USER)
        history = [*USER, {"role": "assistant", "content": first.parse().choices[0].message.content}]
        history.append({"role": "user", "content": "More?"})
        b.chat.completions.create(model="perplexity-auto", messages=history)
        b.chat.completions.create(
            model="perplexity-auto", messages=USER, extra_body={"conversation_id": first.headers["x-conversation-id"]}
        )
        assert [x.json["params"]["query_source"] for x in fake.asks] == ["home", "home", "home"]
        listed = requests.get(server.url + "/conversations", headers={"Authorization": "Bearer key-b"}, timeout=5)
        assert first.headers["x-conversation-id"] not in listed.text
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="perplexity-auto", messages=USER)
    assert "key-a" not in server.log() and "key-b" not in server.log()


def test_the_impersonating_transport_serves_chat_under_gevent(fake, live_server_factory):
    """Production uses curl_cffi against perplexity.ai: the same answers, streams and early closes through it."""
    server = live_server_factory(PERPLEXITY_IMPERSONATE="chrome")
    assert requests.get(server.url + "/stats", timeout=10).json()["transport"].startswith("curl_cffi")
    fake.enqueue(Reply(answer=ANSWER), Reply(answer=ANSWER, format="diff", chunk_size=4))
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
        assert (
            client.chat.completions.create(model="perplexity-auto", messages=USER).choices[0].message.content == ANSWER
        )
        stream = client.chat.completions.create(model="perplexity-auto", messages=USER, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER
    assert "user-agent" in fake.asks[-1].headers and "python-requests" not in fake.asks[-1].headers["user-agent"]
    assert leave_mid_stream(fake, server)
    assert "Traceback" not in server.log()


def test_the_plain_requests_engine_still_serves_chat(fake, live_server_factory):
    """PERPLEXITY_IMPERSONATE=off (any base URL that is not perplexity.ai): answers, streams and early closes."""
    server = live_server_factory(PERPLEXITY_IMPERSONATE="off")
    assert requests.get(server.url + "/stats", timeout=10).json()["transport"].startswith("requests")
    fake.enqueue(Reply(answer=ANSWER), Reply(answer=ANSWER, chunk_size=4, heartbeat_every=0.1))
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:
        assert (
            client.chat.completions.create(model="perplexity-auto", messages=USER).choices[0].message.content == ANSWER
        )
        stream = client.chat.completions.create(model="perplexity-auto", messages=USER, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER
    assert leave_mid_stream(fake, server)
    assert "Traceback" not in server.log()
