"""Function tools, web search and structured output on POST /v1/responses, through the openai SDK against the fake."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from perplexity.testing import Reply

from .openapi import validate
from .test_agents_chat import TIME as CHAT_TIME
from .test_agents_chat import WEATHER as CHAT_WEATHER
from .test_agents_chat import call
from .test_responses_api import collapse, stream_events

# The chat tests' tools in the Responses API's flat form.
WEATHER = {"type": "function", **CHAT_WEATHER["function"], "strict": True}
TIME = {"type": "function", **CHAT_TIME["function"]}
QUESTION = "What is the weather in Paris?"


def test_a_function_call_is_a_function_call_item(fake, sdk) -> None:
    fake.enqueue(Reply(answer=call("get_weather", city="Paris")))
    raw = sdk.responses.with_raw_response.create(model="perplexity-auto", input=QUESTION, tools=[WEATHER])
    body = raw.http_response.json()
    validate(body, "Response")
    response = raw.parse()
    (item,) = [item for item in response.output if item.type != "reasoning"]
    assert item.type == "function_call" and item.status == "completed"
    assert item.name == "get_weather" and json.loads(item.arguments) == {"city": "Paris"}
    assert item.call_id.startswith("call_") and item.id.startswith("fc_")
    assert body["tools"][0]["name"] == "get_weather" and body["tools"][0]["strict"] is True
    assert "<tools>" in fake.asks[-1].json["query_str"]


def test_a_streamed_function_call_sends_its_item_and_argument_events(fake, live_server) -> None:
    note = "y" * 300
    fake.enqueue(Reply(answer=call("get_weather", city="Paris", note=note), chunk_size=9))
    loose = {**WEATHER, "parameters": {"type": "object"}, "strict": False}
    events = stream_events(live_server, {"input": QUESTION, "tools": [loose]})
    types = collapse([e["type"] for e in events])
    assert "response.output_text.delta" not in types
    start = types.index("response.function_call_arguments.delta")
    assert types[start - 1 : start + 3] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    added = next(
        e for e in events if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call"
    )
    assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert len(deltas) > 1 and "".join(deltas) == done["arguments"] and done["name"] == "get_weather"
    assert json.loads(done["arguments"]) == {"city": "Paris", "note": note}
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert [i["type"] for i in final["output"] if i["type"] != "reasoning"] == ["function_call"]


def test_sdk_stream_helper_and_a_loop_chained_by_previous_response_id(fake, sdk) -> None:
    fake.enqueue(
        Reply(answer=call("get_weather", city="Paris")),
        Reply(answer=call("get_time", city="Paris")),
        Reply(answer="Sunny and 21 C; it is noon in Paris."),
    )
    results = {"get_weather": "21 C, sunny", "get_time": "12:00"}
    with sdk.responses.stream(model="perplexity-auto", input=QUESTION, tools=[WEATHER, TIME]) as stream:
        response = stream.get_final_response()
    for _ in range(2):
        calls = [item for item in response.output if item.type == "function_call"]
        assert len(calls) == 1
        outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": results[c.name]} for c in calls]
        response = sdk.responses.create(
            model="perplexity-auto", previous_response_id=response.id, input=outputs, tools=[WEATHER, TIME]
        )
    assert response.output_text == "Sunny and 21 C; it is noon in Paris."
    listed = sdk.responses.input_items.with_raw_response.list(response.id).http_response.json()
    validate(listed, "ResponseItemList")
    assert [item["type"] for item in listed["data"]] == ["function_call_output"]
    asks = fake.asks[-3:]
    assert len({ask.thread for ask in asks}) == 1
    assert [ask.json["params"].get("query_source") for ask in asks[1:]] == ["followup", "followup"]
    assert '<tool_response name="get_weather"' in asks[1].json["query_str"] and "12:00" in asks[2].json["query_str"]


def test_a_stateless_loop_with_parallel_calls_resent_as_input_is_one_thread(fake, sdk) -> None:
    """Codex's way: store off, the whole history (reasoning, calls, outputs) resent as input every turn."""
    fake.enqueue(
        Reply(answer=call("get_weather", city="Paris") + "\n" + call("get_time", city="Paris")),
        Reply(answer="Sunny; noon."),
    )
    history: list = [{"role": "user", "content": QUESTION}]
    first = sdk.responses.create(model="perplexity-auto", input=history, tools=[WEATHER, TIME], store=False)
    history += [item.model_dump(mode="json", exclude_none=True) for item in first.output]
    for item in first.output:
        if item.type == "function_call":
            history.append({"type": "function_call_output", "call_id": item.call_id, "output": f"{item.name} ok"})
    second = sdk.responses.create(model="perplexity-auto", input=history, tools=[WEATHER, TIME], store=False)
    assert second.output_text == "Sunny; noon."
    first_ask, second_ask = fake.asks[-2:]
    assert second_ask.thread == first_ask.thread and second_ask.json["params"]["query_source"] == "followup"
    assert "get_weather ok" in second_ask.json["query_str"] and "get_time ok" in second_ask.json["query_str"]


def test_web_search_tool_adds_a_web_search_call_item(fake, sdk, live_server) -> None:
    answer = "Paris is sunny today [1]."
    fake.enqueue(Reply(answer=answer))
    raw = sdk.responses.with_raw_response.create(
        model="perplexity-auto", input=QUESTION, tools=[{"type": "web_search"}]
    )
    body = raw.http_response.json()
    validate(body, "Response")
    kinds = [item["type"] for item in body["output"]]
    assert kinds[-2:] == ["web_search_call", "message"]
    search = body["output"][-2]
    assert search["status"] == "completed" and search["action"]["query"] == QUESTION
    assert search["action"]["sources"][0]["url"] == body["citations"][0]
    annotations = body["output"][-1]["content"][0]["annotations"]
    assert annotations and annotations[0]["type"] == "url_citation" and annotations[0]["url"] == body["citations"][0]
    assert "<tools>" not in fake.asks[-1].json["query_str"]  # a built-in tool needs no protocol section
    fake.enqueue(Reply(answer=answer))
    events = stream_events(live_server, {"input": QUESTION, "tools": [{"type": "web_search_preview"}]})
    types = [e["type"] for e in events]
    searching = types.index("response.web_search_call.in_progress")
    assert types[searching - 1 : searching + 4] == [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_item.done",
    ]
    assert searching < types.index("response.output_text.delta")
    final = events[-1]["response"]["output"]
    assert [i["type"] for i in final if i["type"] != "reasoning"] == ["web_search_call", "message"]


class Person(BaseModel):
    name: str
    age: int


def test_text_format_json_schema_through_responses_parse(fake, sdk, live_server) -> None:
    fake.enqueue(Reply(answer='Sure:\n```json\n{"name": "Ada [1]", "age": 36}\n```'))
    parsed = sdk.responses.parse(model="perplexity-auto", input="Who was Ada Lovelace?", text_format=Person)
    assert parsed.output_parsed == Person(name="Ada", age=36)
    assert "<output_schema>" in fake.asks[-1].json["query_str"]
    fake.enqueue(Reply(answer='{"name": "Ada"}'), Reply(answer='{"name": "Ada", "age": 36}'))
    fmt = {"type": "json_schema", "name": "person", "schema": Person.model_json_schema(), "strict": True}
    events = stream_events(live_server, {"input": "Who?", "text": {"format": fmt}})
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert json.loads(text) == {"name": "Ada", "age": 36}
    assert fake.asks[-1].json["query_str"].startswith("Your previous answer was not valid JSON output")
    fake.enqueue(Reply(answer="Ada."), Reply(answer="Ada, 36."))
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.responses.create(model="perplexity-auto", input="Who?", text={"format": {"type": "json_object"}})
    assert caught.value.status_code == 502 and caught.value.body["code"] == "invalid_json_output"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ],
)
def test_tool_requests_it_cannot_honour_are_400s(sdk, extra, param) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="perplexity-auto", input=QUESTION, **extra)
    assert caught.value.body["param"] == param


def test_named_and_allowed_tool_choices(fake, sdk) -> None:
    fake.enqueue(Reply(answer=call("get_time", city="Paris")))
    response = sdk.responses.create(
        model="perplexity-auto",
        input=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "name": "get_time"},
    )
    assert [i.name for i in response.output if i.type == "function_call"] == ["get_time"]
    assert 'You must call the tool "get_time" now' in fake.asks[-1].json["query_str"]
    fake.enqueue(Reply(answer=call("get_weather", city="Paris")))
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]}
    sdk.responses.create(model="perplexity-auto", input=QUESTION, tools=[WEATHER, TIME], tool_choice=choice)
    query = fake.asks[-1].json["query_str"]
    assert "You must call at least one tool now" in query and "get_time" not in query


SHELL = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command and returns its output.",
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}},
        "required": ["command"],
        "additionalProperties": False,
    },
    "strict": False,
}
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Use the apply_patch tool to edit files.",
    "format": {
        "type": "grammar",
        "syntax": "lark",
        "definition": 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch"',
    },
}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch"


def test_a_codex_style_session_with_a_freeform_apply_patch_tool(fake, live_server) -> None:
    """Codex streams, stores nothing and resends its whole history; apply_patch is a custom (freeform) tool."""
    patch_call = "<tool_call>" + json.dumps({"name": "apply_patch", "arguments": {"input": PATCH}}) + "</tool_call>"
    fake.enqueue(Reply(answer=patch_call, chunk_size=11), Reply(answer="Created hello.txt."))
    history: list = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Add hello.txt"}]}]
    body = {"instructions": "You are a coding agent.", "tools": [SHELL, APPLY_PATCH], "store": False}
    events = stream_events(live_server, {**body, "input": history})
    types = collapse([e["type"] for e in events])
    assert "response.custom_tool_call_input.delta" in types and "response.output_text.delta" not in types
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    call = next(item for item in done if item["type"] == "custom_tool_call")
    assert call["name"] == "apply_patch" and call["input"] == PATCH and call["call_id"].startswith("call_")
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta")
    assert streamed == PATCH
    history += done + [{"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "Success."}]
    events = stream_events(live_server, {**body, "input": history})
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Created hello.txt." and events[-1]["type"] == "response.completed"
    first, second = fake.asks[-2:]
    assert second.thread == first.thread and second.json["params"]["query_source"] == "followup"
    assert '<tool_response name="apply_patch"' in second.json["query_str"] and "Success." in second.json["query_str"]
