"""POST/GET/DELETE /v1/responses on a live gunicorn server against the fake upstream, via the openai SDK."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import openai
import pytest
import requests

from api.core.agent import AgentOutcome
from api.core.completion import CompletionMeta
from api.core.turn import ChatTurn, TurnLimits
from api.responses.events import ResponseEvents
from api.responses.objects import ResponseMeta, echo_fields
from api.stores import MemoryResponseStore, StoredResponse
from perplexity.sse import SSEDecoder
from perplexity.testing import Fault, Reply
from perplexity.types import AnswerDelta, ReasoningDelta

from .openapi import validate

ANSWER = "Paris is the capital of France [1]. It has about two million people [2]."
QUESTION = "What is the capital of France?"
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
# Perplexity's search steps are reasoning, so even a plain answer opens with a reasoning item.
REASONING_EVENTS = [
    "response.output_item.added",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
]
EVENTS = [
    "response.created",
    "response.in_progress",
    *REASONING_EVENTS,
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.annotation.added",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def stream_events(server, body, headers=None):
    """POST a streamed response and decode it; checks each event's name, type, number and schema."""
    body = {"model": "perplexity-auto", "stream": True, **body}
    with requests.post(server.url + "/v1/responses", json=body, headers=headers, stream=True, timeout=20) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        decoder = SSEDecoder()
        raw = [e for chunk in r.iter_content(None) for e in decoder.feed(chunk)] + decoder.close()
    events = [json.loads(e.data) for e in raw]
    for number, (frame, event) in enumerate(zip(raw, events, strict=True)):
        assert frame.event == event["type"] and event["sequence_number"] == number
        validate(event, "ResponseStreamEvent")
    return events


def collapse(types):
    """Event types with repeats of the same type squeezed to one (deltas and annotations)."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


# ---- creating responses --------------------------------------------------------------------------


def test_plain_response_with_citations_usage_and_echoed_fields(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER))
    raw = sdk.responses.with_raw_response.create(
        model="perplexity-auto", input=QUESTION, instructions="Be brief.", metadata={"ticket": "42"}
    )
    body = raw.http_response.json()
    validate(body, "Response")
    response = raw.parse()
    assert response.status == "completed" and response.output_text == ANSWER
    assert response.instructions == "Be brief." and response.metadata == {"ticket": "42"}
    message = response.output[-1]
    assert message.type == "message" and message.status == "completed" and message.content[0].logprobs == []
    spans = [(ANSWER[a.start_index : a.end_index], a.url) for a in message.content[0].annotations]
    assert spans == [("[1]", "https://example.com/1"), ("[2]", "https://example.com/2")]
    assert all(a.type == "url_citation" and a.title for a in message.content[0].annotations)
    usage = response.usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens and usage.output_tokens > 0
    assert body["citations"][0] == "https://example.com/1" and body["search_results"][0]["url"]
    assert "Be brief." in fake.asks[-1].json["query_str"]
    assert raw.headers["x-conversation-id"].startswith("conv_")


def test_streamed_response_has_the_full_event_sequence(fake, live_server):
    fake.enqueue(Reply(answer=ANSWER, chunk_size=5))
    events = stream_events(live_server, {"input": QUESTION})
    assert collapse([e["type"] for e in events]) == EVENTS
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == ANSWER
    annotations = [e["annotation"] for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [ANSWER[a["start_index"] : a["end_index"]] for a in annotations] == ["[1]", "[2]"]
    final = events[-1]["response"]
    validate(final, "Response")
    assert final["status"] == "completed" and final["usage"]["output_tokens"] > 0
    assert events[0]["response"]["id"] == final["id"] and events[0]["response"]["status"] == "in_progress"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert final["output"] == done and [item["type"] for item in done] == ["reasoning", "message"]
    assert done[1]["content"][0]["text"] == ANSWER


def test_sdk_stream_helper_gives_events_and_the_final_response(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER, format="diff", chunk_size=4))
    with sdk.responses.stream(model="perplexity-auto", input=QUESTION) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == ANSWER and final.output_text == ANSWER and final.status == "completed"


def test_reasoning_becomes_a_reasoning_item_before_the_message(fake, sdk, live_server):
    fake.enqueue(Reply(answer=ANSWER, reasoning=True, format="diff"))
    response = sdk.responses.create(model="claude-4.8-opus-thinking", input=QUESTION)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].type == "summary_text"
    assert reasoning.summary[0].text and ANSWER not in reasoning.summary[0].text
    assert message.content[0].text == ANSWER
    assert response.usage.output_tokens_details.reasoning_tokens > 0

    fake.enqueue(Reply(answer=ANSWER, reasoning=True, format="diff"))
    events = stream_events(live_server, {"model": "claude-4.8-opus-thinking", "input": QUESTION})
    assert collapse([e["type"] for e in events]) == EVENTS
    summary = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["summary"][0]["text"] == summary
    assert {e["output_index"] for e in events if e.get("item_id") == final["output"][1]["id"]} == {1}


def test_max_output_tokens_makes_the_response_incomplete(fake, sdk, live_server):
    fake.enqueue(Reply(answer=ANSWER))
    response = sdk.responses.create(model="perplexity-auto", input=QUESTION, max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == ANSWER[:64] and response.output[-1].status == "incomplete"
    fake.enqueue(Reply(answer=ANSWER, chunk_size=5))
    events = stream_events(live_server, {"input": QUESTION, "max_output_tokens": 16})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_input_items_images_and_perplexity_options_reach_the_upstream(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER, related=["And Lyon?"]))
    items = [
        {"role": "developer", "content": "Answer in English."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is in this image?"}]},
        {"role": "user", "content": [{"type": "input_image", "image_url": PNG}]},
    ]
    response = sdk.responses.create(
        model="perplexity-auto",
        input=items,
        extra_body={"search_mode": "academic", "search_recency_filter": "week", "return_related_questions": True},
    )
    ask = fake.asks[-1].json
    assert ask["params"]["sources"] == ["scholar"] and ask["params"]["search_recency_filter"] == "WEEK"
    assert "Answer in English." in ask["query_str"] and "What is in this image?" in ask["query_str"]
    assert len(ask["params"]["attachments"]) == 1 and len(fake.uploads) == 1
    assert response.model_extra["related_questions"] == ["And Lyon?"]


def test_heartbeats_during_upstream_silence_and_disconnect_closes_the_upstream(fake, live_server):
    fake.enqueue(Reply(answer=ANSWER, first_byte_delay=1.2))
    body = {"model": "perplexity-auto", "input": QUESTION, "stream": True}
    with requests.post(live_server.url + "/v1/responses", json=body, stream=True, timeout=20) as response:
        raw = b"".join(response.iter_content(None))
    assert raw.count(b": ping") >= 2 and b"event: response.completed" in raw and b"[DONE]" not in raw

    fake.enqueue(Reply(answer=ANSWER * 50, chunk_size=4, frame_delay=0.2))
    response = requests.post(live_server.url + "/v1/responses", json=body, stream=True, timeout=20)
    next(response.iter_content(64))
    assert fake.wait_until(lambda: fake.open_streams == 1)
    response.close()
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=5)


# ---- state: previous_response_id, retrieve, delete, input_items -----------------------------------


def test_previous_response_id_chain_continues_one_thread(fake, sdk):
    first = sdk.responses.create(model="perplexity-auto", input="Q1", instructions="Be brief.")
    second = sdk.responses.create(model="perplexity-auto", input="Q2", previous_response_id=first.id)
    third = sdk.responses.create(model="perplexity-auto", input="Q3", previous_response_id=second.id)
    asks = fake.asks
    assert [a.json["params"]["query_source"] for a in asks] == ["home", "followup", "followup"]
    assert len({a.thread for a in asks}) == 1
    assert [a.json["query_str"] for a in asks[1:]] == ["Q2", "Q3"]
    assert second.instructions is None and third.previous_response_id == second.id


def test_follow_up_on_a_vanished_thread_starts_over_with_the_history(fake, sdk):
    first = sdk.responses.create(model="perplexity-auto", input="Q1")
    fake.enqueue(Fault("thread_gone"))
    sdk.responses.create(model="perplexity-auto", input="Q2", previous_response_id=first.id)
    query = fake.asks[-1].json["query_str"]
    assert fake.asks[-1].json["params"]["query_source"] == "home"
    assert "Q1" in query and first.output_text[:40] in query and query.endswith("Q2")


def test_retrieve_list_input_items_and_delete(fake, sdk, live_server):
    items = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}, {"type": "input_image", "image_url": PNG}]},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
    ]
    created = sdk.responses.create(model="perplexity-auto", input=items)
    url = f"{live_server.url}/v1/responses/{created.id}"
    body = requests.get(url, timeout=5).json()
    validate(body, "Response")
    assert sdk.responses.retrieve(created.id).output_text == created.output_text

    listed = requests.get(url + "/input_items", timeout=5).json()
    validate(listed, "ResponseItemList")
    assert [i["role"] for i in listed["data"]] == ["user", "assistant", "user", "system"]  # newest first
    assert listed["data"][2]["content"][1]["detail"] == "auto" and listed["has_more"] is False
    page = sdk.responses.input_items.list(created.id, order="asc", limit=2)
    assert [i.role for i in page.data] == ["system", "user"] and page.has_more
    rest = sdk.responses.input_items.list(created.id, order="asc", after=page.last_id)
    assert [i.content[0].text for i in rest.data] == ["Hello!", "Capital of France?"]
    for query, param in (("limit=0", "limit"), ("order=up", "order"), ("after=msg_nope", "after")):
        assert requests.get(f"{url}/input_items?{query}", timeout=5).json()["error"]["param"] == param

    deleted = requests.delete(url, timeout=5)
    assert deleted.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(created.id)


def test_store_false_is_not_retrievable(fake, sdk):
    created = sdk.responses.create(model="perplexity-auto", input=QUESTION, store=False)
    assert created.model_extra["store"] is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        sdk.responses.create(model="perplexity-auto", input="More", previous_response_id=created.id)
    assert info.value.param == "previous_response_id"


def test_another_callers_response_is_not_found(fake, live_server_factory):
    server = live_server_factory(API_KEYS="k1,k2")
    a = openai.OpenAI(base_url=server.url + "/v1", api_key="k1", max_retries=0)
    b = openai.OpenAI(base_url=server.url + "/v1", api_key="k2", max_retries=0)
    with a, b:
        created = a.responses.create(model="perplexity-auto", input=QUESTION)
        for call in (
            lambda: b.responses.retrieve(created.id),
            lambda: b.responses.delete(created.id),
            lambda: b.responses.input_items.list(created.id),
            lambda: b.responses.create(model="perplexity-auto", input="More", previous_response_id=created.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert a.responses.retrieve(created.id).id == created.id
    assert [x.json["params"]["query_source"] for x in fake.asks] == ["home"]


def test_unknown_previous_response_id_is_404_before_any_ask(fake, sdk):
    with pytest.raises(openai.NotFoundError) as info:
        sdk.responses.create(model="perplexity-auto", input=QUESTION, previous_response_id="resp_nope")
    assert info.value.param == "previous_response_id" and info.value.code == "previous_response_not_found"
    validate({"error": info.value.body}, "ErrorResponse")
    assert fake.asks == []


# ---- errors --------------------------------------------------------------------------------------


def test_upstream_failure_mid_stream_ends_with_response_failed(fake, sdk, live_server):
    fake.enqueue(Fault("failed", after_frames=6, error_code="MODEL_ERROR", message="Model broke"))
    events = stream_events(live_server, {"input": QUESTION})
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert (
        failed["status"] == "failed"
        and "MODEL_ERROR" in failed["error"]["message"]
        and "Model broke" not in failed["error"]["message"]
    )
    assert failed["error"]["code"] == "server_error"
    assert sdk.responses.retrieve(failed["id"]).status == "failed"

    fake.enqueue(Fault("failed", after_frames=6, error_code="MODEL_ERROR", message="Model broke"))
    kinds = [e.type for e in sdk.responses.create(model="perplexity-auto", input=QUESTION, stream=True)]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds


@pytest.mark.parametrize(
    ("fault", "exception", "status"),
    [
        (Fault("auth", times=9), openai.InternalServerError, 503),
        (Fault("cloudflare", times=9), openai.InternalServerError, 502),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failure_before_the_stream_is_an_http_error(fake, sdk, fault, exception, status, stream):
    fake.enqueue(fault)
    with pytest.raises(exception) as info:
        sdk.responses.create(model="perplexity-auto", input=QUESTION, stream=stream)
    assert info.value.status_code == status


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": QUESTION, "max_output_tokens": 8}, "max_output_tokens"),
        ({"input": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?"}]}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png,zz"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"input": QUESTION, "model": "gpt-17"}, "model"),
    ],
)
def test_bad_requests_name_the_param(fake, live_server, body, param):
    response = requests.post(live_server.url + "/v1/responses", json=body, timeout=5)
    assert response.status_code in (400, 404)
    validate(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param
    assert fake.asks == []


# ---- event order, without a server ---------------------------------------------------------------


def _decode(frames):
    decoder = SSEDecoder()
    events = [json.loads(e.data) for e in decoder.feed(b"".join(frames)) + decoder.close()]
    for number, event in enumerate(events):
        assert event["sequence_number"] == number
        validate(event, "ResponseStreamEvent")
    return events


def test_late_reasoning_becomes_a_second_item_after_the_message():
    turn = ChatTurn(TurnLimits())
    events = ResponseEvents(ResponseMeta(CompletionMeta(model="perplexity-auto"), echo_fields({})))
    frames = [events.start()]
    for update in (ReasoningDelta("Plan\n"), AnswerDelta("Hello"), ReasoningDelta("Late step\n"), AnswerDelta("!")):
        frames += events.feed(turn.feed(update), turn)
    closing, response = events.finish(AgentOutcome(turn), "Hi")
    decoded = _decode([*frames, closing, events.final(response)])
    added = [(e["output_index"], e["item"]["type"]) for e in decoded if e["type"] == "response.output_item.added"]
    done = [(e["output_index"], e["item"]["type"]) for e in decoded if e["type"] == "response.output_item.done"]
    assert added == done == [(0, "reasoning"), (1, "message"), (2, "reasoning")]
    assert [item["type"] for item in response["output"]] == ["reasoning", "message", "reasoning"]
    assert response["output"][1]["content"][0]["text"] == "Hello!"
    assert response["output"][2]["summary"][0]["text"] == "Late step\n"
    # Items never overlap: each is done before the next is added.
    kinds = [e["type"] for e in decoded if e["type"].startswith("response.output_item")]
    assert kinds == ["response.output_item.added", "response.output_item.done"] * 3


def test_a_failure_keeps_the_open_message_as_incomplete():
    turn = ChatTurn(TurnLimits())
    events = ResponseEvents(ResponseMeta(CompletionMeta(model="perplexity-auto"), echo_fields({"store": False})))
    frames = [events.start(), *events.feed(turn.feed(AnswerDelta("Half an ans")), turn)]
    failed = events.failed(RuntimeError("boom"), turn)
    decoded = _decode([*frames, events.event("response.failed", response=failed)])
    assert decoded[-1]["response"]["output"][0]["status"] == "incomplete"
    assert decoded[-1]["response"]["error"]["code"] == "server_error" and failed["store"] is False


def test_response_store_is_caller_scoped_expires_and_serialises():
    now = [1000.0]
    store = MemoryResponseStore(60, clock=lambda: now[0])
    record = StoredResponse("resp_1", "key:a", 1000.0, "conv_1", {"id": "resp_1"}, [{"id": "msg_1", "type": "message"}])
    store.save(record)
    assert store.get("key:b", "resp_1") is None and store.get("key:a", "resp_1") == record
    assert StoredResponse.from_json(record.to_json()) == record
    with pytest.raises(PermissionError):
        store.save(replace(record, caller="key:b"))
    assert not store.delete("key:b", "resp_1") and store.count() == 1
    now[0] += 61
    assert store.get("key:a", "resp_1") is None and store.count() == 0
