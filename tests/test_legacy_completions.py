"""POST /v1/completions (legacy `text_completion`) on a live gunicorn server against the fake upstream."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from perplexity.sse import SSEDecoder
from perplexity.testing import Fault, Reply

from .openapi import validate

ANSWER = "Paris is the capital of France [1]. It has about two million people [2]."
PROMPT = "The capital of France is"


def stream_data(server, body):
    """POST a streamed completion; returns the `data:` payloads, [DONE] included."""
    body = {"model": "perplexity-auto", "prompt": PROMPT, "stream": True, **body}
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=20) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        decoder = SSEDecoder()
        events = [e for chunk in r.iter_content(None) for e in decoder.feed(chunk)] + decoder.close()
    return [e.data for e in events]


def validate_chunk(chunk):
    """The spec has no chunk schema for legacy completions; OpenAI streams them as `CreateCompletionResponse`
    objects whose finish_reason is null until the last one, which the schema's enum does not list."""
    choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]
    validate({**chunk, "choices": choices}, "CreateCompletionResponse")


def test_whole_completion_is_not_cut_to_sixteen_tokens(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER))
    raw = sdk.completions.with_raw_response.create(model="perplexity-auto", prompt=PROMPT)
    body = raw.http_response.json()
    validate(body, "CreateCompletionResponse")
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    choice = completion.choices[0]
    assert choice.text == ANSWER and len(ANSWER) > 16 * 4 and choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert body["citations"][0] == "https://example.com/1"
    assert fake.asks[-1].json["query_str"] == PROMPT


@pytest.mark.parametrize(
    ("options", "text", "finish"),
    [
        ({"echo": True}, PROMPT + ANSWER, "stop"),
        ({"stop": ["France"]}, "Paris is the capital of ", "stop"),
        ({"max_tokens": 3}, ANSWER[:12], "length"),
        ({"prompt": [PROMPT], "echo": True, "stop": "France"}, PROMPT + "Paris is the capital of ", "stop"),
    ],
)
def test_echo_stop_and_max_tokens(fake, sdk, options, text, finish):
    fake.enqueue(Reply(answer=ANSWER))
    completion = sdk.completions.create(**{"model": "perplexity-auto", "prompt": PROMPT, **options})
    assert completion.choices[0].text == text and completion.choices[0].finish_reason == finish


def test_streamed_completion_through_the_sdk(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER, format="diff", chunk_size=4))
    stream = sdk.completions.create(model="perplexity-auto", prompt=PROMPT, stream=True, echo=True)
    chunks = list(stream)
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks) == PROMPT + ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "text_completion" for c in chunks)


def test_streamed_chunks_validate_and_end_with_usage_and_done(fake, live_server):
    fake.enqueue(Reply(answer=ANSWER, chunk_size=6))
    data = stream_data(live_server, {"stream_options": {"include_usage": True}, "stop": "million"})
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for chunk in chunks:
        validate_chunk(chunk)
    assert (
        "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        == "Paris is the capital of France [1]. It has about two "
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["citations"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    validate(chunks[-1], "CreateCompletionResponse")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"suffix": "\nreturn x"}, "suffix"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_unsupported_inputs_are_400_with_the_param(fake, sdk, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(**{"model": "perplexity-auto", "prompt": PROMPT, **extra})
    assert info.value.param == param
    validate({"error": info.value.body}, "ErrorResponse")
    assert fake.asks == []


def test_empty_suffix_is_accepted(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER))
    assert sdk.completions.create(model="perplexity-auto", prompt=PROMPT, suffix="").choices[0].text == ANSWER


def test_mid_stream_failure_is_one_error_event(fake, sdk, live_server):
    fake.enqueue(Fault("failed", after_frames=6, error_code="MODEL_ERROR", message="Model broke"))
    with pytest.raises(openai.APIError, match="MODEL_ERROR"):
        for _ in sdk.completions.create(model="perplexity-auto", prompt=PROMPT, stream=True):
            pass
    fake.enqueue(Fault("reset", after_frames=6))
    data = stream_data(live_server, {})
    assert "[DONE]" not in data
    error = json.loads(data[-1])
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "upstream_stream_truncated"


@pytest.mark.parametrize("stream", [False, True])
def test_failure_before_the_stream_is_an_http_error(fake, sdk, stream):
    fake.enqueue(Fault("auth", times=9))
    with pytest.raises(openai.InternalServerError) as info:
        sdk.completions.create(model="perplexity-auto", prompt=PROMPT, stream=stream)
    assert info.value.status_code == 503
