"""The prompted tool-calling protocol (api.core.tools): the section sent upstream and the strict answer reader."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from api.core.agent import AnswerGate
from api.core.errors import APIError
from api.core.messages import read_messages
from api.core.tools import (
    MAX_PROSE_AROUND_CALLS,
    AgentSpec,
    OutputFormat,
    Tool,
    call_text,
    chat_agent_spec,
    custom_tool,
    read_json_output,
    read_tool_calls,
    responses_agent_spec,
)
from api.core.turn import Piece

WEATHER = Tool(
    "get_weather",
    "The weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = Tool("get_time", "The time in a zone.", {"type": "object", "properties": {"zone": {"type": "string"}}})
SPEC = AgentSpec((WEATHER, TIME))


def calls(text: str, spec: AgentSpec = SPEC) -> list[tuple[str, dict]]:
    reading = read_tool_calls(text, spec)
    assert reading.problem is None, reading.problem
    return [(call.name, json.loads(call.arguments)) for call in reading.calls]


# ---- accepted forms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '  <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}',  # the closing tag cut off
        '<tool_call>```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```</tool_call>',
        '<tool_call>{"name": "get_weather", "parameters": {"city": "Paris"}}</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>',
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": {"city": "Paris"}} [1]',  # a citation marker after the JSON
        '{"name": "get_weather", "parameters": "{\\"city\\": \\"Paris\\"}"}',
    ],
)
def test_each_call_form_is_read(text: str) -> None:
    assert calls(text) == [("get_weather", {"city": "Paris"})]


def test_several_calls_and_their_ids() -> None:
    text = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>'
    )
    reading = read_tool_calls(text, SPEC)
    assert [(c.name, json.loads(c.arguments)) for c in reading.calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
    ]
    ids = [c.id for c in reading.calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert calls('[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]')
    serial = AgentSpec((WEATHER, TIME), parallel=False)
    assert calls(text, serial) == [("get_weather", {"city": "Paris"})]


def test_arguments_are_sent_as_compact_json() -> None:
    reading = read_tool_calls('<tool_call>{"name": "get_weather", "arguments": {"city":  "Paris"}}</tool_call>', SPEC)
    assert reading.calls[0].arguments == '{"city":"Paris"}'


# ---- refused: these stay text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Paris is sunny today [1].",
        '{"name": "lookup", "arguments": {"q": "x"}}',  # a tool we do not have, outside the canonical tags
        '{"city": "Paris", "temperature": 21}',  # JSON, but not a call
        'To call it you would send:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n'
        "and it returns the forecast.",  # a code sample in an explanation
        'Here is an example: {"name": "get_weather", "arguments": {"city": "Paris"}}',
        "x" * (MAX_PROSE_AROUND_CALLS + 1)
        + '\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '```python\nprint({"name": "get_weather", "arguments": {}})\n```',
        "",
    ],
)
def test_false_positives_stay_text(text: str) -> None:
    assert read_tool_calls(text, SPEC).is_text


def test_no_tools_or_choice_none_reads_nothing() -> None:
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert read_tool_calls(call, AgentSpec()).is_text
    assert read_tool_calls(call, AgentSpec((WEATHER,), choice="none")).is_text
    assert AgentSpec((WEATHER,), choice="none").section() == ""


# ---- attempted but invalid: a problem for the repair turn -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', "'city' is a required property"),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": 3}}</tool_call>', "(at city)"),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "P", "x": 1}}</tool_call>', "not allowed"),
        ('<tool_call>{"name": "lookup", "arguments": {}}</tool_call>', 'no tool named "lookup"'),
        ("<tool_call>not json</tool_call>", "not a JSON object with a name"),
        ('<tool_call>{"name": "get_weather", "arguments": "{bad"}</tool_call>', "not valid JSON"),
        ('<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>', "not a JSON object"),
        ('{"name": "get_weather", "arguments": {"unit": "K", "city": "P"}}', "'K' is not one of"),
    ],
)
def test_invalid_attempts_name_their_problem(text: str, problem: str) -> None:
    reading = read_tool_calls(text, SPEC)
    assert not reading.calls and problem in (reading.problem or "")


def test_named_choice_keeps_only_that_tool() -> None:
    spec = AgentSpec((WEATHER, TIME), choice="named", named="get_time")
    both = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
        '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'
    )
    assert calls(both, spec) == [("get_time", {"zone": "UTC"})]
    other = read_tool_calls('<tool_call>{"name": "get_weather", "arguments": {"city": "P"}}</tool_call>', spec)
    assert other.problem == 'the tool "get_time" was not called'


# ---- the section sent upstream ----------------------------------------------------------------------------


def test_the_tool_section_lists_tools_and_states_the_rule() -> None:
    section = AgentSpec((WEATHER, TIME)).section()
    listed = json.loads(section.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0])
    assert listed == [WEATHER.listing(), TIME.listing()]
    assert "<tool_call>" in section and "otherwise answer normally" in section
    assert "You must call at least one tool now" in AgentSpec((WEATHER,), choice="required").section()
    named = AgentSpec((WEATHER,), choice="named", named="get_weather").section()
    assert 'You must call the tool "get_weather" now' in named
    assert "at most one tool" in AgentSpec((WEATHER,), parallel=False).section()
    assert "get_weather" in AgentSpec((WEATHER,), choice="required").tool_repair("no call")


def test_the_output_section() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    section = AgentSpec(output=OutputFormat("json_schema", schema)).section()
    assert json.loads(section.split("<output_schema>\n", 1)[1].split("\n</output_schema>", 1)[0]) == schema
    assert "Answer with only a JSON object." in AgentSpec(output=OutputFormat("json_object")).section()


# ---- structured output ------------------------------------------------------------------------------------

PERSON = OutputFormat(
    "json_schema",
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name"]},
)


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "age": 36}',
        '```json\n{"name": "Ada", "age": 36}\n```',
        'Here it is:\n```json\n{"name": "Ada", "age": 36}\n```\nHope that helps.',
        'Sure! {"name": "Ada", "age": 36}',
        '{"name": "Ada", "age": 36} [1][2]',
        '{"name": "Ada [1]", "age": 36}',  # a marker inside a string is dropped too
    ],
)
def test_json_output_is_extracted(text: str) -> None:
    assert read_json_output(text, PERSON) == ('{"name":"Ada","age":36}', None)


@pytest.mark.parametrize(
    ("text", "fmt", "problem"),
    [
        ("Ada is 36.", PERSON, "no JSON value"),
        ('{"age": 36}', PERSON, "'name' is a required property"),
        ('{"name": "Ada", "age": "36"}', PERSON, "(at age)"),
        ("[1, 2]", OutputFormat("json_object"), "not an object"),
        ("{bad json", OutputFormat("json_object"), "no JSON value"),
    ],
)
def test_json_output_problems(text: str, fmt: OutputFormat, problem: str) -> None:
    value, found = read_json_output(text, fmt)
    assert value is None and problem in (found or "")


# ---- request bodies and history ---------------------------------------------------------------------------


def test_chat_and_responses_bodies_give_the_same_spec() -> None:
    chat = chat_agent_spec(
        {
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER.parameters}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
        }
    )
    responses = responses_agent_spec(
        {
            "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER.parameters}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
        }
    )
    assert chat == responses
    assert chat is not None and chat.choice == "named" and not chat.parallel
    assert chat_agent_spec({"messages": []}) is None
    assert chat_agent_spec({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}) is None
    legacy = chat_agent_spec({"functions": [{"name": "f"}], "function_call": {"name": "f"}})
    assert legacy is not None and legacy.named == "f"
    fmt = chat_agent_spec({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {}}}})
    assert fmt is not None and fmt.output == OutputFormat("json_schema", {}, "p")
    text_format = responses_agent_spec({"text": {"format": {"type": "json_schema", "name": "p", "schema": {}}}})
    assert text_format is not None and text_format.output == fmt.output


def test_a_named_choice_of_an_unknown_tool_is_a_400() -> None:
    with pytest.raises(APIError) as caught:
        chat_agent_spec({"tools": [], "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert caught.value.status == 400 and caught.value.param == "tool_choice"


def test_history_shows_calls_and_results_in_the_protocol_form() -> None:
    transcript = read_messages(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
        ]
    )
    assert transcript.turns[1] == ("assistant", call_text("get_weather", '{"city":"Paris"}'))
    assert transcript.turns[1][1] == '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'
    assert transcript.turns[2] == (
        "tool",
        '<tool_response name="get_weather" call_id="call_1">21 C, sunny</tool_response>',
    )


def test_reasoning_echoed_back_in_an_assistant_turn_is_dropped() -> None:
    """Clients wrap earlier reasoning in <think> inside the turn; the turn must still match the remembered answer."""
    echoed = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nSearching the web\n</think>\n\nHello [1]."},
        {"role": "user", "content": "More?"},
    ]
    assert read_messages(echoed).turns[1] == ("assistant", "Hello [1].")


# ---- the stream gate --------------------------------------------------------------------------------------


def gate_after(spec: AgentSpec | None, *texts: str) -> tuple[AnswerGate, str]:
    """Feed `texts` as content one by one; the gate and the content it let out."""
    gate, turn, sent = AnswerGate(spec), SimpleNamespace(content="", answer=""), []
    for text in texts:
        turn.content += text
        turn.answer = turn.content  # no footnotes here: the answer is the whole content
        sent += [piece.text for piece in gate.feed(turn, [Piece("content", text)]) if piece.kind == "content"]
    return gate, "".join(sent)


@pytest.mark.parametrize(
    "texts",
    [
        ("<tool", '_call>{"name": "get_weather"'),
        ("<tool_call>", "x" * 400),  # a call tag: held whatever follows
        ("{", '"name": "get_weather", "arguments": {"city": "' + "x" * 300),
        ("```", "json\n{"),
        ("```\n", "{" + "x" * 300),
        ("Let me check the weather first.\n", "<tool_call>"),
        ("Short remark ",),  # still short enough to sit beside a call
    ],
)
def test_the_gate_holds_what_may_be_a_call(texts: tuple[str, ...]) -> None:
    gate, sent = gate_after(SPEC, *texts)
    assert gate.held and sent == ""


def test_the_gate_releases_long_prose_with_everything_held_so_far() -> None:
    head, tail = "Paris is sunny. " * 10, "x" * (MAX_PROSE_AROUND_CALLS - 150)
    gate, sent = gate_after(SPEC, head, tail, " more")
    assert not gate.held and sent == head + tail + " more"
    gate, sent = gate_after(SPEC, "```python\n", "print('hi')\n" * 30)  # code, not a JSON fence
    assert not gate.held and sent.startswith("```python")
    gate, sent = gate_after(SPEC, "<t", "able><tr><td>", "x" * 300)  # began like the call tag, then was not
    assert not gate.held and sent.startswith("<table>")


def test_the_gate_holds_everything_for_output_formats_and_required_calls() -> None:
    long_prose = "Paris is sunny. " * 40
    for spec in (AgentSpec(output=OutputFormat("json_object")), AgentSpec((WEATHER,), choice="required")):
        assert gate_after(spec, long_prose)[0].held
    gate, sent = gate_after(None, "<tool_call>")  # no agent: nothing is held
    assert not gate.held and sent == "<tool_call>"
    assert not gate_after(AgentSpec((WEATHER,), choice="none"), "{")[0].held


# ---- custom (freeform) tools ------------------------------------------------------------------------------

PATCH_TOOL = custom_tool(
    "apply_patch",
    "Apply a patch.",
    {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" /(.|\\n)*/ "*** End Patch"'},
)
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hello\n*** End Patch"


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>" + json.dumps({"name": "apply_patch", "arguments": {"input": PATCH}}) + "</tool_call>",
        "<tool_call>" + json.dumps({"name": "apply_patch", "arguments": PATCH}) + "</tool_call>",  # the text itself
        "<tool_call>" + json.dumps({"name": "apply_patch", "input": PATCH}) + "</tool_call>",  # input beside the name
    ],
)
def test_a_custom_tool_call_carries_its_text_input(text: str) -> None:
    reading = read_tool_calls(text, AgentSpec((PATCH_TOOL, WEATHER)))
    (call,) = reading.calls
    assert call.kind == "custom" and call.name == "apply_patch" and call.input == PATCH
    listing = AgentSpec((PATCH_TOOL,)).section()
    assert "lark grammar" in listing and "*** Begin Patch" in listing


def test_custom_tools_from_chat_and_responses_bodies_and_history() -> None:
    chat = chat_agent_spec({"tools": [{"type": "custom", "custom": {"name": "apply_patch", "description": "d"}}]})
    flat = responses_agent_spec({"tools": [{"type": "custom", "name": "apply_patch", "description": "d"}]})
    assert chat == flat and chat.tools[0].kind == "custom"
    named = responses_agent_spec(
        {"tools": [{"type": "custom", "name": "apply_patch"}], "tool_choice": {"type": "custom", "name": "apply_patch"}}
    )
    assert named.choice == "named" and named.named == "apply_patch"
    call = {"id": "call_9", "type": "custom", "custom": {"name": "apply_patch", "input": PATCH}}
    transcript = read_messages(
        [
            {"role": "user", "content": "Add a.txt"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_9", "content": "Done"},
        ]
    )
    assert transcript.turns[1][1] == call_text("apply_patch", json.dumps({"input": PATCH}))
    assert transcript.turns[2][1].startswith('<tool_response name="apply_patch" call_id="call_9">')


def test_a_schema_no_validator_can_use_is_a_400() -> None:
    broken = {"type": "function", "function": {"name": "f", "parameters": {"type": "str"}}}
    with pytest.raises(APIError) as caught:
        chat_agent_spec({"tools": [broken]})
    assert caught.value.status == 400 and caught.value.param == "tools" and "'f'" in caught.value.message
    with pytest.raises(APIError) as caught:
        responses_agent_spec({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"required": 3}}}})
    assert caught.value.param == "text.format"


def test_a_whole_file_as_an_argument_is_read_intact() -> None:
    """An agent writing a file sends it as an argument (2 MB here); the block reader is plain string search."""
    content = "x = 1\n" * 350_000
    text = "<tool_call>" + json.dumps({"name": "get_time", "arguments": {"zone": content}}) + "</tool_call>"
    assert calls(text) == [("get_time", {"zone": content})]
