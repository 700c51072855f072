"""Tool calling and structured output on POST /v1/chat/completions, through the openai SDK against the fake."""

from __future__ import annotations

import json

import openai
import pytest

from perplexity.testing import Reply

from .openapi import validate

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
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


@pytest.fixture
def sdk(live_server):
    with openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as client:
        yield client


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
