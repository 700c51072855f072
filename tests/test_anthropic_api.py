"""Anthropic's Messages API on a live gunicorn server against the fake, through the official `anthropic` SDK.

Every stream is also read raw and checked event by event against the grammar in docs/anthropic-contract.md
(section 5.3): message_start first, blocks strictly sequential and closed, deltas of their block's type, one
message_delta with the stop reason and cumulative usage, one message_stop last, nothing after an error.
"""

from __future__ import annotations

import base64
import json

import anthropic
import pytest
import requests

from perplexity.sse import SSEDecoder
from perplexity.testing import Fault, ProtocolModel, Reply, tool_call_text

ANSWER = "Paris is the capital of France [1]. It has about two million people [2]."
ASK = [{"role": "user", "content": "What is the capital of France?"}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {
    "name": "get_time",
    "description": "The time in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
DELTA_TYPES = {
    "text": {"text_delta", "citations_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
    "server_tool_use": {"input_json_delta"},
    "web_search_tool_result": set(),
}


@pytest.fixture
def claude(live_server):
    with anthropic.Anthropic(base_url=live_server.url, api_key="unused", max_retries=0, timeout=20) as client:
        yield client


def raw_stream(server, body: dict, headers: dict | None = None) -> list[tuple[str, dict]]:
    """POST a streamed message and return its (event name, data) pairs, checked against the grammar."""
    body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024, "stream": True, **body}
    with requests.post(server.url + "/v1/messages", json=body, headers=headers, stream=True, timeout=20) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        decoder = SSEDecoder()
        frames = [e for chunk in r.iter_content(None) for e in decoder.feed(chunk)] + decoder.close()
    events = [(frame.event, json.loads(frame.data)) for frame in frames]
    check_grammar(events)
    return events


def check_grammar(events: list[tuple[str, dict]]) -> None:
    """Anthropic's stream grammar (docs/anthropic-contract.md 5.3), event by event."""
    assert events and events[0][0] == "message_start", "message_start comes first"
    blocks: list[str] = []  # types of the blocks started, by index
    open_index: int | None = None
    state = "blocks"
    for position, (name, data) in enumerate(events):
        assert name == data["type"], f"event name {name} != data type {data['type']}"
        if name == "error":
            assert position == len(events) - 1, "nothing follows an error"
            return
        if name == "ping":
            continue
        if name == "message_start":
            assert position == 0 and data["message"]["content"] == [] and data["message"]["stop_reason"] is None
            assert data["message"]["usage"]["input_tokens"] >= 0
        elif name == "content_block_start":
            assert state == "blocks" and open_index is None, "a block starts only once the previous one stopped"
            assert data["index"] == len(blocks), "block indexes are 0, 1, 2, ... without gaps"
            blocks.append(data["content_block"]["type"])
            open_index = data["index"]
            if blocks[-1] in ("tool_use", "server_tool_use"):
                assert data["content_block"]["input"] == {}, "tool input arrives as input_json_delta"
        elif name == "content_block_delta":
            assert data["index"] == open_index, "deltas go to the open block"
            assert data["delta"]["type"] in DELTA_TYPES[blocks[open_index]]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        elif name == "message_delta":
            assert open_index is None, "every block is closed before message_delta"
            if state == "blocks":
                assert data["delta"]["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence", "tool_use")
            assert data["usage"]["output_tokens"] >= 1 and data["usage"]["input_tokens"] >= 0
            state = "delta"
        elif name == "message_stop":
            assert state == "delta" and position == len(events) - 1, "one message_stop, last, after message_delta"
            state = "stopped"
        else:
            raise AssertionError(f"unexpected event {name}")
    assert state == "stopped", "the stream ends with message_stop"


def blocks_of(events: list[tuple[str, dict]]) -> list[dict]:
    """The content blocks a stream built (starts plus their deltas), as a message's content would hold them."""
    built: list[dict] = []
    for name, data in events:
        if name == "content_block_start":
            built.append({**data["content_block"], "_json": ""})
        elif name == "content_block_delta":
            block, delta = built[data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                block["_json"] += delta["partial_json"]
    return built


# ---- answers -----------------------------------------------------------------------------------------


def test_create_maps_the_model_and_cites_sources(fake, claude) -> None:
    fake.enqueue(Reply(answer=ANSWER))
    message = claude.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=1024, messages=ASK)
    assert message.model == "claude-5.0-sonnet" and message.stop_reason == "end_turn"
    (block,) = message.content
    assert block.type == "text" and block.text == ANSWER
    assert [c.url for c in block.citations] == ["https://example.com/1", "https://example.com/2"]
    assert block.citations[0].type == "web_search_result_location" and block.citations[0].cited_text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.id.startswith("msg_")
    assert fake.asks[-1].json["params"]["model_preference"] == "claude50sonnet"


def test_stream_helper_and_the_raw_grammar(fake, claude, live_server) -> None:
    fake.enqueue(Reply(answer=ANSWER, chunk_size=5))
    with claude.messages.stream(model="claude-opus-4-1", max_tokens=1024, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER and final.content[0].text == ANSWER and final.model == "claude-4.8-opus"
    assert len(final.content[0].citations) == 2
    fake.enqueue(Reply(answer=ANSWER, chunk_size=5))
    events = raw_stream(live_server, {"messages": ASK})
    (text_block,) = blocks_of(events)
    assert text_block["text"] == ANSWER and len(text_block["citations"]) == 2
    assert events[1][0] == "ping"  # right after message_start, before Perplexity's first byte


def test_system_blocks_without_the_attribution_block_and_an_image(fake, claude) -> None:
    fake.enqueue(Reply(answer="It is a tiny picture."))
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.300.abc; cc_entrypoint=cli; cch=1;"},
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
    ]
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is in this image?"},
    ]
    claude.messages.create(
        model="sonnet", max_tokens=512, system=system, messages=[{"role": "user", "content": content}]
    )
    ask = fake.asks[-1].json
    assert "You are terse." in ask["query_str"] and "billing-header" not in ask["query_str"]
    assert len(ask["params"]["attachments"]) == 1 and len(fake.uploads) == 1


def test_thinking_blocks_and_the_thinking_variant(fake, claude, live_server) -> None:
    fake.enqueue(Reply(answer=ANSWER, reasoning=True))
    thinking = {"type": "enabled", "budget_tokens": 2048}
    message = claude.messages.create(model="claude-opus-4-1", max_tokens=4096, thinking=thinking, messages=ASK)
    assert message.model == "claude-4.8-opus-thinking"
    assert fake.asks[-1].json["params"]["model_preference"] == "claude48opusthinking"
    assert message.content[0].type == "thinking" and message.content[0].thinking and message.content[0].signature
    assert message.content[-1].type == "text" and message.content[-1].text == ANSWER
    fake.enqueue(Reply(answer=ANSWER, reasoning=True))
    events = raw_stream(live_server, {"model": "claude-opus-4-1", "thinking": thinking, "messages": ASK})
    built = blocks_of(events)
    assert built[0]["type"] == "thinking" and built[0]["thinking"] and built[-1]["text"] == ANSWER
    signatures = [
        d["delta"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "signature_delta"
    ]
    assert signatures and all(s["signature"] for s in signatures)
    fake.enqueue(Reply(answer=ANSWER, reasoning=True))
    plain = claude.messages.create(model="claude-opus-4-1", max_tokens=4096, messages=ASK)
    assert [block.type for block in plain.content] == ["text"]  # no thinking asked for, none shown


def test_stop_sequences_and_the_max_tokens_cut(fake, claude, live_server) -> None:
    fake.enqueue(Reply(answer="Paris is lovely. THE END and more text."))
    message = claude.messages.create(model="sonnet", max_tokens=1024, stop_sequences=["THE END"], messages=ASK)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "THE END"
    assert message.content[0].text == "Paris is lovely. "
    fake.enqueue(Reply(answer="word " * 200, chunk_size=7))
    events = raw_stream(live_server, {"max_tokens": 10, "messages": ASK})
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert len(blocks_of(events)[0]["text"]) <= 40  # ten tokens, four characters each


def test_web_search_server_tool(fake, claude, live_server) -> None:
    fake.enqueue(Reply(answer=ANSWER))
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    message = claude.messages.create(model="sonnet", max_tokens=1024, tools=[search], messages=ASK)
    kinds = [block.type for block in message.content]
    assert kinds == ["server_tool_use", "web_search_tool_result", "text"]
    assert message.content[0].input == {"query": ASK[0]["content"]}
    assert message.content[1].tool_use_id == message.content[0].id
    assert [r.url for r in message.content[1].content][:1] == ["https://example.com/1"]
    assert message.usage.server_tool_use.web_search_requests == 1
    assert "<tools>" not in fake.asks[-1].json["query_str"]
    fake.enqueue(Reply(answer=ANSWER))
    built = blocks_of(raw_stream(live_server, {"tools": [search], "messages": ASK}))
    assert [b["type"] for b in built] == ["server_tool_use", "web_search_tool_result", "text"]
    assert json.loads(built[0]["_json"]) == {"query": ASK[0]["content"]} and built[1]["content"]


def test_probes_and_count_tokens_ask_nothing(fake, claude) -> None:
    before = len(fake.asks)
    probe = claude.messages.create(
        model="claude-opus-4-8[1m]", max_tokens=1, messages=[{"role": "user", "content": "x"}]
    )
    assert probe.stop_reason == "max_tokens" and probe.usage.input_tokens >= 1
    counted = claude.messages.count_tokens(
        model="claude-sonnet-4-5",
        system="Be brief.",
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Hello " * 40}],
    )
    assert counted.input_tokens > 60  # 240 characters of messages, plus the system prompt and the tool section
    assert len(fake.asks) == before


def test_models_in_anthropic_shape(claude) -> None:
    page = claude.models.list(limit=3)
    assert len(page.data) == 3 and page.has_more and page.data[0].type == "model"
    ids = [model.id for model in claude.models.list(limit=1000).data]
    assert "claude-4.8-opus" in ids and "perplexity-auto" in ids
    assert claude.models.retrieve("claude-4.8-opus").display_name == "Claude Opus 4.8"


# ---- tools --------------------------------------------------------------------------------------------


def test_a_three_step_tool_loop_is_one_perplexity_thread(fake, claude) -> None:
    fake.enqueue(
        Reply(answer=tool_call_text("get_weather", {"city": "Paris"})),
        Reply(answer=tool_call_text("get_time", {"city": "Paris"})),
        Reply(answer="Sunny and 21 C; it is noon in Paris."),
    )
    results = {"get_weather": "21 C, sunny", "get_time": "12:00"}
    messages: list[dict] = list(ASK)
    for _ in range(2):
        message = claude.messages.create(model="sonnet", max_tokens=1024, tools=[WEATHER, TIME], messages=messages)
        assert message.stop_reason == "tool_use"
        (call,) = [block for block in message.content if block.type == "tool_use"]
        assert call.id.startswith("toolu_")
        messages.append(
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]}
        )
        messages.append(
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": results[call.name]}],
            }
        )
    final = claude.messages.create(model="sonnet", max_tokens=1024, tools=[WEATHER, TIME], messages=messages)
    assert final.stop_reason == "end_turn" and final.content[0].text == "Sunny and 21 C; it is noon in Paris."
    asks = fake.asks[-3:]
    assert len({ask.thread for ask in asks}) == 1
    assert [ask.json["params"].get("query_source") for ask in asks[1:]] == ["followup", "followup"]
    assert '<tool_response name="get_weather"' in asks[1].json["query_str"] and "12:00" in asks[2].json["query_str"]


def test_a_streamed_tool_use_and_tool_choice_forms(fake, claude, live_server) -> None:
    fake.enqueue(Reply(answer=tool_call_text("get_weather", {"city": "Paris", "note": "n" * 300}), chunk_size=9))
    events = raw_stream(live_server, {"tools": [WEATHER], "messages": ASK})
    (block,) = blocks_of(events)
    assert block["type"] == "tool_use" and json.loads(block["_json"])["city"] == "Paris"
    fragments = [d for n, d in events if n == "content_block_delta"]
    assert len(fragments) > 2 and fragments[0]["delta"]["partial_json"] == ""
    assert next(d for n, d in events if n == "message_delta")["delta"]["stop_reason"] == "tool_use"
    fake.enqueue(Reply(answer="Sunny, I think."), Reply(answer=tool_call_text("get_time", {"city": "Paris"})))
    forced = claude.messages.create(
        model="sonnet", max_tokens=1024, tools=[WEATHER, TIME], tool_choice={"type": "any"}, messages=ASK
    )
    assert forced.content[0].name == "get_time"
    assert fake.asks[-1].json["query_str"].startswith("Your previous answer did not contain a valid tool call")
    fake.enqueue(Reply(answer=tool_call_text("get_time", {"city": "Paris"})))
    named = claude.messages.create(
        model="sonnet", max_tokens=1024, tools=[WEATHER, TIME], tool_choice={"type": "tool", "name": "get_time"},
        messages=ASK,
    )  # fmt: skip
    assert named.content[0].name == "get_time"
    assert 'You must call the tool "get_time" now' in fake.asks[-1].json["query_str"]
    fake.enqueue(Reply(answer="Just text."))
    none = claude.messages.create(
        model="sonnet", max_tokens=1024, tools=[WEATHER], tool_choice={"type": "none"}, messages=ASK
    )
    assert none.content[0].text == "Just text." and "<tools>" not in fake.asks[-1].json["query_str"]


def test_a_claude_code_session_stays_on_one_thread(fake, live_server) -> None:
    """Claude Code streams, resends its whole history with thinking blocks, and sends x-api-key."""
    fake.responder = ProtocolModel()
    headers = {"x-api-key": "unused", "anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking"}
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.300;"},
        {"type": "text", "text": "You are Claude Code."},
    ]
    body = {
        "system": system,
        "tools": [WEATHER],
        "thinking": {"type": "adaptive"},
        "metadata": {"user_id": "session-1"},
    }
    messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}]
    before = len(fake.asks)
    events = raw_stream(live_server, {**body, "messages": messages}, headers)
    built = blocks_of(events)
    call = next(block for block in built if block["type"] == "tool_use")
    assistant = [
        {"type": "thinking", "thinking": b["thinking"], "signature": "sig"} if b["type"] == "thinking" else
        {"type": "tool_use", "id": b["id"], "name": b["name"], "input": json.loads(b["_json"])}
        for b in built
    ]  # fmt: skip
    messages += [
        {"role": "assistant", "content": assistant},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "21 C"}]},
    ]
    events = raw_stream(live_server, {**body, "messages": messages}, headers)
    assert blocks_of(events)[-1]["text"] == "Done: 21 C"
    first, second = fake.asks[before:]
    assert second.thread == first.thread and second.json["params"]["query_source"] == "followup"


# ---- errors --------------------------------------------------------------------------------------------


def test_error_classes(fake, claude, live_server_factory) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="gpt-9", max_tokens=10, messages=ASK)
    assert caught.value.body["error"]["type"] == "not_found_error" and caught.value.request_id
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="sonnet", max_tokens=anthropic.omit, messages=ASK)
    assert caught.value.body["type"] == "error" and "max_tokens" in caught.value.body["error"]["message"]
    fake.enqueue(Fault("server_error", status=500, times=9))
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.messages.create(model="sonnet", max_tokens=10, messages=ASK)
    assert caught.value.status_code == 529 and caught.value.body["error"]["type"] == "overloaded_error"
    fake.reset()
    fake.enqueue(Fault("auth"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.messages.create(model="sonnet", max_tokens=10, messages=ASK)
    assert caught.value.status_code == 503


def test_auth_and_rate_limit_errors(live_server_factory) -> None:
    server = live_server_factory(API_KEYS="k-one", ENABLE_RATE_LIMITING="true", REQUESTS_PER_MINUTE="1")
    with anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0, timeout=20) as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            client.messages.count_tokens(model="sonnet", messages=ASK)
        assert caught.value.body["error"]["type"] == "authentication_error"
    r = requests.post(
        server.url + "/v1/messages/count_tokens",
        json={"model": "sonnet", "messages": ASK},
        headers={"x-api-key": "k-one"},
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    with anthropic.Anthropic(base_url=server.url, api_key="k-one", max_retries=0, timeout=20) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.count_tokens(model="sonnet", messages=ASK)
    assert caught.value.body["error"]["type"] == "rate_limit_error" and caught.value.response.headers["retry-after"]


def test_a_mid_stream_failure_is_one_error_event(fake, live_server) -> None:
    fake.enqueue(Fault("reset", after_frames=6, reply=Reply(answer=ANSWER, chunk_size=4)))
    events = raw_stream(live_server, {"messages": ASK})
    name, data = events[-1]
    assert name == "error" and data["error"]["type"] in ("overloaded_error", "api_error")
    assert "message_stop" not in [n for n, _ in events]


def test_heartbeats_are_ping_events(fake, live_server) -> None:
    fake.enqueue(Reply(answer=ANSWER, first_byte_delay=1.6))
    events = raw_stream(live_server, {"messages": ASK})
    assert [n for n, _ in events[:4]].count("ping") >= 2


def test_errors_flask_raises_have_anthropic_shape_too(live_server) -> None:
    r = requests.get(live_server.url + "/v1/messages", timeout=10)
    assert r.status_code == 405 and r.json()["type"] == "error" and r.headers["request-id"]
    r = requests.post(
        live_server.url + "/v1/messages", data="{", headers={"content-type": "application/json"}, timeout=10
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(
        live_server.url + "/v1/chat/completions", data="{", headers={"content-type": "application/json"}, timeout=10
    )
    assert r.json()["error"]["code"] == "invalid_json"  # the OpenAI family keeps its own shape


def test_the_model_map_setting(fake, live_server_factory) -> None:
    server = live_server_factory(ANTHROPIC_MODEL_MAP="claude-*haiku*=perplexity-sonar, claude-opus-*=claude-5.0-sonnet")
    fake.enqueue(Reply(answer="Hi."), Reply(answer="Hi."))
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=20) as client:
        haiku = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=100, messages=ASK)
        opus = client.messages.create(model="claude-opus-4-1", max_tokens=100, messages=ASK)
    assert haiku.model == "perplexity-sonar" and opus.model == "claude-5.0-sonnet"
    assert [ask.json["params"]["model_preference"] for ask in fake.asks[-2:]] == ["experimental", "claude50sonnet"]


def test_a_pdf_document_structured_output_and_omitted_thinking(fake, claude) -> None:
    pdf = base64.b64encode(b"%PDF-1.4\n%fake\n").decode()
    fake.enqueue(Reply(answer='{"title": "A fake PDF [1]", "pages": 1}', reasoning=True))
    content = [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
            "title": "f.pdf",
        },
        {"type": "text", "text": "Describe it as JSON."},
    ]
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "pages": {"type": "integer"}},
        "required": ["title", "pages"],
    }
    message = claude.messages.create(
        model="opus",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024, "display": "omitted"},
        messages=[{"role": "user", "content": content}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "" and thinking.signature
    assert json.loads(text.text) == {"title": "A fake PDF", "pages": 1} and not text.citations
    assert [name for name, _, _ in fake.uploads.values()] == ["f.pdf"]
    assert "<output_schema>" in fake.asks[-1].json["query_str"]
