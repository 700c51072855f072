"""Tool calling and structured output on POST /v1/chat/completions, through the openai SDK against the fake."""

from __future__ import annotations

import json

import openai
import pytest

from perplexity.testing import Reply, tool_call_text

from .openapi import validate
from .test_chat_api import raw_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def call(name: str, **arguments: object) -> str:
    return tool_call_text(name, arguments)


def test_a_tool_call_comes_back_as_tool_calls(fake, sdk) -> None:
    fake.enqueue(Reply(answer=call("get_weather", city="Paris")))
    response = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, tools=[WEATHER])
    validate(response.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionResponse")
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.id.startswith("call_") and tool_call.type == "function"
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == {"city": "Paris"}
    query = fake.asks[-1].json["query_str"]
    assert query.startswith("What is the weather in Paris?") and "<tools>" in query and "get_weather" in query


def test_a_three_step_tool_loop_is_one_perplexity_thread(fake, sdk) -> None:
    messages: list[dict] = list(ASK)
    fake.enqueue(
        Reply(answer=call("get_weather", city="Paris")),
        Reply(answer=call("get_time", city="Paris")),
        Reply(answer="It is sunny and 21 C in Paris, and it is noon."),
    )
    results = {"get_weather": "21 C, sunny", "get_time": "12:00"}
    for _ in range(2):
        response = sdk.chat.completions.create(model="perplexity-auto", messages=messages, tools=[WEATHER, TIME])
        message = response.choices[0].message
        assert response.choices[0].finish_reason == "tool_calls"
        messages.append(message.model_dump(mode="json", exclude_none=True))
        for tool_call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": results[tool_call.function.name]})
    final = sdk.chat.completions.create(model="perplexity-auto", messages=messages, tools=[WEATHER, TIME])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content.startswith("It is sunny")
    asks = fake.asks[-3:]
    assert len({ask.thread for ask in asks}) == 1  # one thread, two follow-ups
    assert [ask.json["params"].get("query_source") for ask in asks[1:]] == ["followup", "followup"]
    assert asks[1].json["query_str"].startswith('<tool_response name="get_weather"')
    assert "21 C, sunny" in asks[1].json["query_str"] and "12:00" in asks[2].json["query_str"]


def test_parallel_calls_and_parallel_tool_calls_false(fake, sdk) -> None:
    both = call("get_weather", city="Paris") + "\n" + call("get_time", city="Paris")
    fake.enqueue(Reply(answer=both), Reply(answer=both))
    response = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, tools=[WEATHER, TIME])
    assert [c.function.name for c in response.choices[0].message.tool_calls] == ["get_weather", "get_time"]
    serial = sdk.chat.completions.create(
        model="perplexity-auto", messages=ASK, tools=[WEATHER, TIME], parallel_tool_calls=False
    )
    assert [c.function.name for c in serial.choices[0].message.tool_calls] == ["get_weather"]
    assert "at most one tool" in fake.asks[-1].json["query_str"]


def test_required_choice_repairs_once_on_the_same_thread(fake, sdk) -> None:
    fake.enqueue(Reply(answer="It is probably sunny in Paris."), Reply(answer=call("get_weather", city="Paris")))
    response = sdk.chat.completions.create(
        model="perplexity-auto", messages=ASK, tools=[WEATHER], tool_choice="required"
    )
    assert response.choices[0].message.tool_calls[0].function.name == "get_weather"
    first, repair = fake.asks[-2:]
    assert "You must call at least one tool now" in first.json["query_str"]
    assert repair.thread == first.thread and repair.json["params"]["query_source"] == "followup"
    assert repair.json["query_str"].startswith("Your previous answer did not contain a valid tool call")


def test_named_choice_without_a_call_after_repair_is_a_502(fake, sdk) -> None:
    fake.enqueue(Reply(answer="Sunny, I think."), Reply(answer="Still sunny."))
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(
            model="perplexity-auto",
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    assert caught.value.status_code == 502
    error = caught.value.body
    assert error["code"] == "tool_call_failed" and "Still sunny." in error["message"]
    assert 'You must call the tool "get_weather" now' in fake.asks[-2].json["query_str"]


def test_choice_none_sends_no_tool_section_and_a_false_positive_stays_text(fake, sdk) -> None:
    fake.enqueue(Reply(answer="plain"))
    sdk.chat.completions.create(model="perplexity-auto", messages=ASK, tools=[WEATHER], tool_choice="none")
    assert "<tools>" not in fake.asks[-1].json["query_str"]
    sample = 'You could send:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\nto ask for it.'
    fake.enqueue(Reply(answer=sample))
    response = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, tools=[WEATHER])
    assert response.choices[0].finish_reason == "stop" and response.choices[0].message.tool_calls is None
    assert response.choices[0].message.content == sample


def test_an_unknown_named_tool_is_a_400(sdk) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="perplexity-auto",
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert caught.value.body["param"] == "tool_choice"


PERSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
    },
}


def test_json_schema_output_is_extracted_and_validated(fake, sdk) -> None:
    fake.enqueue(Reply(answer='Here you go:\n```json\n{"name": "Ada [1]", "age": 36}\n```'))
    response = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, response_format=PERSON)
    assert json.loads(response.choices[0].message.content) == {"name": "Ada", "age": 36}
    assert response.citations  # the sources stay outside the JSON
    assert "<output_schema>" in fake.asks[-1].json["query_str"]


def test_json_output_repair_then_failure(fake, sdk) -> None:
    fake.enqueue(Reply(answer='{"name": "Ada"}'), Reply(answer='{"name": "Ada", "age": 36}'))
    response = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, response_format=PERSON)
    assert json.loads(response.choices[0].message.content) == {"name": "Ada", "age": 36}
    assert fake.asks[-1].json["query_str"].startswith("Your previous answer was not valid JSON output")
    fake.enqueue(Reply(answer="Ada, 36."), Reply(answer="Ada is 36 years old."))
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="perplexity-auto", messages=ASK, response_format={"type": "json_object"})
    assert caught.value.status_code == 502 and caught.value.body["code"] == "invalid_json_output"


# ---- streams ------------------------------------------------------------------------------------


def stream_chunks(server, body: dict) -> list[dict]:
    """The chunks of a streamed chat (each checked against the spec), without [DONE]; asserts it ended so."""
    _, data = raw_events(server, {**body, "stream": True})
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    return chunks


def streamed_content(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_a_streamed_tool_call_is_held_and_sent_as_tool_call_deltas(fake, live_server) -> None:
    note = "x" * 300  # long arguments arrive in several fragments, as a model streams them
    fake.enqueue(Reply(answer=call("get_weather", city="Paris", note=note), chunk_size=7))
    loose = {**WEATHER, "function": {**WEATHER["function"], "parameters": {"type": "object"}}}
    chunks = stream_chunks(live_server, {"model": "perplexity-auto", "messages": ASK, "tools": [loose]})
    assert "tool_call" not in streamed_content(chunks)  # nothing of the protocol leaks as text
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    fragments = [t for d in deltas for t in d.get("tool_calls") or ()]
    assert len(fragments) > 2 and all(t["index"] == 0 for t in fragments)
    assert fragments[0]["id"].startswith("call_") and fragments[0]["function"]["name"] == "get_weather"
    arguments = "".join(t["function"].get("arguments") or "" for t in fragments)
    assert json.loads(arguments) == {"city": "Paris", "note": note}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_sdk_stream_helper_reassembles_parallel_calls(fake, sdk) -> None:
    fake.enqueue(Reply(answer=call("get_weather", city="Paris") + "\n" + call("get_time", city="Rome"), chunk_size=5))
    with sdk.chat.completions.stream(model="perplexity-auto", messages=ASK, tools=[WEATHER, TIME]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Rome"})]
    assert len({c.id for c in choice.message.tool_calls}) == 2


def test_long_prose_streams_as_text_at_once_and_short_text_after_the_hold(fake, live_server) -> None:
    prose = " ".join(["Paris is sunny today."] * 30)
    fake.enqueue(Reply(answer=prose, chunk_size=20, frame_delay=0.01))
    chunks = stream_chunks(live_server, {"model": "perplexity-auto", "messages": ASK, "tools": [WEATHER]})
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert streamed_content(chunks) == prose and len(content_chunks) > 5  # released early, then streamed as is
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    fake.enqueue(Reply(answer="Sunny.", chunk_size=2))
    chunks = stream_chunks(live_server, {"model": "perplexity-auto", "messages": ASK, "tools": [WEATHER]})
    assert streamed_content(chunks) == "Sunny." and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_streamed_required_call_is_repaired_on_the_same_thread(fake, live_server) -> None:
    fake.enqueue(Reply(answer="Probably sunny."), Reply(answer=call("get_weather", city="Paris")))
    body = {"model": "perplexity-auto", "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
    chunks = stream_chunks(live_server, body)
    assert streamed_content(chunks) == ""
    calls = [t for c in chunks if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["function"]["name"] == "get_weather"
    first, repair = fake.asks[-2:]
    assert repair.thread == first.thread and repair.json["params"]["query_source"] == "followup"


def test_a_streamed_failure_after_repair_is_one_error_event(fake, live_server) -> None:
    fake.enqueue(Reply(answer="No."), Reply(answer="Still no."))
    body = {"model": "perplexity-auto", "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
    _, data = raw_events(live_server, {**body, "stream": True})
    error = json.loads(data[-1])["error"]
    assert error["code"] == "tool_call_failed" and "Still no." in error["message"]
    chunks = [json.loads(d) for d in data[:-1]]
    assert "[DONE]" not in data and streamed_content(chunks) == ""


def test_streamed_json_output_is_the_extracted_json(fake, live_server, sdk) -> None:
    fake.enqueue(Reply(answer='```json\n{"name": "Ada [1]", "age": 36}\n```', chunk_size=4))
    chunks = stream_chunks(live_server, {"model": "perplexity-auto", "messages": ASK, "response_format": PERSON})
    assert json.loads(streamed_content(chunks)) == {"name": "Ada", "age": 36}
    assert chunks[-1]["citations"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    fake.enqueue(Reply(answer='{"name": "Ada", "age": 36}', chunk_size=4))
    with sdk.chat.completions.stream(model="perplexity-auto", messages=ASK, response_format=PERSON) as stream:
        for _ in stream:
            pass
        assert json.loads(stream.get_final_completion().choices[0].message.content)["age"] == 36


def test_a_custom_tool_call_on_chat(fake, sdk) -> None:
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"
    fake.enqueue(Reply(answer="<tool_call>" + json.dumps({"name": "apply_patch", "arguments": patch}) + "</tool_call>"))
    tool = {"type": "custom", "custom": {"name": "apply_patch", "description": "Edit files with a patch."}}
    raw = sdk.chat.completions.with_raw_response.create(model="perplexity-auto", messages=ASK, tools=[tool])
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    (tool_call,) = raw.parse().choices[0].message.tool_calls
    assert tool_call.type == "custom" and tool_call.custom.name == "apply_patch" and tool_call.custom.input == patch
