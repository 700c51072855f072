"""The chat request schema takes what real clients send and rejects bad values with OpenAI-style params."""

import pytest
from marshmallow import ValidationError

from schemas import ChatCompletionRequestSchema, ErrorResponseSchema, ErrorSchema, first_error
from tests.openapi import validate

USER = {"role": "user", "content": "Why is the sky blue?"}


def load(**fields):
    return ChatCompletionRequestSchema().load({"model": "sonar", "messages": [USER], **fields})


def error_of(body):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequestSchema().load(body)
    return first_error(info.value)


def test_minimal_request_gets_defaults():
    data = load()
    assert data == {"model": "sonar", "messages": [USER], "stream": False, "n": 1, "citation_mode": None}


def test_unknown_fields_are_kept_at_every_level():
    data = load(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
        ],
        stream_options={"include_usage": True, "future_option": 1},
        search_after_date_filter="1/1/2025",
        extra_thing={"nested": [1, 2]},
    )
    assert data["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert data["stream_options"] == {"include_usage": True, "future_option": 1}
    assert data["search_after_date_filter"] == "1/1/2025"
    assert data["extra_thing"] == {"nested": [1, 2]}


def test_a_full_openai_sdk_request_loads():
    data = load(
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
        n=1,
        stop=["\n\n", "END"],
        max_tokens=100,
        max_completion_tokens=200,
        temperature=0.7,
        top_p=1,
        presence_penalty=-2,
        frequency_penalty=2.0,
        logit_bias={"50256": -100},
        seed=42,
        user="u-1",
        safety_identifier="hash",
        metadata={"team": "search"},
        store=False,
        reasoning_effort="xhigh",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True},
        },
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        web_search_options={
            "search_context_size": "high",
            "user_location": {"type": "approximate", "approximate": {"country": "GB", "city": "London"}},
        },
    )
    assert data["temperature"] == 0.7 and data["stop"] == ["\n\n", "END"] and data["stream"] is True


def test_perplexity_and_server_options_load():
    data = load(
        search_mode="academic",
        search_recency_filter="hour",
        search_domain_filter=["arxiv.org", "-reddit.com"],
        search_language_filter=["en", "de"],
        return_related_questions=True,
        return_images=False,
        disable_search=False,
        web_search_options={
            "search_type": "pro",
            "user_location": {"latitude": 51.5, "longitude": -0.12, "country": "GB"},
        },
        response_format={"type": "regex", "regex": {"regex": "[0-9]+"}},
        citation_mode="markdown",
        conversation_id="conv-1",
    )
    assert data["search_mode"] == "academic" and data["citation_mode"] == "markdown"
    assert data["web_search_options"]["user_location"]["latitude"] == 51.5


def test_every_role_and_content_shape_loads():
    messages = [
        {"role": "developer", "content": "Be terse."},
        {"role": "system", "content": [{"type": "text", "text": "Cite sources."}]},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": "https://example.com/a.png"},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
                {"type": "file", "file": {"file_id": "file-123"}},
                {"type": "pdf_url", "pdf_url": {"url": "https://example.com/a.pdf"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            "reasoning_content": "I should call f.",
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        {"role": "function", "name": "f", "content": "42"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "g", "arguments": {}}}],
        },
    ]
    data = load(messages=messages)
    assert data["messages"][2]["content"][2]["image_url"] == {"url": "https://example.com/a.png"}
    assert data["messages"][3]["reasoning_content"] == "I should call f."


@pytest.mark.parametrize("choice", ["none", "auto", "required"])
def test_string_tool_choices_load(choice):
    assert load(tool_choice=choice)["tool_choice"] == choice


def test_object_tool_choices_load():
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]}}
    assert load(tool_choice=allowed)["tool_choice"] == allowed
    assert load(tool_choice={"type": "custom", "custom": {"name": "x"}})["tool_choice"]["custom"] == {"name": "x"}


def test_nulls_are_accepted_for_optional_fields():
    data = load(temperature=None, stop=None, tools=None, tool_choice=None, stream_options=None, n=None)
    assert data["temperature"] is None and data["n"] is None


def test_n_above_one_points_at_n_and_says_only_one_is_supported():
    param, message = error_of({"model": "sonar", "messages": [USER], "n": 2})
    assert param == "n"
    assert "only n=1 is supported" in message


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        # `model` may be null or absent: the server's DEFAULT_MODEL applies.
        ({"messages": None}, "messages", "Invalid value for 'messages': must not be null."),
        ({"messages": []}, "messages", "Invalid value for 'messages': must contain at least one message."),
        ({"messages": "hi"}, "messages", "Invalid value for 'messages': must be an array."),
        ({"temperature": 2.5}, "temperature", "Invalid value for 'temperature': must be between 0 and 2."),
        ({"temperature": "hot"}, "temperature", "Invalid value for 'temperature': must be a number."),
        ({"top_p": 1.5}, "top_p", "Invalid value for 'top_p': must be between 0 and 1."),
        (
            {"presence_penalty": -3},
            "presence_penalty",
            "Invalid value for 'presence_penalty': must be between -2 and 2.",
        ),
        (
            {"frequency_penalty": 9},
            "frequency_penalty",
            "Invalid value for 'frequency_penalty': must be between -2 and 2.",
        ),
        ({"max_tokens": 0}, "max_tokens", "Invalid value for 'max_tokens': must be at least 1."),
        (
            {"max_completion_tokens": 1.5},
            "max_completion_tokens",
            "Invalid value for 'max_completion_tokens': must be an integer.",
        ),
        ({"n": 0}, "n", "Invalid value for 'n': must be at least 1."),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "Invalid value for 'stop': must have at most 4 items."),
        ({"stop": ["a", 3]}, "stop[1]", "Invalid value for 'stop[1]': must be a string."),
        ({"stop": 3}, "stop", "Invalid value for 'stop': must be a string or an array of strings."),
        ({"stream": "maybe"}, "stream", "Invalid value for 'stream': must be a boolean."),
        ({"stream_options": "yes"}, "stream_options", "Invalid value for 'stream_options': must be an object."),
        (
            {"reasoning_effort": "extreme"},
            "reasoning_effort",
            "Invalid value for 'reasoning_effort': must be one of: none, minimal, low, medium, high, xhigh, max.",
        ),
        ({"metadata": {"k": 1}}, "metadata", "Invalid value for 'metadata': keys and values must be strings."),
        (
            {"metadata": {str(i): "v" for i in range(17)}},
            "metadata",
            "Invalid value for 'metadata': must have at most 16 key-value pairs.",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type", None),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "Missing required parameter: 'response_format.json_schema'.",
        ),
        (
            {"tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
            "Missing required parameter: 'tools[0].function.name'.",
        ),
        ({"tools": [{"type": "function"}]}, "tools[0].function", None),
        ({"tool_choice": "sometimes"}, "tool_choice", None),
        ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name", None),
        ({"web_search_options": {"search_context_size": "huge"}}, "web_search_options.search_context_size", None),
        ({"web_search_options": {"search_type": "deep"}}, "web_search_options.search_type", None),
        (
            {"web_search_options": {"user_location": {"approximate": {"city": 5}}}},
            "web_search_options.user_location.approximate.city",
            None,
        ),
        (
            {"web_search_options": {"user_location": {"latitude": 100}}},
            "web_search_options.user_location.latitude",
            None,
        ),
        (
            {"search_mode": "news"},
            "search_mode",
            "Invalid value for 'search_mode': must be one of: web, academic, sec, social.",
        ),
        ({"search_recency_filter": "decade"}, "search_recency_filter", None),
        ({"search_domain_filter": "arxiv.org"}, "search_domain_filter", None),
        ({"search_domain_filter": ["a.org", None]}, "search_domain_filter[1]", None),
        ({"return_images": "lots"}, "return_images", None),
        (
            {"citation_mode": "endnotes"},
            "citation_mode",
            "Invalid value for 'citation_mode': must be one of: default, markdown, clean, footnotes.",
        ),
        ({"conversation_id": 7}, "conversation_id", "Invalid value for 'conversation_id': must be a string."),
    ],
)
def test_bad_values_name_the_offending_param(fields, param, message):
    got_param, got_message = error_of({"model": "sonar", "messages": [USER], **fields})
    assert got_param == param
    if message is not None:
        assert got_message == message
    else:
        assert got_message.startswith((f"Invalid value for '{param}': ", f"Missing required parameter: '{param}'."))


@pytest.mark.parametrize(
    ("messages", "param", "message"),
    [
        ([USER, {"role": "robot", "content": "x"}], "messages[1].role", None),
        ([USER, {"content": "x"}], "messages[1].role", "Missing required parameter: 'messages[1].role'."),
        (
            [USER, {"role": "user", "content": 5}],
            "messages[1].content",
            "Invalid value for 'messages[1].content': must be a string or an array of content parts.",
        ),
        ([{"role": "user"}], "messages[0].content", "Missing required parameter: 'messages[0].content'."),
        (
            [{"role": "system", "content": None}],
            "messages[0].content",
            "Invalid value for 'messages[0].content': must not be null for role 'system'.",
        ),
        (
            [{"role": "tool", "content": "42"}],
            "messages[0].tool_call_id",
            "Missing required parameter: 'messages[0].tool_call_id'.",
        ),
        ([USER, "hello"], "messages[1]", "Invalid value for 'messages[1]': must be an object."),
        ([USER, None], "messages[1]", "Invalid value for 'messages[1]': must not be null."),
        (
            [{"role": "user", "content": [{"type": "text"}]}],
            "messages[0].content[0].text",
            "Missing required parameter: 'messages[0].content[0].text'.",
        ),
        ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0].type", None),
        ([{"role": "user", "content": [{"type": ["text"], "text": "x"}]}], "messages[0].content[0].type", None),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}],
            "messages[0].content[1].type",
            None,
        ),
        (
            [{"role": "user", "content": ["plain"]}],
            "messages[0].content[0]",
            "Invalid value for 'messages[0].content[0]': must be an object.",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}],
            "messages[0].content[0].image_url.url",
            None,
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}]}],
            "messages[0].content[0].image_url.detail",
            None,
        ),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0].image_url", None),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            "messages[0].content[0].input_audio.data",
            None,
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf"}}]}],
            "messages[0].content[0].file",
            "Invalid value for 'messages[0].content[0].file': either 'file_data' or 'file_id' is required.",
        ),
        (
            [{"role": "system", "content": [{"type": "image_url", "image_url": "u"}]}],
            "messages[0].content[0].type",
            "Invalid value for 'messages[0].content[0].type': a system message may only contain parts of type: text.",
        ),
        ([{"role": "assistant", "content": [{"type": "refusal"}]}], "messages[0].content[0].refusal", None),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}],
            "messages[0].tool_calls[0].function.name",
            None,
        ),
    ],
)
def test_message_errors_name_the_nested_path(messages, param, message):
    got_param, got_message = error_of({"model": "sonar", "messages": messages})
    assert got_param == param
    if message is not None:
        assert got_message == message


def test_first_error_reads_hand_built_nested_errors():
    nested = ValidationError({"messages": {1: {"content": {0: {"_schema": ["Invalid input type."]}}}}})
    assert first_error(nested) == (
        "messages[1].content[0]",
        "Invalid value for 'messages[1].content[0]': invalid input type.",
    )


def test_first_error_keeps_acronyms_and_handles_the_whole_body():
    assert first_error(ValidationError("URL scheme not allowed.", "url")) == (
        "url",
        "Invalid value for 'url': URL scheme not allowed.",
    )
    assert first_error(ValidationError(["Invalid input type."])) == (None, "Invalid request body: invalid input type.")


def test_a_non_object_body_has_no_param():
    assert error_of(["not", "an", "object"]) == (None, "Invalid request body: must be an object.")


def test_error_body_dumps_all_four_keys_and_matches_the_spec():
    body = ErrorResponseSchema().dump({"error": {"message": "Unknown model.", "type": "invalid_request_error"}})
    assert body == {
        "error": {"message": "Unknown model.", "type": "invalid_request_error", "param": None, "code": None}
    }
    validate(body, "ErrorResponse")


def test_error_schema_requires_message_on_load():
    with pytest.raises(ValidationError) as info:
        ErrorSchema().load({"type": "server_error", "param": None, "code": None})
    assert first_error(info.value) == ("message", "Missing required parameter: 'message'.")
