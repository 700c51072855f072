"""Tests of perplexity.testing.agents: answer-text helpers, the schema instance generator and ProtocolModel."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from perplexity.testing import (
    ProtocolModel,
    Reply,
    example_instance,
    false_positive_text,
    json_text,
    tool_call_text,
    tool_calls_text,
)
from perplexity.testing.content import default_answer
from perplexity.types import AskOptions

WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "Local time of a timezone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
}


def tools_prompt(tools: list[dict[str, Any]], rule: str = "", *extra: str) -> str:
    listing = json.dumps(tools)
    return (
        "\n".join(["What is the weather in Paris?", "You can call these tools:", "<tools>", listing, "</tools>"])
        + ("\n" + rule if rule else "")
        + "".join("\n" + e for e in extra)
    )


def response(name: str, result: str, call_id: str = "call_1") -> str:
    return f'<tool_response name="{name}" call_id="{call_id}">{result}</tool_response>'


def schema_section(schema: dict[str, Any]) -> str:
    intro = "Answer with only a JSON value that matches this JSON Schema:"
    return f"{intro}\n<output_schema>\n{json.dumps(schema)}\n</output_schema>"


# ---- text forms ---------------------------------------------------------------------------------


def test_tool_call_text_forms():
    args = {"city": "Paris"}
    canonical = tool_call_text("get_weather", args)
    assert canonical == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    fenced = tool_call_text("get_weather", args, form="fenced")
    assert fenced.startswith("```json\n") and fenced.endswith("\n```")
    assert json.loads(fenced[len("```json\n") : -len("\n```")]) == {"name": "get_weather", "arguments": args}
    assert json.loads(tool_call_text("get_weather", args, form="bare")) == {"name": "get_weather", "arguments": args}
    parameters = tool_call_text("get_weather", args, form="parameters")
    assert json.loads(parameters.removeprefix("<tool_call>").removesuffix("</tool_call>")) == {
        "name": "get_weather",
        "parameters": args,
    }
    stringy = json.loads(
        tool_call_text("get_weather", args, form="string_arguments")
        .removeprefix("<tool_call>")
        .removesuffix("</tool_call>")
    )
    assert isinstance(stringy["arguments"], str) and json.loads(stringy["arguments"]) == args
    with pytest.raises(ValueError, match="unknown call form"):
        tool_call_text("x", {}, form="xml")


def test_several_calls_false_positive_and_json_texts():
    text = tool_calls_text([("a", {"x": 1}), ("b", {})])
    assert text.splitlines() == [
        '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>',
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>',
    ]
    prose = false_positive_text("get_weather", {"city": "Paris"})
    assert "```json\n" in prose and "<tool_call>" not in prose
    assert not prose.rstrip().endswith("```")  # text follows the sample
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prose
    assert json_text({"a": [1]}) == '{"a": [1]}'
    assert json_text({"a": 1}, fenced=True) == '```json\n{"a": 1}\n```'


# ---- the schema instance generator ----------------------------------------------------------------

SCHEMAS = [
    WEATHER["parameters"],
    {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer", "minimum": 3},
            "ratio": {"type": "number"},
            "ok": {"type": "boolean"},
            "nothing": {"type": "null"},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 2},
            "kind": {"const": "fixed"},
            "size": {"type": "string", "default": "large"},
            "maybe": {"type": ["null", "integer"]},
        },
        "required": ["name", "count", "tags"],
        "additionalProperties": False,
    },
    {
        "$defs": {
            "Address": {
                "type": "object",
                "properties": {
                    "location": {"type": "string"},
                    "zip": {"anyOf": [{"type": "null"}, {"type": "string"}]},
                },
                "required": ["location", "zip"],
            },
            "Node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["value"],
            },
        },
        "type": "object",
        "properties": {
            "home": {"$ref": "#/$defs/Address"},
            "tree": {"$ref": "#/$defs/Node"},
            "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            "either": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        },
        "required": ["home", "tree", "note"],
    },
    {
        "definitions": {"Base": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
        "allOf": [{"$ref": "#/definitions/Base"}, {"properties": {"label": {"type": "string"}}, "required": ["label"]}],
    },
    {"type": "array", "items": {"type": "object", "properties": {"city": {"type": "string"}}}},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_example_instance_validates(schema):
    value = example_instance(schema)
    jsonschema.validate(value, schema)
    assert value == example_instance(schema)  # deterministic


def test_example_instance_values():
    assert example_instance(WEATHER["parameters"]) == {"city": "Paris", "unit": "celsius"}
    value = example_instance(SCHEMAS[1])
    assert value["name"] == "example" and value["count"] == 3 and value["ratio"] == 1.5 and value["ok"] is True
    assert value["tags"] == ["a", "a"] and value["kind"] == "fixed" and value["size"] == "large"
    assert value["nothing"] is None and value["maybe"] == 1
    nested = example_instance(SCHEMAS[2])
    assert nested["home"] == {"location": "Paris", "zip": "example"}
    assert nested["tree"] == {"value": 1, "children": []}  # the recursion stops, it is not expanded forever
    assert nested["note"] == "example" and nested["either"] == 1
    assert example_instance(SCHEMAS[3]) == {"id": 1, "label": "example"}


# ---- ProtocolModel without HTTP ---------------------------------------------------------------------


def test_protocol_model_decisions():
    model = ProtocolModel()
    both = tools_prompt([WEATHER, TIME])
    assert model.answer(both) == tool_call_text("get_weather", {"city": "Paris", "unit": "celsius"})
    assert model.answer(both + "\n" + response("get_weather", "18C")) == tool_call_text("get_time", {"tz": "example"})
    # Responses seen in earlier queries of the thread count too.
    assert model.answer(both, [both + "\n" + response("get_weather", "18C")]) == tool_call_text(
        "get_time", {"tz": "example"}
    )
    answered = both + "\n" + response("get_weather", "18C") + "\n" + response("get_time", "noon", "call_2")
    assert model.answer(answered) == "Done: 18C; noon"
    named = tools_prompt([WEATHER, TIME], 'You must call the tool "get_time" now: answer with <tool_call> blocks.')
    assert model.answer(named) == tool_call_text("get_time", {"tz": "example"})
    assert model.answer(named + "\n" + response("get_time", "noon")) == "Done: noon"
    parallel = ProtocolModel(parallel=True, form="bare").answer(both)
    assert [json.loads(line)["name"] for line in parallel.splitlines()] == ["get_weather", "get_time"]
    assert model.answer("plain question") is None
    assert json.loads(model.answer("Give me data.\nAnswer with only a JSON object.")) == {"answer": "Done: "}
    assert model(both, []) == Reply(answer=model.answer(both))


def test_protocol_model_first_answer_then_repair():
    model = ProtocolModel(first_answer="I would rather not call tools.")
    prompt = tools_prompt([WEATHER])
    assert model.answer(prompt) == "I would rather not call tools."
    repair = prompt + "\nYour previous answer did not contain a valid tool call: no call. Answer again."
    assert model.answer(repair) == tool_call_text("get_weather", {"city": "Paris", "unit": "celsius"})
    assert model.answer(prompt, [prompt]) == tool_call_text("get_weather", {"city": "Paris", "unit": "celsius"})


# ---- end to end over HTTP ---------------------------------------------------------------------------


def test_end_to_end_tool_loop(fake, px):
    fake.responder = ProtocolModel()
    prompt = tools_prompt([WEATHER, TIME], "You must call at least one tool now: answer with <tool_call> blocks only.")
    first = px.ask_complete(prompt)
    assert first.answer == tool_call_text("get_weather", {"city": "Paris", "unit": "celsius"})
    followup = tools_prompt([WEATHER, TIME]) + "\n" + response("get_weather", "18C and sunny")
    second = px.ask_complete(followup, AskOptions(follow_up=first.thread))
    assert second.answer == tool_call_text("get_time", {"tz": "example"})
    # Only the newest result in this query: the earlier one is found in the thread's earlier queries.
    latest = tools_prompt([WEATHER, TIME]) + "\n" + response("get_time", "noon", "call_2")
    third = px.ask_complete(latest, AskOptions(follow_up=second.thread))
    assert third.answer == "Done: 18C and sunny; noon"
    thread = fake.thread_of_entry(third.thread.backend_uuid)
    assert thread is not None and len(thread.queries) == 3 and thread.queries[0] == prompt


def test_end_to_end_named_choice_and_output_schema(fake, px):
    fake.responder = ProtocolModel()
    named = px.ask_complete(tools_prompt([WEATHER, TIME], 'You must call the tool "get_time" now.'))
    assert named.answer == tool_call_text("get_time", {"tz": "example"})
    schema = SCHEMAS[2]
    prompt = tools_prompt([TIME], "", response("get_time", "noon"), schema_section(schema))
    answer = px.ask_complete(prompt).answer
    jsonschema.validate(json.loads(answer), schema)


def test_end_to_end_script_wins_and_no_responder_means_default(fake, px):
    prompt = tools_prompt([WEATHER])
    assert px.ask_complete(prompt).answer == default_answer(prompt)
    fake.responder = ProtocolModel()
    fake.enqueue(Reply(answer="scripted"))
    assert px.ask_complete(tools_prompt([WEATHER])).answer == "scripted"
    assert px.ask_complete("plain question").answer == default_answer("plain question")  # responder gave None
    fake.reset()
    assert fake.responder is None
