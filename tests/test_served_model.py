"""The served model: Perplexity's `display_model` read from its frames, and every family naming what answered.

When Perplexity answers with another model than the one asked (a fallback, Best's own pick), the response's
`model` names the one that answered and `X-Perplexity-Requested-Model` the one the request selected.
"""

from __future__ import annotations

import copy
import json

import anthropic
import pytest
import requests

from api.chat.chunks import chat_chunks
from api.core.completion import CompletionMeta, ModelNaming
from api.core.modelmap import BUILTIN_CATALOGUE, ModelMap
from api.core.turn import ChatTurn, TurnLimits
from api.responses.events import ResponseEvents
from api.responses.objects import ResponseMeta, echo_fields
from api.steps import StreamHooks
from perplexity.assembler import AnswerAssembler
from perplexity.errors import AskFailedError
from perplexity.sse import SSEDecoder
from perplexity.testing import Reply
from perplexity.testing.envelope import AskContext
from perplexity.testing.generate import build_frames
from perplexity.types import AnswerDelta, Completed, ModelUpdate, SourcesUpdate, ThreadUpdate

ANSWER = "Paris is the capital of France [1]."
ASK = [{"role": "user", "content": "What is the capital of France?"}]
HEADER = "X-Perplexity-Requested-Model"


def frames(asked: str = "claude48opus", **reply) -> list[dict]:
    ctx = AskContext("q", asked, "b1", "c1", "f1", "fc1", "rw", "slug", "cur", "Title")
    return [f for f in build_frames(ctx, Reply(answer=ANSWER, chunk_size=5, **reply)) if f]


def feed(all_frames: list[dict], *, fast: bool = True) -> tuple[AnswerAssembler, list]:
    assembler = AnswerAssembler()
    assembler._fast = fast
    events = [event for frame in copy.deepcopy(all_frames) for event in assembler.feed(frame)]
    return assembler, events


def sse(response: requests.Response) -> list[tuple[str, dict]]:
    decoder = SSEDecoder()
    raw = [e for chunk in response.iter_content(None) for e in decoder.feed(chunk)] + decoder.close()
    return [(e.event, json.loads(e.data)) for e in raw if e.data and e.data != "[DONE]"]


def post(server, path: str, body: dict) -> requests.Response:
    return requests.post(server.url + path, json=body, stream=bool(body.get("stream")), timeout=20)


# ---- the assembler ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "markdown", "diff", "workflow", "plaintext"])
def test_the_served_model_comes_with_the_first_frame(fmt):
    assembler, events = feed(frames(display_model="pplx_pro", format=fmt))
    updates = [e for e in events if isinstance(e, ModelUpdate)]
    assert updates == [ModelUpdate("pplx_pro")] and events[0] == ModelUpdate("pplx_pro")  # before anything else
    assert isinstance(events[1], ThreadUpdate)
    done = events[-1]
    assert isinstance(done, Completed) and done.model == "pplx_pro" and done.mode == "COPILOT"


def test_as_asked_the_served_model_is_the_asked_one():
    _, events = feed(frames())
    assert [e for e in events if isinstance(e, ModelUpdate)] == [ModelUpdate("claude48opus")]


def test_a_late_switch_is_a_second_update_and_the_echo_never_overrides_display_model():
    late = frames(display_model="gpt55", display_model_from=4)
    # The terminal frame echoes the asked model as user_selected_model: display_model wins over it.
    assert late[-1]["user_selected_model"] == "claude48opus" and late[-1]["display_model"] == "gpt55"
    assembler, events = feed(late)
    updates = [e.model for e in events if isinstance(e, ModelUpdate)]
    assert updates == ["claude48opus", "gpt55"] and events[-1].model == "gpt55"
    assert assembler.model == "gpt55"


def test_without_display_model_the_echo_names_it():
    bare = frames()
    for frame in bare:
        frame.pop("display_model")
    _, events = feed(bare)
    assert [e.model for e in events if isinstance(e, ModelUpdate)] == ["claude48opus"]  # the terminal echo


def test_the_mode_echo_is_the_last_one():
    flipping = frames()
    flipping[2]["mode"] = "CONCISE"  # a May-2026 turbo stream switched COPILOT -> CONCISE -> COPILOT
    assembler, events = feed(flipping)
    assert events[-1].mode == "COPILOT" and assembler.mode == "COPILOT"
    flipping[-1]["mode"] = "CONCISE"
    assert feed(flipping)[1][-1].mode == "CONCISE"


@pytest.mark.parametrize("reply", [{}, {"display_model": "gpt55"}, {"display_model": "gpt55", "display_model_from": 6}])
def test_the_fast_path_agrees(reply):
    chunky = frames(**reply)
    for frame in chunky[3:8]:
        frame["mode"] = "CONCISE"  # the fast path lets a changed mode echo through the general path
    fast, general = feed(chunky, fast=True), feed(chunky, fast=False)
    assert fast[1] == general[1] and fast[0].model == general[0].model and fast[0].mode == general[0].mode


def test_the_client_reports_the_served_model(fake, px):
    fake.enqueue(Reply(answer=ANSWER, display_model="gpt55"))
    result = px.ask_complete("q")
    assert result.model == "gpt55" and result.mode == "COPILOT"
    fake.enqueue(Reply(answer=ANSWER))
    with px.ask("q") as stream:
        first = next(iter(stream))
        assert stream.model == "turbo" and first == ModelUpdate("turbo")  # AskOptions' default model


# ---- naming ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("named", "asked", "reported", "expected"),
    [
        ("claude-4.8-opus", "claude48opus", None, "claude-4.8-opus"),  # not said (yet): as asked
        ("claude-4.8-opus", "claude48opus", "claude48opus", "claude-4.8-opus"),
        ("claude-4.8-opus", "claude48opusthinking", "claude48opusthinking", "claude-4.8-opus"),  # reasoning_effort
        ("claude-4.8-opus", "claude48opus", "gpt55", "gpt-5.5"),  # a fallback to another model
        ("claude-4.8-opus", "claude48opus", "turbo", "perplexity-auto"),  # a fallback to Best
        ("claude-4.8-opus", "claude48opus", "pplx_pro", "perplexity-auto"),
        ("perplexity-auto", "pplx_pro", "pplx_pro_upgraded", "perplexity-auto"),  # Best under another name
        ("perplexity-auto", "pplx_pro", "default", "perplexity-auto"),
        ("perplexity-auto", "pplx_pro", "claude48opusthinking", "claude-4.8-opus-thinking"),  # Best's own pick
        ("perplexity-auto", "pplx_pro", "gpt56_sol_thinking", "gpt-5.6-sol-thinking"),  # not in the catalogue
        ("perplexity-research", "pplx_alpha", "pplx_alpha", "perplexity-research"),
    ],
)
def test_which_public_id_a_response_names(named, asked, reported, expected):
    assert ModelNaming(named, asked, ModelMap(BUILTIN_CATALOGUE)).name(reported) == expected


def test_a_meta_without_naming_keeps_its_model():
    meta = CompletionMeta("perplexity-auto")
    assert meta.served("gpt55") is meta
    named = CompletionMeta(
        "perplexity-auto", naming=ModelNaming("perplexity-auto", "pplx_pro", ModelMap(BUILTIN_CATALOGUE))
    )
    assert named.served("pplx_pro") is named
    served = named.served("gpt55")
    assert served.model == "gpt-5.5" and (served.id, served.created) == (named.id, named.created)


class _Batches:
    """An answer stream read in fixed batches, as `AskStream.ticks` hands them out."""

    def __init__(self, *batches: list) -> None:
        self.batches = batches

    def ticks(self, idle: float):
        yield from self.batches


def test_a_streamed_chat_keeps_the_model_of_its_first_chunk():
    """Perplexity names the model on every frame, so the first chunk (which waits for its first pieces) knows it.
    Should it name another later, the chunks already sent cannot change: every chunk names the first one."""
    source = SourcesUpdate(())  # the first piece: the role chunk goes with it
    naming = ModelNaming("perplexity-auto", "pplx_pro", ModelMap(BUILTIN_CATALOGUE))
    batches = [
        [ModelUpdate("claude48opus"), source],
        [AnswerDelta("Paris.")],
        [ModelUpdate("gpt55"), Completed("Paris.", "Paris.", model="gpt55")],
    ]
    hooks = StreamHooks(heartbeat=1.0, gone=lambda: False, first_token=lambda: None, failed=lambda exc: None)
    body = chat_chunks(
        _Batches(*batches), ChatTurn(TurnLimits()), CompletionMeta("perplexity-auto", naming=naming), hooks,  # type: ignore[arg-type]
        prompt_text="q", include_usage=True, on_done=lambda outcome: None,
    )  # fmt: skip
    chunks = [json.loads(line[6:]) for line in b"".join(body).decode().splitlines() if line.startswith("data: {")]
    assert len(chunks) >= 4 and {chunk["model"] for chunk in chunks} == {"claude-4.8-opus"}


# ---- the families ----------------------------------------------------------------------------------------


def test_chat_names_the_model_that_answered(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER, display_model="gpt55"))
    raw = sdk.chat.completions.with_raw_response.create(model="claude-4.8-opus", messages=ASK)
    assert raw.parse().model == "gpt-5.5" and raw.headers[HEADER] == "claude-4.8-opus"
    assert fake.asks[-1].json["params"]["model_preference"] == "claude48opus"
    fake.enqueue(Reply(answer=ANSWER))
    raw = sdk.chat.completions.with_raw_response.create(model="claude-4.8-opus", messages=ASK)
    assert raw.parse().model == "claude-4.8-opus" and raw.headers[HEADER] == "claude-4.8-opus"  # as asked


def test_chat_on_perplexity_auto_names_bests_pick(fake, sdk):
    fake.enqueue(Reply(answer=ANSWER, display_model="claude48opusthinking"), Reply(answer=ANSWER))
    assert sdk.chat.completions.create(model="perplexity-auto", messages=ASK).model == "claude-4.8-opus-thinking"
    assert sdk.chat.completions.create(model="perplexity-auto", messages=ASK).model == "perplexity-auto"


def test_a_streamed_chat_names_it_from_the_first_chunk(fake, live_server):
    fake.enqueue(Reply(answer=ANSWER, chunk_size=4, display_model="turbo", reasoning=True))
    body = {"model": "gpt-5.5", "messages": ASK, "stream": True, "stream_options": {"include_usage": True}}
    with post(live_server, "/v1/chat/completions", body) as response:
        assert response.headers[HEADER] == "gpt-5.5"
        chunks = [data for _, data in sse(response)]
    assert len(chunks) > 5 and {chunk["model"] for chunk in chunks} == {"perplexity-auto"}  # a fallback to Best
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ANSWER


def test_responses_name_it_whole_streamed_and_stored(fake, sdk, live_server):
    fake.enqueue(Reply(answer=ANSWER, display_model="gpt55"))
    raw = sdk.responses.with_raw_response.create(model="perplexity-sonar", input="What is the capital of France?")
    whole = raw.parse()
    assert whole.model == "gpt-5.5" and raw.headers[HEADER] == "perplexity-sonar"
    assert sdk.responses.retrieve(whole.id).model == "gpt-5.5"
    fake.enqueue(Reply(answer=ANSWER, display_model="gpt55"))
    with post(live_server, "/v1/responses", {"model": "perplexity-sonar", "input": "Capital?", "stream": True}) as r:
        assert r.headers[HEADER] == "perplexity-sonar"
        events = [data for _, data in sse(r)]
    # response.created goes out before Perplexity's first frame: it names the model asked; the finished one not.
    assert [e["response"]["model"] for e in events if e["type"] in ("response.created", "response.in_progress")] == [
        "perplexity-sonar",
        "perplexity-sonar",
    ]
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["model"] == "gpt-5.5"
    assert sdk.responses.retrieve(events[-1]["response"]["id"]).model == "gpt-5.5"


def test_a_failed_response_names_what_had_answered():
    naming = ModelNaming("perplexity-sonar", "experimental", ModelMap(BUILTIN_CATALOGUE))
    meta = ResponseMeta(CompletionMeta("perplexity-sonar", naming=naming), echo_fields({}))
    turn = ChatTurn(TurnLimits())
    turn.feed(ModelUpdate("gpt55"))
    turn.feed(AnswerDelta("Par"))
    events = ResponseEvents(meta)
    assert json.loads(events.start().split(b"data: ")[1].split(b"\n")[0])["response"]["model"] == "perplexity-sonar"
    failed = events.failed(AskFailedError("broke", code="MODEL_ERROR"), turn)
    assert failed["status"] == "failed" and failed["model"] == "gpt-5.5"


def test_messages_name_it_whole_and_streams_name_it_at_the_start(fake, live_server):
    fake.enqueue(Reply(answer=ANSWER, display_model="pplx_pro"))
    with anthropic.Anthropic(base_url=live_server.url, api_key="unused", max_retries=0, timeout=20) as claude:
        raw = claude.messages.with_raw_response.create(model="claude-opus-4-1", max_tokens=1024, messages=ASK)
    assert raw.parse().model == "perplexity-auto" and raw.headers[HEADER] == "claude-4.8-opus"
    fake.enqueue(Reply(answer=ANSWER, display_model="pplx_pro"))
    body = {"model": "claude-opus-4-1", "max_tokens": 1024, "messages": ASK, "stream": True}
    with post(live_server, "/v1/messages", body) as response:
        assert response.headers[HEADER] == "claude-4.8-opus"
        events = sse(response)
    # message_start goes out before Perplexity's first frame (Claude Code wants it at once) and is the only event
    # that names a model: a streamed message names the model asked.
    assert events[0][0] == "message_start" and events[0][1]["message"]["model"] == "claude-4.8-opus"
    assert events[-1][0] == "message_stop"


def test_legacy_completions_name_it_too(fake, live_server):
    fake.enqueue(Reply(answer=ANSWER, display_model="gpt55"), Reply(answer=ANSWER, display_model="gpt55"))
    whole = post(live_server, "/v1/completions", {"model": "perplexity-auto", "prompt": "Capital?"})
    assert whole.json()["model"] == "gpt-5.5" and whole.headers[HEADER] == "perplexity-auto"
    with post(live_server, "/v1/completions", {"model": "perplexity-auto", "prompt": "Capital?", "stream": True}) as r:
        chunks = [data for _, data in sse(r)]
    assert chunks and {chunk["model"] for chunk in chunks} == {"gpt-5.5"}
