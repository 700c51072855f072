"""The response schemas describe exactly the bodies the real builders produce: a dump loses and adds nothing.

Each body is built by the server's own code (`api.core.completion`, `api.chat.chunks.chat_chunks`,
`PublicModel.openai()`, `Conversation.public()`, `api.edge.errors.error_payload`), then checked three ways:
`Schema().dump(body)` gives the same JSON bytes (so no key is undeclared and none is added), `Schema().validate(body)`
finds nothing (required keys, null where allowed, tags, enums), and the dump fits the OpenAI spec schema where there
is one.

Why the hot path does not dump through the schemas: a marshmallow dump of a chunk costs more CPU than the whole
rest of the chunk's work, and once sources are known every chunk repeats `citations` and `search_results`. So the
streaming path keeps the hand-built dicts and these schemas are the checked description of them (as this file
checks); non-streamed bodies (one dump per request) can afford a dump, with a module-level schema instance.
"""

from __future__ import annotations

import orjson
import pytest

from api.chat.chunks import ChunkEncoder, chat_chunks
from api.core.completion import CompletionMeta, chunk, completion
from api.core.modelmap import BUILTIN_CATALOGUE, ModelMap, PublicModel
from api.core.turn import ChatTurn, TurnLimits
from api.edge.errors import APIError, error_payload
from api.edge.sse import DONE, encode
from api.steps import StreamHooks
from api.stores import Conversation
from perplexity.types import (
    AnswerDelta,
    Completed,
    MediaItem,
    MediaUpdate,
    ReasoningDelta,
    RelatedQuestions,
    Source,
    SourcesUpdate,
    ThreadIds,
    ThreadUpdate,
    TitleUpdate,
)
from schemas import (
    ChatCompletionChunkSchema,
    ChatCompletionSchema,
    ConversationDeletedSchema,
    ConversationListSchema,
    ConversationSchema,
    ErrorResponseSchema,
    ModelListSchema,
    ModelSchema,
)
from schemas.chat_response import ChunkChoiceSchema, MessageSchema
from tests.openapi import validate

THREAD = ThreadIds("backend-1", "context-1", "rw-secret", "why-is-the-sky-blue")
SOURCES = (
    Source("Rayleigh scattering", "https://sky.example/rayleigh", "Short wavelengths scatter more.", "2024-05-01"),
    Source("notes.pdf", "https://files.example/notes.pdf", is_attachment=True),
)
MEDIA = (
    MediaItem("https://img.example/sky.png", "image", "Blue sky", "https://sky.example/rayleigh", 640, 480),
    MediaItem("https://img.example/bare.png"),
    MediaItem("https://video.example/sky.mp4", "video", "Timelapse"),
)
ANSWER = ["The sky is blue because air scatters ", "short wavelengths [1]. Your notes agree [2", "]."]
PROMPT = "user: Why is the sky blue?"


def events(*, reasoning: bool = True, sources: bool = True) -> list[object]:
    """One Perplexity answer as the client yields it."""
    answer = "".join(ANSWER)
    out: list[object] = [ThreadUpdate(THREAD)]
    if reasoning:
        out.append(ReasoningDelta("Searching for why the sky is blue. "))
    if sources:
        out.append(SourcesUpdate(SOURCES))
    out += [AnswerDelta(text) for text in ANSWER]
    out += [MediaUpdate(MEDIA), RelatedQuestions(("Why are sunsets red?", "Is the sky blue on Mars?"))]
    out += [TitleUpdate("Why the sky is blue"), Completed(answer, answer, thread=THREAD)]
    return out


def fed(limits: TurnLimits, stream: list[object]) -> ChatTurn:
    turn = ChatTurn(limits)
    for event in stream:
        turn.feed(event)
    return turn


def assert_described(schema, body: dict) -> dict:
    """The schema dumps `body` to the same JSON (keys, values and order) and finds nothing to object to."""
    dumped = schema.dump(body)
    assert orjson.dumps(dumped) == orjson.dumps(body)
    assert schema.validate(body) == {}
    return dumped


# ---- chat.completion ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "stream", "meta"),
    [
        pytest.param(
            TurnLimits("markdown"),
            events(),
            CompletionMeta("perplexity-auto", want_related=True, want_images=True),
            id="reasoning-sources-related-images",
        ),
        pytest.param(TurnLimits("clean"), events(reasoning=False), CompletionMeta("gpt-5.5"), id="clean-citations"),
        pytest.param(
            TurnLimits(max_tokens=5), events(reasoning=False, sources=False), CompletionMeta("sonar"), id="length"
        ),
        pytest.param(
            TurnLimits(stops=("because",)),
            events(sources=False),
            CompletionMeta("claude-4.8-opus-thinking", want_related=True, want_images=True),
            id="stop-no-sources",
        ),
    ],
)
def test_chat_completion_schema_describes_completion(limits, stream, meta):
    body = completion(fed(limits, stream), meta, PROMPT)
    validate(assert_described(ChatCompletionSchema(), body), "CreateChatCompletionResponse")


def test_the_rich_completion_exercises_every_optional_key():
    meta = CompletionMeta("perplexity-auto", want_related=True, want_images=True)
    body = completion(fed(TurnLimits("markdown"), events()), meta, PROMPT)
    message = body["choices"][0]["message"]
    assert set(body) == set(ChatCompletionSchema().fields) and set(message) == set(MessageSchema().fields)
    assert message["annotations"] and body["search_results"][1]["date"] is None
    assert body["images"] and body["images"][1]["width"] is None


def test_response_message_keeps_spec_required_keys_as_null():
    assert MessageSchema().dump({"role": "assistant", "annotations": []}) == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
    }


# ---- chat.completion.chunk ----------------------------------------------------------------------


def streamed(include_usage: bool) -> list[dict]:
    """Every `data:` payload the real SSE generator sends for one answer."""
    meta = CompletionMeta("perplexity-auto", want_related=True, want_images=True)
    turn = ChatTurn(TurnLimits("markdown"))
    source = _Events(events())
    body = b"".join(
        chat_chunks(source, turn, meta, _HOOKS, prompt_text=PROMPT, include_usage=include_usage, on_done=lambda t: None)
    )
    assert body.endswith(DONE)
    lines = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    return [orjson.loads(line.removeprefix(b"data: ")) for line in lines[:-1]]


class _Events(list):
    """An upstream stand-in: the events as one batch from `ticks()`, and the `close()` the generator calls."""

    def ticks(self, idle: float):
        yield list(self)

    def close(self) -> None:
        pass


_HOOKS = StreamHooks(heartbeat=5, gone=lambda: False, first_token=lambda: None, failed=lambda exc: None)


@pytest.mark.parametrize("include_usage", [False, True])
def test_chunk_schema_describes_every_streamed_chunk(include_usage):
    chunks = streamed(include_usage)
    schema = ChatCompletionChunkSchema()
    for body in chunks:
        validate(assert_described(schema, body), "CreateChatCompletionStreamResponse")
    assert all(("usage" in c) is include_usage for c in chunks)
    deltas = {key for c in chunks for choice in c["choices"] for key in choice["delta"]}
    assert deltas == {"role", "content", "reasoning_content", "reasoning", "annotations"}
    assert {"citations", "search_results", "related_questions", "images"} <= {key for c in chunks for key in c}
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert all(c["usage"] is None for c in chunks[:-1])


@pytest.mark.parametrize(
    ("delta", "options"),
    [
        ({"role": "assistant", "content": ""}, {}),
        ({"content": "The sky"}, {"with_usage": True}),
        ({"reasoning_content": "Searching", "reasoning": "Searching"}, {}),
        ({}, {"finish_reason": "length", "with_usage": True}),
        ({}, {"finish_reason": "stop", "fields": {"citations": [], "related_questions": []}}),
    ],
)
def test_chunk_schema_describes_chunk_builder(delta, options):
    body = chunk(CompletionMeta("sonar"), delta, **options)
    validate(assert_described(ChatCompletionChunkSchema(), body), "CreateChatCompletionStreamResponse")


@pytest.mark.parametrize("with_usage", [False, True])
def test_chunk_encoder_gives_the_bytes_of_the_chunk_builder(with_usage):
    meta = CompletionMeta("sonar")
    tricky = Source('A {"__delta__":0} title', 'https://x.example/?q="a"', "snippet \u2028 \U0001f600")
    fields = {"citations": [tricky.url], "search_results": [{"title": tricky.title, "url": tricky.url}]}
    encoder = ChunkEncoder(meta, with_usage=with_usage)
    for current in ({}, fields, {}):
        encoder.set_fields(current)
        for text in ("", "plain", 'quote " and \\ backslash\n', "\u00e9\U0001f600\u2028", '{"__delta__":0}'):
            expected = encode(chunk(meta, {"content": text}, fields=current, with_usage=with_usage))
            assert encoder.content(text) == expected
            delta = {"reasoning_content": text, "reasoning": text}
            assert encoder.delta(delta) == encode(chunk(meta, delta, fields=current, with_usage=with_usage))


def test_chunk_usage_key_is_neither_added_nor_dropped():
    meta = CompletionMeta("sonar")
    assert "usage" not in ChatCompletionChunkSchema().dump(chunk(meta, {"content": "a"}))
    assert ChatCompletionChunkSchema().dump(chunk(meta, {"content": "a"}, with_usage=True))["usage"] is None


def test_chunk_choice_keeps_spec_required_keys_as_null():
    assert ChunkChoiceSchema().dump({"index": 0, "delta": {}}) == {
        "index": 0,
        "delta": {},
        "finish_reason": None,
        "logprobs": None,
    }


def test_an_undeclared_key_is_caught():
    body = {**chunk(CompletionMeta("sonar"), {"content": "a", "tool_calls": []}), "system_fingerprint": "fp"}
    schema = ChatCompletionChunkSchema()
    assert "system_fingerprint" not in schema.dump(body)
    errors = schema.validate(body)
    assert errors["system_fingerprint"] == ["Unknown field."]
    assert errors["choices"][0]["delta"]["tool_calls"] == ["Unknown field."]


def test_logprobs_must_be_null():
    body = chunk(CompletionMeta("sonar"), {"content": "a"})
    body["choices"][0]["logprobs"] = {"content": [], "refusal": None}
    assert ChatCompletionChunkSchema().validate(body) == {"choices": {0: {"logprobs": ["must be null."]}}}


# ---- models, conversations, errors --------------------------------------------------------------


def test_model_schemas_describe_models():
    models = ModelMap(BUILTIN_CATALOGUE).models()
    for model in models:
        validate(assert_described(ModelSchema(), model.openai()), "Model")
    body = {"object": "list", "data": [m.openai() for m in models]}
    validate(assert_described(ModelListSchema(), body), "ListModelsResponse")
    single = PublicModel("claude-4.8-opus", "claude48opus", "anthropic", "Claude Opus 4.8").openai()
    validate(assert_described(ModelSchema(), single), "Model")


def test_conversation_schemas_describe_conversations():
    titled = Conversation("conv_1", "caller", THREAD, "perplexity-auto", 1.7e9 + 0.5, 1.7e9 + 90.9, 3, "Blue sky")
    untitled = Conversation("conv_2", "caller", THREAD, "sonar", 1.7e9, 1.7e9)
    for conversation in (titled, untitled):
        public = assert_described(ConversationSchema(), conversation.public())
        assert "rw-secret" not in str(public)
    assert_described(ConversationListSchema(), {"object": "list", "data": [titled.public(), untitled.public()]})
    assert_described(ConversationListSchema(), {"object": "list", "data": []})
    assert_described(ConversationDeletedSchema(), {"id": "conv_1", "object": "conversation.deleted", "deleted": True})


@pytest.mark.parametrize(
    "error",
    [
        APIError(400, "Invalid value for 'n': must be at least 1.", code="invalid_value", param="n"),
        APIError(500, "The server failed.", "server_error"),
    ],
)
def test_error_schema_describes_error_payload(error):
    validate(assert_described(ErrorResponseSchema(), error_payload(error)), "ErrorResponse")
