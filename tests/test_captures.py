"""Replay every shared real capture through the fake upstream and the client: answer, sources, thread ids."""

from __future__ import annotations

import json

import pytest

from perplexity.errors import StreamTruncatedError
from perplexity.testing import Reply, load_capture_frames
from perplexity.types import AnswerDelta, ThreadIds

from .conftest import CAPTURES

AK = CAPTURES / "ak2k-pplx-agent-tools__fetch-url__example-com-prompt__2026-05-13.events.jsonl"
ZK_STREAM = CAPTURES / "Zykairotis-Perplexity-claude__client_streaming__anon-turbo-concise__2025-10-12.json"
ZK_FINAL = CAPTURES / "Zykairotis-Perplexity-claude__client_reasoning_mode__final-frame__2025-10-12.json"
ZK_FOLLOW = (
    CAPTURES / "Zykairotis-Perplexity-claude__client_follow_up__initial-and-followup-final-frames__2025-10-12.json"
)


def replay(fake, client, frames, options=None):
    fake.enqueue(Reply(frames=frames))
    deltas = []
    with client.ask("replayed question", options) as stream:
        for event in stream:
            if isinstance(event, AnswerDelta):
                deltas.append(event.text)
        return stream.completed, "".join(deltas)


def terminal_markdown_answer(frame):
    block = next(b for b in frame["blocks"] if b["intended_usage"] == "ask_text")
    return block["markdown_block"]["answer"]


def test_ak_turbo_stream_with_text_and_markdown_blocks(fake, px):
    frames = load_capture_frames(AK)
    done, streamed = replay(fake, px, frames)
    expected = terminal_markdown_answer(frames[-2])
    assert expected.startswith("This domain is for use in illustrative examples")
    assert streamed == done.answer == done.final_answer == expected
    # The FINAL step of the step list agrees with the block answer.
    final_step = json.loads(frames[-2]["text"])[-1]
    assert json.loads(final_step["content"]["answer"])["answer"] == expected
    assert len(done.sources) == 12 and done.sources[0].url == "https://example.com"
    assert done.sources[0].title == "Example Domain"
    assert done.thread == ThreadIds(
        backend_uuid="00000000-0000-4000-8000-000000000001",
        context_uuid="00000000-0000-4000-8000-000000000002",
        read_write_token="TEST_RW_TOKEN",
        thread_url_slug="00000000-0000-4000-8000-000000000001",
    )
    assert done.title.startswith("Fetch the page at https://example.com")
    assert len(done.related_questions) == 5
    assert "Fetching the requested page" in done.reasoning and expected not in done.reasoning


def test_zk_anonymous_stream_that_ends_before_completion(fake, px):
    frames = load_capture_frames(ZK_STREAM, end_of_stream=True)
    chunks = []
    for frame in frames:
        for block in frame.get("blocks") or ():
            if block.get("intended_usage") == "ask_text":
                md = block["markdown_block"]
                chunks = chunks[: md["chunk_starting_offset"]] + md["chunks"]
    expected = "".join(chunks)
    fake.enqueue(Reply(frames=frames))
    deltas = []
    with pytest.raises(StreamTruncatedError) as info, px.ask("q") as stream:
        for event in stream:
            if isinstance(event, AnswerDelta):
                deltas.append(event.text)
    assert expected and "".join(deltas) == expected == info.value.partial_answer
    assert stream.thread.backend_uuid == "91cbb68b-8c84-4b1c-bc45-8dd9ff43c1c3"
    assert stream.thread.read_write_token == "411936fe-e56d-4e6b-ba12-074de7160a4d"
    assert stream.thread.thread_url_slug == "what-is-artificial-intelligenc-kcu2i4yESxy8RY3Z_0PBww"


def test_zk_single_terminal_frame(fake, px):
    frames = load_capture_frames(ZK_FINAL)
    done, streamed = replay(fake, px, frames)
    assert streamed == done.final_answer == "The solution to the math problem $$2 + 2$$ is $$4$$."
    assert done.sources == ()
    assert done.thread.context_uuid == frames[0]["context_uuid"]
    assert done.title == frames[0]["thread_title"]


def test_zk_follow_up_pair_keeps_the_thread(fake, px):
    first_frames = load_capture_frames(ZK_FOLLOW, part="initial_result")
    second_frames = load_capture_frames(ZK_FOLLOW, part="follow_up_result")
    first, _ = replay(fake, px, first_frames)
    second, streamed = replay(fake, px, second_frames)
    assert first.thread.context_uuid == second.thread.context_uuid
    assert first.thread.read_write_token == second.thread.read_write_token
    assert first.thread.thread_url_slug == second.thread.thread_url_slug
    assert first.thread.backend_uuid != second.thread.backend_uuid
    assert streamed == second.final_answer == terminal_markdown_answer(second_frames[0])
    assert "Python" in first.final_answer and first.sources


@pytest.mark.parametrize("path", [AK, ZK_FINAL, ZK_FOLLOW], ids=["ak", "zk-final", "zk-followup"])
def test_every_chunking_of_a_capture_gives_the_same_answer(path):
    """Frames fed one by one vs. with the step list dropped: deltas always equal the final answer."""
    from perplexity.assembler import AnswerAssembler

    for frames in (
        load_capture_frames(path),
        [{k: v for k, v in f.items() if k != "text"} for f in load_capture_frames(path)],
    ):
        assembler = AnswerAssembler()
        deltas = [e.text for f in frames if f for e in assembler.feed(f) if isinstance(e, AnswerDelta)]
        if assembler.completed is not None:
            assert "".join(deltas) == assembler.completed.answer == assembler.completed.final_answer


EXPORT = CAPTURES / "14790897-perplexity-export__rest-thread-export__response__2025-09.json"
THREAD_LIST = (
    CAPTURES / "14790897-perplexity-export__rest-collections-list_collection_threads__response-truncated__2025-07.json"
)


def test_thread_export_capture_decodes_to_markdown(fake, px):
    first = px.ask_complete("one")
    fake.exports[first.thread.backend_uuid] = json.loads(EXPORT.read_text())
    export = px.export_thread(first.thread)
    assert export.filename.endswith(".md")
    assert export.markdown.startswith('<img src="https://r2cdn.perplexity.ai/')
    assert "[^1_1]" in export.markdown  # footnote citations survive
    assert fake.requests[-1].json == {"thread_uuid": first.thread.backend_uuid, "format": "md"}


def test_the_truncated_thread_list_capture_is_a_clear_error_not_a_crash(fake, px):
    from perplexity.errors import MalformedFrameError

    raw = THREAD_LIST.read_bytes()  # cut off mid-item by its author: not valid JSON
    fake.canned["/rest/thread/list_ask_threads"] = (200, "application/json", raw)
    with pytest.raises(MalformedFrameError, match="thread list"):
        px.list_threads()
    del fake.canned["/rest/thread/list_ask_threads"]
    px.ask_complete("one")
    assert [t.title for t in px.list_threads()] == ["one"]
