"""tests/openapi.validate passes spec-shaped bodies, names the path in broken ones; the fixture is current."""

import importlib.util
import json
from pathlib import Path

import pytest
from jsonschema import ValidationError

from tests.openapi import SUBSET_PATH, schema_names, validate

SPEC = Path("/work/shared/openai-openapi/openapi.yaml")
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "extract_openapi_subset.py"

MESSAGE = {"role": "assistant", "content": "Hello.", "refusal": None}
CHOICE = {"index": 0, "message": MESSAGE, "finish_reason": "stop", "logprobs": None}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "sonar",
    "choices": [CHOICE],
}
CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "sonar",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
}
USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
ERROR = {
    "error": {"message": "Unknown model.", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
}


def without(mapping, key):
    return {name: value for name, value in mapping.items() if name != key}


def rejects(instance, schema_name):
    with pytest.raises(ValidationError) as info:
        validate(instance, schema_name)
    return str(info.value)


# ---- chat completions ----------------------------------------------------------------------------


def test_a_minimal_chat_completion_passes():
    validate(COMPLETION, "CreateChatCompletionResponse")


def test_a_full_chat_completion_passes():
    annotation = {
        "type": "url_citation",
        "url_citation": {"start_index": 0, "end_index": 3, "url": "https://x", "title": "X"},
    }
    message = {**MESSAGE, "annotations": [annotation], "reasoning_content": "extra keys are allowed"}
    body = {**COMPLETION, "choices": [{**CHOICE, "message": message}], "usage": USAGE, "service_tier": "default"}
    validate({**body, "citations": ["https://x"], "search_results": []}, "CreateChatCompletionResponse")


@pytest.mark.parametrize(
    "chunk",
    [
        CHUNK,
        {**CHUNK, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None, "logprobs": None}]},
        {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
        {**CHUNK, "choices": [], "usage": USAGE},
        {
            **CHUNK,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}]
                    },
                    "finish_reason": None,
                }
            ],
        },
    ],
)
def test_stream_chunks_pass(chunk):
    validate(chunk, "CreateChatCompletionStreamResponse")


def test_a_completion_without_choices_fails():
    assert rejects(without(COMPLETION, "choices"), "CreateChatCompletionResponse") == (
        "CreateChatCompletionResponse at $: 'choices' is a required property"
    )


def test_a_wrong_object_fails():
    message = rejects({**COMPLETION, "object": "chat.completion.chunk"}, "CreateChatCompletionResponse")
    assert message.startswith("CreateChatCompletionResponse at $.object: 'chat.completion.chunk' is not one of")


def test_the_spec_requires_refusal_in_a_message():
    message = rejects(
        {**COMPLETION, "choices": [{**CHOICE, "message": without(MESSAGE, "refusal")}]}, "CreateChatCompletionResponse"
    )
    assert message == "CreateChatCompletionResponse at $.choices[0].message: 'refusal' is a required property"


def test_the_spec_requires_logprobs_in_a_non_stream_choice():
    message = rejects({**COMPLETION, "choices": [without(CHOICE, "logprobs")]}, "CreateChatCompletionResponse")
    assert message == "CreateChatCompletionResponse at $.choices[0]: 'logprobs' is a required property"


def test_the_spec_requires_finish_reason_in_every_chunk_choice():
    chunk = {**CHUNK, "choices": [{"index": 0, "delta": {"content": "x"}}]}
    assert rejects(chunk, "CreateChatCompletionStreamResponse").endswith("'finish_reason' is a required property")


def test_a_streamed_tool_call_needs_an_index():
    call = {"id": "call_1", "type": "function", "function": {"name": "f"}}
    chunk = {**CHUNK, "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}
    message = rejects(chunk, "CreateChatCompletionStreamResponse")
    assert (
        message
        == "CreateChatCompletionStreamResponse at $.choices[0].delta.tool_calls[0]: 'index' is a required property"
    )


def test_usage_needs_all_three_counts():
    assert "'total_tokens' is a required property" in rejects(without(USAGE, "total_tokens"), "CompletionUsage")


# ---- errors, models, legacy completions ----------------------------------------------------------


def test_an_error_body_passes():
    validate(ERROR, "ErrorResponse")
    validate({"error": {**ERROR["error"], "param": None, "code": None}}, "ErrorResponse")


def test_an_error_without_message_fails():
    assert rejects({"error": without(ERROR["error"], "message")}, "ErrorResponse") == (
        "ErrorResponse at $.error: 'message' is a required property"
    )


def test_an_error_without_param_fails():
    assert rejects({"error": without(ERROR["error"], "param")}, "ErrorResponse").endswith(
        "'param' is a required property"
    )


def test_models_pass_and_need_owned_by():
    model = {"id": "sonar", "object": "model", "created": 1700000000, "owned_by": "perplexity"}
    validate({"object": "list", "data": [model]}, "ListModelsResponse")
    validate({"id": "sonar", "object": "model", "deleted": False}, "DeleteModelResponse")
    assert rejects(without(model, "owned_by"), "Model") == "Model at $: 'owned_by' is a required property"


def test_a_legacy_completion_passes():
    choice = {"text": "Hi", "index": 0, "logprobs": None, "finish_reason": "stop"}
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "sonar", "choices": [choice]}
    validate(body, "CreateCompletionResponse")


# ---- Responses API -------------------------------------------------------------------------------

OUTPUT_TEXT = {"type": "output_text", "text": "Hello.", "annotations": [], "logprobs": []}
OUTPUT_MESSAGE = {
    "type": "message",
    "id": "msg_1",
    "role": "assistant",
    "status": "completed",
    "content": [OUTPUT_TEXT],
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "model": "sonar",
    "output": [OUTPUT_MESSAGE],
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "temperature": None,
    "top_p": None,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 5,
    },
}


def test_a_minimal_response_object_passes():
    validate(RESPONSE, "Response")


@pytest.mark.parametrize(
    "key", ["error", "incomplete_details", "instructions", "metadata", "parallel_tool_calls", "tool_choice", "tools"]
)
def test_the_spec_requires_response_fields_a_server_might_omit(key):
    assert rejects(without(RESPONSE, key), "Response") == f"Response at $: '{key}' is a required property"


def test_output_text_needs_annotations_and_logprobs():
    message = {**OUTPUT_MESSAGE, "content": [without(OUTPUT_TEXT, "logprobs")]}
    assert rejects({**RESPONSE, "output": [message]}, "Response").endswith("'logprobs' is a required property")


@pytest.mark.parametrize(
    "event",
    [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**RESPONSE, "status": "in_progress", "output": []},
        },
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": OUTPUT_MESSAGE},
        {
            "type": "response.content_part.added",
            "sequence_number": 2,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": {**OUTPUT_TEXT, "text": ""},
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 3,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
            "logprobs": [],
        },
        {
            "type": "response.output_text.annotation.added",
            "sequence_number": 4,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "annotation_index": 0,
            "annotation": {"type": "url_citation", "url": "https://x", "title": "X", "start_index": 0, "end_index": 3},
        },
        {"type": "response.completed", "sequence_number": 5, "response": RESPONSE},
    ],
)
def test_response_stream_events_pass(event):
    validate(event, "ResponseStreamEvent")


def test_a_text_delta_event_without_logprobs_fails_inside_its_own_branch():
    event = {"type": "response.output_text.delta", "sequence_number": 3, "item_id": "m", "output_index": 0}
    event |= {"content_index": 0, "delta": "x"}
    assert rejects(event, "ResponseStreamEvent") == "ResponseStreamEvent at $: 'logprobs' is a required property"


def test_an_unknown_event_type_fails_at_type():
    assert rejects({"type": "response.nope", "sequence_number": 0}, "ResponseStreamEvent").startswith(
        "ResponseStreamEvent at $.type: 'response.nope' is not one of"
    )


def test_response_usage_needs_cache_write_tokens():
    usage = {**RESPONSE["usage"], "input_tokens_details": {"cached_tokens": 0}}
    assert rejects({**RESPONSE, "usage": usage}, "Response") == (
        "Response at $.usage.input_tokens_details: 'cache_write_tokens' is a required property"
    )


def test_an_input_item_list_needs_string_first_and_last_ids():
    item = {"type": "message", "id": "msg_0", "role": "user", "status": "completed"}
    item |= {"content": [{"type": "input_text", "text": "Hi"}]}
    body = {"object": "list", "data": [item], "first_id": "msg_0", "last_id": "msg_0", "has_more": False}
    validate(body, "ResponseItemList")
    # Even an empty page must carry string ids: the spec has no null here.
    empty = {**body, "data": [], "first_id": None, "last_id": None}
    assert rejects(empty, "ResponseItemList") == "ResponseItemList at $.last_id: None is not of type 'string'"


# ---- the helper and the fixture ------------------------------------------------------------------


def test_an_unknown_schema_name_is_a_key_error():
    with pytest.raises(KeyError, match="DeleteResponse"):
        validate({}, "DeleteResponse")


def test_the_subset_holds_every_requested_root():
    wanted = {"CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "ErrorResponse", "Error", "Model"}
    wanted |= {"ListModelsResponse", "DeleteModelResponse", "CreateCompletionResponse", "Response"}
    wanted |= {"ResponseStreamEvent", "ResponseItemList", "CompletionUsage"}
    assert wanted <= schema_names()


@pytest.mark.skipif(not SPEC.exists(), reason="the full OpenAI spec is not on this machine")
def test_the_fixture_matches_a_fresh_extraction(tmp_path):
    spec = importlib.util.spec_from_file_location("extract_openapi_subset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "subset.json"
    assert module.main(["--spec", str(SPEC), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(SUBSET_PATH.read_text())
