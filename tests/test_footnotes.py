"""Citation mode `footnotes`: the answer keeps its `[n]` markers and ends with a Markdown list of the sources it
cites, on every answering surface (chat, legacy completions, Responses, Messages, MCP), streamed or not."""

from __future__ import annotations

import json
import math
import sys

import anthropic
import anyio
import markdown_it
import pytest
import requests
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from api.config import CITATION_MODES as CONFIG_MODES
from api.core.agent import raw_answer
from api.core.citations import MODES, CitationRenderer, footnotes
from api.core.turn import ChatTurn, TurnLimits
from perplexity.sse import SSEDecoder
from perplexity.testing import Reply, tool_call_text
from perplexity.types import AnswerDelta, Completed, Source, SourcesUpdate
from schemas.options import CITATION_MODES as SCHEMA_MODES

from .conftest import ROOT
from .test_mcp import CALL_TIMEOUT, run, server_env, text_of

SOURCES = [
    {"name": "Sky", "url": "https://sky.example/blue", "snippet": "the sky"},
    {"name": "Never cited", "url": "https://uncited.example/", "snippet": "unused"},
    {"name": "Grass [green] `x` <b>", "url": "https://grass.example/a b_(c)", "snippet": "the grass"},
]
# Markers with a gap: [2] is never cited, so the list has entries 1 and 3 only; [3] comes first on purpose.
ANSWER = "Grass is green [3]. The sky is blue [1][3]."
LIST = (
    "\n\nSources:\n"
    "- [1] [Sky](https://sky.example/blue)\n"
    "- [3] [Grass \\[green\\] \\`x\\` \\<b\\>](https://grass.example/a%20b_%28c%29)"
)
ASK = [{"role": "user", "content": "What colour are the sky and the grass?"}]
FOOTNOTES = {"citation_mode": "footnotes"}


def reply(answer: str = ANSWER, sources: list | None = None, **extra) -> Reply:
    return Reply(answer=answer, sources=SOURCES if sources is None else sources, **extra)


def sse(server, path: str, body: dict) -> list[tuple[str | None, dict | str]]:
    """POST a streamed request; (event name, data) of each SSE frame (data parsed unless it is [DONE])."""
    with requests.post(server.url + path, json={**body, "stream": True}, stream=True, timeout=20) as response:
        assert response.status_code == 200
        decoder = SSEDecoder()
        frames = [f for chunk in response.iter_content(None) for f in decoder.feed(chunk)] + decoder.close()
    return [(f.event, f.data if f.data == "[DONE]" else json.loads(f.data)) for f in frames if f.data]


def chat_chunks(server, body: dict) -> list[dict]:
    return [data for _, data in sse(server, "/v1/chat/completions", body) if data != "[DONE]"]


def answer_tokens(usage) -> int:
    """A chat usage's completion tokens without the reasoning ones: the content's own estimate."""
    return usage.completion_tokens - usage.completion_tokens_details.reasoning_tokens


def source(title: str, url: str) -> Source:
    return Source(title=title, url=url)


# ---- the list itself ------------------------------------------------------------------------------------


def test_every_mode_list_names_footnotes():
    assert "footnotes" in MODES
    assert MODES == CONFIG_MODES == SCHEMA_MODES


def test_the_list_numbers_entries_as_their_markers_each_once_in_order():
    sources = [source(s["name"], s["url"]) for s in SOURCES]
    renderer = CitationRenderer("footnotes", sources)
    content = renderer.render(ANSWER)
    assert content == ANSWER  # the markers stay as they are, as in default mode
    cited = renderer.cited(len(content))
    assert [number for number, _ in cited] == [1, 3]
    assert footnotes(content, cited) == LIST


def test_the_list_is_markdown_that_a_hostile_title_or_url_cannot_break():
    sources = [
        source("A ] (b) [c](https://evil.example) `d", "https://x.example/a) b\\c<d>"),
        source("Line\none  ", "https://y.example/"),
    ]
    renderer = CitationRenderer("footnotes", sources)
    content = renderer.render("One [1], two [2].")
    text = footnotes(content, renderer.cited(len(content)))
    tokens = markdown_it.MarkdownIt("commonmark").parseInline(text.split("Sources:\n", 1)[1])[0].children
    links = [(t.attrs["href"], tokens[i + 1].content) for i, t in enumerate(tokens) if t.type == "link_open"]
    assert links == [
        ("https://x.example/a%29%20b%5Cc%3Cd%3E", "A ] (b) [c](https://evil.example) `d"),
        ("https://y.example/", "Line one"),
    ]


def test_a_title_falls_back_to_the_host():
    sources = [source("", "https://www.host.example/page"), source("https://b.example/x", "https://b.example/x")]
    renderer = CitationRenderer("footnotes", sources)
    content = renderer.render("A [1] B [2]")
    assert footnotes(content, renderer.cited(len(content))).splitlines()[-2:] == [
        "- [1] [www.host.example](https://www.host.example/page)",
        "- [2] [b.example](https://b.example/x)",
    ]


@pytest.mark.parametrize(
    ("answer", "sources"),
    [
        ("No markers here.", SOURCES),  # sources, but none cited
        ("A marker [1] but no sources.", []),
        ("Out of range [9].", SOURCES),
        ("In code `x[1]` and a link [1](https://a.example).", SOURCES),
    ],
)
def test_nothing_is_appended_when_no_source_is_cited(answer, sources):
    renderer = CitationRenderer("footnotes", [source(s["name"], s["url"]) for s in sources])
    content = renderer.render(answer)
    assert footnotes(content, renderer.cited(len(content))) == ""


def test_an_answer_cut_inside_a_code_fence_has_it_closed_before_the_list():
    cited = [(1, source("Sky", "https://sky.example/"))]
    assert footnotes("Text [1]\n```python\nx = [1]", cited).startswith("\n```\n\nSources:")
    assert footnotes("Text [1]\n~~~~\ncode\n", cited).startswith("~~~~\n\nSources:")
    assert footnotes("Done [1]\n```\ncode\n```\n", cited).startswith("\nSources:")  # closed: just the blank line


# ---- the turn: where the list goes, stop sequences, length cuts -------------------------------------------


def turn_of(answer: str, pieces: int = 5, **limits) -> tuple[ChatTurn, list]:
    turn = ChatTurn(TurnLimits(citation_mode="footnotes", **limits))
    out = turn.feed(SourcesUpdate(tuple(source(s["name"], s["url"]) for s in SOURCES)))
    for start in range(0, len(answer), pieces):
        out += turn.feed(AnswerDelta(answer[start : start + pieces]))
    out += turn.feed(Completed(answer=answer, final_answer=answer))
    return turn, out


def test_the_list_is_the_last_content_before_the_finish():
    turn, pieces = turn_of(ANSWER)
    kinds = [p.kind for p in pieces]
    assert kinds[-2:] == ["content", "finish"] and pieces[-2].text == LIST
    assert turn.content == ANSWER + LIST and turn.answer == ANSWER and turn.finish_reason == "stop"
    assert raw_answer(turn) == ANSWER  # what the agent readers read: no list


def test_a_length_cut_lists_only_the_sources_cited_in_the_text_sent():
    turn, pieces = turn_of(ANSWER, max_tokens=6)  # 24 characters: "Grass is green [3]. The "
    assert turn.finish_reason == "length" and turn.answer == ANSWER[:24]
    assert turn.content == ANSWER[:24] + "\n\nSources:\n" + LIST.splitlines()[-1]
    assert [p.kind for p in pieces][-2:] == ["content", "finish"]


def test_a_stop_sequence_keeps_the_list_unless_the_list_would_hold_it():
    turn, _ = turn_of(ANSWER, stops=("The sky",))
    assert turn.finish_reason == "stop" and turn.stop_sequence == "The sky"
    assert turn.content == "Grass is green [3]. " + "\n\nSources:\n" + LIST.splitlines()[-1]
    turn, _ = turn_of(ANSWER, stops=("Sources:",))  # the content never holds a stop sequence
    assert turn.content == ANSWER
    turn, _ = turn_of("Sky [1]\n\nmore", stops=("\n\n",))
    assert turn.content == "Sky [1]"


def test_other_modes_append_nothing():
    for mode in ("default", "markdown", "clean"):
        turn = ChatTurn(TurnLimits(citation_mode=mode))
        turn.feed(SourcesUpdate((source("Sky", "https://sky.example/"),)))
        turn.feed(AnswerDelta("Blue [1]."))
        turn.feed(Completed(answer="Blue [1].", final_answer="Blue [1]."))
        assert "Sources:" not in turn.content and turn.answer == turn.content


# ---- chat completions through the openai SDK --------------------------------------------------------------


def test_chat_whole_and_streamed_give_the_same_content_with_the_list(fake, sdk, live_server):
    fake.enqueue(reply())
    whole = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, extra_body=FOOTNOTES)
    message = whole.choices[0].message
    assert message.content == ANSWER + LIST and whole.choices[0].finish_reason == "stop"
    # Annotations index the markers of the answer; the list has none of its own.
    spans = [(a.url_citation.start_index, a.url_citation.end_index, a.url_citation.url) for a in message.annotations]
    assert [(message.content[s:e], url) for s, e, url in spans] == [
        ("[3]", SOURCES[2]["url"]),
        ("[1]", SOURCES[0]["url"]),
        ("[3]", SOURCES[2]["url"]),
    ]
    assert all(e <= len(ANSWER) for _, e, _ in spans)
    assert answer_tokens(whole.usage) == math.ceil(len(ANSWER + LIST) / 4)  # the list counts

    fake.enqueue(reply(chunk_size=4))
    chunks = list(sdk.chat.completions.create(model="perplexity-auto", messages=ASK, extra_body=FOOTNOTES, stream=True))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == message.content
    finish = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].finish_reason]
    assert finish == [len(chunks) - 1] and not chunks[-1].choices[0].delta.content
    assert deltas[-2] == LIST  # the list is the last content, before the finishing chunk

    # The raw stream: the list is one delta of its own after every answer delta.
    fake.enqueue(reply(chunk_size=4))
    raw = chat_chunks(live_server, {"model": "perplexity-auto", "messages": ASK, **FOOTNOTES})
    contents = [c["choices"][0]["delta"].get("content") for c in raw if c.get("choices")]
    texts = [text for text in contents if text]
    assert texts[-1] == LIST and "".join(texts[:-1]) == ANSWER


def test_a_stop_sequence_and_a_length_cut_over_http(fake, sdk):
    fake.enqueue(reply())
    stopped = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, stop=["The sky"], extra_body=FOOTNOTES)
    assert stopped.choices[0].message.content == "Grass is green [3]. \n\nSources:\n" + LIST.splitlines()[-1]
    fake.enqueue(reply())
    cut = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, max_tokens=4, extra_body=FOOTNOTES)
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == "Grass is green ["  # no whole marker made it: no list
    fake.enqueue(reply())
    cut = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, max_tokens=5, extra_body=FOOTNOTES)
    assert cut.choices[0].message.content == "Grass is green [3]. \n\nSources:\n" + LIST.splitlines()[-1]
    assert answer_tokens(cut.usage) == math.ceil(len(cut.choices[0].message.content) / 4)


def test_no_cited_source_no_list(fake, sdk):
    fake.enqueue(reply(answer="Nothing is cited here."))
    whole = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, extra_body=FOOTNOTES)
    assert whole.choices[0].message.content == "Nothing is cited here."
    fake.enqueue(reply(sources=[]))
    whole = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, extra_body=FOOTNOTES)
    assert whole.choices[0].message.content == ANSWER


def test_json_output_gets_no_list(fake, sdk, live_server):
    answer = '{"sky": "blue [1]", "grass": "green [3]"}'
    fake.enqueue(reply(answer=answer))
    whole = sdk.chat.completions.create(
        model="perplexity-auto", messages=ASK, response_format={"type": "json_object"}, extra_body=FOOTNOTES
    )
    assert json.loads(whole.choices[0].message.content) == {"sky": "blue", "grass": "green"}
    assert answer_tokens(whole.usage) == math.ceil(len(answer) / 4)  # no list was counted either
    fake.enqueue(reply(answer=answer))
    events = sse(
        live_server,
        "/v1/responses",
        {"model": "perplexity-auto", "input": "Colours?", "text": {"format": {"type": "json_object"}}, **FOOTNOTES},
    )
    (done,) = [data for name, data in events if name == "response.output_text.done"]
    assert json.loads(done["text"]) == {"sky": "blue", "grass": "green"}


def test_tool_calls_get_no_list(fake, sdk):
    call = tool_call_text("lookup", {"ids": [1]})  # "[1]" in JSON reads like a marker
    fake.enqueue(reply(answer=call))
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    whole = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, tools=[tool], extra_body=FOOTNOTES)
    (made,) = whole.choices[0].message.tool_calls
    assert json.loads(made.function.arguments) == {"ids": [1]} and whole.choices[0].message.content is None


def test_a_text_answer_to_a_request_with_tools_keeps_its_list(fake, sdk):
    fake.enqueue(reply())
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    whole = sdk.chat.completions.create(model="perplexity-auto", messages=ASK, tools=[tool], extra_body=FOOTNOTES)
    assert whole.choices[0].message.content == ANSWER + LIST
    fake.enqueue(reply(chunk_size=4))
    chunks = sdk.chat.completions.create(
        model="perplexity-auto", messages=ASK, tools=[tool], extra_body=FOOTNOTES, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER + LIST


def test_a_conversation_sent_back_with_its_list_continues_the_thread(fake, live_server):
    fake.enqueue(reply(), reply(answer="Yes [1]."))
    url, body = live_server.url + "/v1/chat/completions", {"model": "perplexity-auto", **FOOTNOTES}
    first = requests.post(url, json={**body, "messages": ASK}, timeout=20).json()
    history = [*ASK, first["choices"][0]["message"], {"role": "user", "content": "Sure?"}]
    second = requests.post(url, json={**body, "messages": history}, timeout=20)
    assert second.headers["X-Conversation-Continued"] == "true"
    assert fake.asks[-1].json["params"]["query_source"] == "followup"
    assert fake.asks[-1].thread == fake.asks[0].thread


# ---- legacy completions -----------------------------------------------------------------------------------


def test_legacy_completions_whole_and_streamed(fake, sdk):
    fake.enqueue(reply())
    whole = sdk.completions.create(model="perplexity-auto", prompt="Colours?", extra_body=FOOTNOTES)
    assert whole.choices[0].text == ANSWER + LIST
    fake.enqueue(reply(chunk_size=4))
    chunks = list(sdk.completions.create(model="perplexity-auto", prompt="Colours?", stream=True, extra_body=FOOTNOTES))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == ANSWER + LIST
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].choices[0].text == ""
    assert texts[-2] == LIST  # the last text chunk before the finishing one


# ---- Responses --------------------------------------------------------------------------------------------


def test_responses_whole_and_streamed_with_annotations_on_the_markers(fake, sdk, live_server):
    fake.enqueue(reply())
    response = sdk.responses.create(model="perplexity-auto", input="Colours?", extra_body=FOOTNOTES)
    assert response.output_text == ANSWER + LIST
    (part,) = response.output[-1].content
    assert [(part.text[a.start_index : a.end_index], a.url) for a in part.annotations] == [
        ("[3]", SOURCES[2]["url"]),
        ("[1]", SOURCES[0]["url"]),
        ("[3]", SOURCES[2]["url"]),
    ]
    usage = response.usage
    assert usage.output_tokens - usage.output_tokens_details.reasoning_tokens == math.ceil(len(ANSWER + LIST) / 4)

    fake.enqueue(reply(chunk_size=4))
    events = sse(live_server, "/v1/responses", {"model": "perplexity-auto", "input": "Colours?", **FOOTNOTES})
    names = [name for name, _ in events]
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert deltas[-1] == LIST and "".join(deltas[:-1]) == ANSWER
    last_delta = max(i for i, name in enumerate(names) if name == "response.output_text.delta")
    assert last_delta < names.index("response.output_text.done")
    (done,) = [data for name, data in events if name == "response.output_text.done"]
    assert done["text"] == ANSWER + LIST
    added = [data["annotation"] for name, data in events if name == "response.output_text.annotation.added"]
    assert [(done["text"][a["start_index"] : a["end_index"]]) for a in added] == ["[3]", "[1]", "[3]"]

    fake.enqueue(reply(chunk_size=4))
    with sdk.responses.stream(model="perplexity-auto", input="Colours?", extra_body=FOOTNOTES) as stream:
        final = stream.get_final_response()
    assert final.output_text == ANSWER + LIST


# ---- Messages through the anthropic SDK -------------------------------------------------------------------


@pytest.fixture
def claude(live_server):
    with anthropic.Anthropic(base_url=live_server.url, api_key="unused", max_retries=0, timeout=20) as client:
        yield client


def test_messages_whole_and_streamed(fake, claude, live_server):
    fake.enqueue(reply())
    message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=ASK, extra_body=FOOTNOTES)
    (block,) = message.content
    assert block.text == ANSWER + LIST
    assert [c.url for c in block.citations] == [SOURCES[2]["url"], SOURCES[0]["url"]]

    fake.enqueue(reply(chunk_size=4))
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=1024, messages=ASK, extra_body=FOOTNOTES
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == ANSWER + LIST

    fake.enqueue(reply(chunk_size=4))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": ASK, **FOOTNOTES}
    events = sse(live_server, "/v1/messages", body)
    texts = [(i, data["delta"]["text"]) for i, (name, data) in enumerate(events) if name == "content_block_delta"
             and data["delta"]["type"] == "text_delta"]  # fmt: skip
    assert texts[-1][1] == LIST and "".join(t for _, t in texts[:-1]) == ANSWER
    stop = next(i for i, (name, _) in enumerate(events) if name == "content_block_stop" and i > texts[-1][0])
    assert [name for name, _ in events[stop + 1 :]] == ["message_delta", "message_stop"]


def test_messages_structured_output_gets_no_list(fake, claude):
    fake.enqueue(reply(answer='{"sky": "blue [1]"}'))
    schema = {"type": "object", "properties": {"sky": {"type": "string"}}, "required": ["sky"]}
    message = claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=1024, messages=ASK,
        extra_body={**FOOTNOTES, "output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )  # fmt: skip
    assert json.loads(message.content[0].text) == {"sky": "blue"}


# ---- the server-wide default -------------------------------------------------------------------------------


def test_default_citation_mode_footnotes_applies_to_requests_that_name_none(fake, live_server_factory):
    server = live_server_factory(DEFAULT_CITATION_MODE="footnotes")
    body = {"model": "perplexity-auto", "messages": ASK}
    fake.enqueue(reply())
    plain = requests.post(server.url + "/v1/chat/completions", json=body, timeout=20).json()
    assert plain["choices"][0]["message"]["content"] == ANSWER + LIST
    fake.enqueue(reply())
    chosen = requests.post(server.url + "/v1/chat/completions", json={**body, "citation_mode": "default"}, timeout=20)
    assert chosen.json()["choices"][0]["message"]["content"] == ANSWER
    fake.enqueue(reply(chunk_size=3))
    streamed = chat_chunks(server, body)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c.get("choices"))
    assert text == ANSWER + LIST


# ---- MCP --------------------------------------------------------------------------------------------------


def test_mcp_tools_take_footnotes_and_the_server_default(fake):
    params = StdioServerParameters(
        command=sys.executable,
        args=["mcp_server.py"],
        env=server_env(fake, DEFAULT_CITATION_MODE="footnotes"),
        cwd=ROOT,
    )
    fake.enqueue(reply(), reply(), reply())

    async def main() -> None:
        with anyio.fail_after(CALL_TIMEOUT):
            async with Client(params) as client:
                tools = {tool.name: tool for tool in (await client.list_tools()).tools}
                mode = tools["perplexity_ask"].input_schema["properties"]["citation_mode"]
                assert "footnotes" in json.dumps(mode)
                by_default = await client.call_tool("perplexity_ask", {"query": "Colours?"})
                assert by_default.structured_content["answer"] == ANSWER + LIST
                text = text_of(by_default)
                assert text.count("Sources:") == 1 and "https://uncited.example/" not in text  # the answer's list
                asked = await client.call_tool("perplexity_ask", {"query": "Colours?", "citation_mode": "default"})
                assert asked.structured_content["answer"] == ANSWER
                assert "https://uncited.example/" in text_of(asked)  # the tool's own list of every source
                research = await client.call_tool("perplexity_research", {"query": "Colours?"})
                assert research.structured_content["answer"].endswith(LIST)

    run(main)
