"""AnswerAssembler over hand-built frames of every answer format (captures are replayed in test_captures.py)."""

import copy
import json

import pytest

from perplexity.assembler import AnswerAssembler
from perplexity.types import (
    AnswerDelta,
    ClarifyingQuestions,
    Completed,
    Failed,
    MediaUpdate,
    ReasoningDelta,
    RelatedQuestions,
    SourcesUpdate,
    ThreadUpdate,
    TitleUpdate,
)

ENVELOPE = {"backend_uuid": "b1", "context_uuid": "c1", "thread_url_slug": "b1", "display_model": "turbo"}
SOURCES = [
    {"name": "One", "url": "https://one.example/", "snippet": "first", "meta_data": {"published_date": "2026-01-02"}},
    {"name": "Two", "url": "https://two.example/", "snippet": "second", "timestamp": "2026-02-03"},
]
ANSWER = "Paris is the capital [1]. It is large [2]."


def frame(**fields):
    return {**ENVELOPE, "status": "PENDING", **fields}


def terminal(**fields):
    return frame(status="COMPLETED", final=True, final_sse_message=True, thread_title="Capital", **fields)


def run(frames):
    assembler = AnswerAssembler()
    events = [event for f in frames for event in assembler.feed(f)]
    return assembler, events


def deltas(events):
    return "".join(e.text for e in events if isinstance(e, AnswerDelta))


def pieces(text, size=7):
    return [text[i : i + size] for i in range(0, len(text), size)]


def text_steps(answer, *, final=True):
    inner = json.dumps({"answer": answer, "web_results": SOURCES, "chunks": [answer]})
    steps = [
        {"step_type": "INITIAL_QUERY", "content": {"query": "q"}},
        {"step_type": "SEARCH_WEB", "content": {"queries": [{"engine": "web", "query": "capital of france"}]}},
        {"step_type": "SEARCH_RESULTS", "content": {"web_results": SOURCES}},
    ]
    if final:
        steps.append({"step_type": "FINAL", "content": {"goal_id": None, "answer": inner}})
    return json.dumps(steps)


def markdown_frames(answer, usage="ask_text"):
    chunks = pieces(answer)
    frames = [frame(blocks=[{"intended_usage": "web_results", "web_result_block": {"web_results": SOURCES}}])]
    for index, chunk in enumerate(chunks):
        block = {"progress": "IN_PROGRESS", "chunks": [chunk], "chunk_starting_offset": index}
        frames.append(frame(blocks=[{"intended_usage": usage, "markdown_block": block}]))
    done = {"progress": "DONE", "chunks": chunks, "chunk_starting_offset": 0, "answer": answer}
    frames.append(terminal(blocks=[{"intended_usage": usage, "markdown_block": done}], related_queries=["More?"]))
    return frames


def diff_frames(answer):
    def diff(usage, field, *patches):
        return {"intended_usage": usage, "diff_block": {"field": field, "patches": list(patches)}}

    root = {"op": "replace", "path": "", "value": {"progress": "IN_PROGRESS", "chunks": [], "chunk_starting_offset": 0}}
    goals = {"op": "replace", "path": "", "value": {"goals": [{"id": "0", "description": "Searching the web"}]}}
    frames = [
        frame(blocks=[diff("plan", "plan_block", goals), diff("ask_text", "markdown_block", root)]),
        frame(blocks=[diff("web_results", "web_result_block", {"op": "replace", "path": "", "value": {}})]),
        frame(
            blocks=[diff("web_results", "web_result_block", {"op": "add", "path": "/web_results", "value": SOURCES})]
        ),
    ]
    for index, chunk in enumerate(pieces(answer)):
        frames.append(
            frame(
                blocks=[diff("ask_text", "markdown_block", {"op": "add", "path": f"/chunks/{index}", "value": chunk})]
            )
        )
    done = {"progress": "DONE", "chunks": pieces(answer), "chunk_starting_offset": 0, "answer": answer}
    frames.append(terminal(blocks=[{"intended_usage": "ask_text", "markdown_block": done}]))
    return frames


def workflow_frames(answer):
    item = {
        "id": "i1",
        "type": "WORKFLOW_ITEM_TEXT",
        "variant": "answer",
        "payload": {"text_payload": {"chunks": [], "is_streaming": True}},
    }
    sources = {"id": "s1", "type": "WORKFLOW_ITEM_SOURCES", "payload": {"sources_payload": {"sources": SOURCES}}}
    block = {
        "version": "1.0",
        "status": "WORKFLOW_EXECUTING_STEPS",
        "steps": [{"id": "st0", "status": "WORKFLOW_PENDING", "title": "Search", "items": [sources]}],
    }

    def diff(*patches):
        return frame(
            blocks=[
                {"intended_usage": "workflow_root", "diff_block": {"field": "workflow_block", "patches": list(patches)}}
            ]
        )

    frames = [
        diff({"op": "replace", "path": "", "value": block}),
        diff({"op": "replace", "path": "/steps/0/status", "value": "WORKFLOW_COMPLETED"}),
        diff(
            {
                "op": "add",
                "path": "/steps/1",
                "value": {"id": "st1", "status": "WORKFLOW_PENDING", "title": "Answer", "items": [item]},
            }
        ),
    ]
    path = "/steps/1/items/0/payload/text_payload"
    for index, chunk in enumerate(pieces(answer)):
        frames.append(diff({"op": "add", "path": f"{path}/chunks/{index}", "value": chunk}))
    frames.append(
        diff(
            {"op": "replace", "path": f"{path}/text", "value": answer},
            {"op": "replace", "path": f"{path}/is_streaming", "value": False},
        )
    )
    frames.append(terminal())
    return frames


def text_frames(answer):
    frames = [frame(text=text_steps("", final=False))]
    for end in range(5, len(answer) + 5, 5):
        frames.append(frame(text=text_steps(answer[:end])))
    frames.append(terminal(text=text_steps(answer)))
    return frames


FORMATS = {
    "text": text_frames,
    "markdown": markdown_frames,
    "markdown_0": lambda a: markdown_frames(a, "ask_text_0_markdown"),
    "diff": diff_frames,
    "workflow": workflow_frames,
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_gives_the_answer_append_only(fmt):
    assembler, events = run(FORMATS[fmt](ANSWER))
    done = events[-1]
    assert isinstance(done, Completed)
    assert deltas(events) == done.answer == done.final_answer == ANSWER
    assert not done.revised
    assert [s.url for s in done.sources] == ["https://one.example/", "https://two.example/"]
    assert done.sources[0].date == "2026-01-02" and done.sources[1].date == "2026-02-03"
    assert done.thread.backend_uuid == "b1" and done.thread.context_uuid == "c1"
    assert done.title == "Capital"
    assert assembler.done


def test_text_format_is_not_reparsed_once_blocks_carry_the_answer():
    frames = markdown_frames(ANSWER)
    for f in frames[1:-1]:
        f["text"] = "not json and not the answer"  # would corrupt the answer if it were read
    _, events = run(frames)
    assert deltas(events) == ANSWER


def test_plain_string_text_is_the_answer():
    _, events = run([frame(), terminal(text="Just a plain answer.")])
    assert deltas(events) == "Just a plain answer."


def test_old_single_object_text_is_read():
    _, events = run([terminal(text=json.dumps({"answer": "Old style.", "web_results": SOURCES}))])
    assert deltas(events) == "Old style."
    assert events[-1].sources[0].title == "One"


def test_a_revised_terminal_answer_is_reported_not_garbled():
    frames = markdown_frames(ANSWER)
    revised = ANSWER.replace("[1]", "[2]").replace("large [2]", "large [1]")
    frames[-1]["blocks"][0]["markdown_block"]["answer"] = revised
    _, events = run(frames)
    done = events[-1]
    assert deltas(events) == done.answer == ANSWER
    assert done.final_answer == revised and done.revised


def test_a_later_repaint_from_offset_zero_does_not_double_the_text():
    frames = markdown_frames(ANSWER)
    repaint = {"progress": "IN_PROGRESS", "chunks": pieces(ANSWER)[:3], "chunk_starting_offset": 0}
    frames.insert(-1, frame(blocks=[{"intended_usage": "ask_text", "markdown_block": repaint}]))
    _, events = run(frames)
    assert deltas(events) == ANSWER


def test_failed_status_ends_the_run_with_the_message():
    assembler, events = run(
        [*markdown_frames(ANSWER)[:3], frame(status="FAILED", error_code="MODEL_ERROR", text="Model unavailable")]
    )
    assert events[-1] == Failed("Model unavailable", "MODEL_ERROR")
    assert assembler.done and assembler.completed is None
    assert assembler.feed(terminal()) == []


def test_clarifying_questions_are_informational_and_the_run_continues():
    step = {
        "step_type": "RESEARCH_CLARIFYING_QUESTIONS",
        "content": {
            "uuid": "e1",
            "title": "To focus the research",
            "questions": [{"question_text": "Which era?", "options": ["Modern (Recommended)", "Ancient"]}],
            "auto_skip_seconds": 60,
            "answers": [],
        },
    }
    steps = json.dumps([{"step_type": "INITIAL_QUERY", "content": {"query": "q"}}, step])
    frames = markdown_frames(ANSWER)
    frames.insert(1, frame(text=steps))
    frames.insert(2, frame(text=steps))  # repeated on later frames: reported once
    _, events = run(frames)
    asked = [e for e in events if isinstance(e, ClarifyingQuestions)]
    assert len(asked) == 1
    assert asked[0].questions[0].question == "Which era?"
    assert asked[0].questions[0].options[0] == "Modern (Recommended)"
    assert asked[0].auto_skip_seconds == 60
    assert deltas(events) == ANSWER and isinstance(events[-1], Completed)


def test_deep_research_answers_with_the_report_not_the_cover_note():
    report = "# Report\n\nLong findings [1]."
    frames = [
        frame(
            search_mode="RESEARCH",
            blocks=[
                {
                    "intended_usage": "ask_text",
                    "markdown_block": {"chunks": ["Cover note."], "chunk_starting_offset": 0},
                }
            ],
        )
    ]
    for end in (3, 12, len(report)):
        patch = {"op": "replace", "path": "/assets/0/research_report/source_content", "value": report[:end]}
        first = (
            [{"op": "replace", "path": "", "value": {"assets": [{"research_report": {"source_content": ""}}]}}]
            if end == 3
            else []
        )
        frames.append(
            frame(
                search_mode="RESEARCH",
                blocks=[
                    {
                        "intended_usage": "unified_assets",
                        "diff_block": {"field": "unified_assets_block", "patches": [*first, patch]},
                    }
                ],
            )
        )
    frames.append(terminal(search_mode="RESEARCH"))
    _, events = run(frames)
    assert deltas(events) == report == events[-1].final_answer


def test_reasoning_comes_from_goals_steps_and_thinking_items():
    frames = diff_frames(ANSWER)
    thinking = {
        "id": "t1",
        "type": "WORKFLOW_ITEM_TEXT",
        "variant": "thinking",
        "payload": {"text_payload": {"chunks": ["Let me think"]}},
    }
    # The step list is read while no block carries the answer (later frames repeat the same steps).
    frames.insert(0, frame(text=text_steps("", final=False)))
    frames.insert(
        2,
        frame(
            blocks=[
                {"intended_usage": "workflow_root", "workflow_block": {"steps": [{"id": "w", "items": [thinking]}]}}
            ]
        ),
    )
    _, events = run(frames)
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert "Searching the web\n" in reasoning
    assert "Searching the web: capital of france\n" in reasoning
    assert "Let me think" in reasoning
    assert events[-1].reasoning == reasoning
    assert ANSWER not in reasoning


def test_thread_title_related_and_media_come_through():
    frames = markdown_frames(ANSWER)
    media = [
        {
            "medium": "image",
            "image": "https://img.example/a.png",
            "url": "https://page.example/",
            "name": "A",
            "image_width": 10,
            "image_height": 20,
        }
    ]
    frames[1]["media_items"] = media
    frames[-1]["related_query_items"] = [{"text": "Ignored when related_queries exists"}]
    frames[-1]["read_write_token"] = "tok"
    _, events = run(frames)
    kinds = [type(e) for e in events]
    assert kinds.count(MediaUpdate) == 1 and TitleUpdate in kinds and RelatedQuestions in kinds
    done = events[-1]
    assert done.media[0].url == "https://img.example/a.png" and done.media[0].origin_url == "https://page.example/"
    assert done.media[0].width == 10
    assert done.related_questions == ("More?",)
    assert done.thread.read_write_token == "tok"
    updates = [e for e in events if isinstance(e, ThreadUpdate)]
    assert updates[-1].thread.read_write_token == "tok" and len(updates) == 2


def test_sources_update_only_when_they_change():
    _, events = run(markdown_frames(ANSWER))
    assert sum(isinstance(e, SourcesUpdate) for e in events) == 1


def test_a_bad_patch_is_skipped_without_losing_the_answer():
    frames = diff_frames(ANSWER)
    bad = {
        "intended_usage": "ask_text",
        "diff_block": {"field": "markdown_block", "patches": [{"op": "remove", "path": "/nope/1"}]},
    }
    frames[4]["blocks"].append(bad)
    assembler, events = run(frames)
    assert deltas(events) == ANSWER and assembler.bad_patches == 1


def test_frames_after_completion_are_ignored():
    assembler, events = run(markdown_frames(ANSWER))
    assert (
        assembler.feed(
            frame(
                blocks=[
                    {"intended_usage": "ask_text", "markdown_block": {"chunks": ["x"], "chunk_starting_offset": 99}}
                ]
            )
        )
        == []
    )


def test_a_source_replaced_in_place_by_a_patch_is_noticed():
    def diff(*patches):
        return frame(
            blocks=[
                {"intended_usage": "web_results", "diff_block": {"field": "web_result_block", "patches": list(patches)}}
            ]
        )

    assembler, events = run(
        [
            diff({"op": "replace", "path": "", "value": {"web_results": copy.deepcopy(SOURCES)}}),
            diff({"op": "replace", "path": "/web_results/0/url", "value": "https://changed.example/"}),
        ]
    )
    updates = [e for e in events if isinstance(e, SourcesUpdate)]
    assert [u.sources[0].url for u in updates] == ["https://one.example/", "https://changed.example/"]


# ---- the append fast path agrees with the general path ---------------------------------------------------


def both_paths(frames):
    """Feed the same frames through the fast path and through the general path only; return both outcomes."""
    outcomes = []
    for fast in (True, False):
        assembler = AnswerAssembler()
        assembler._fast = fast
        steps = []  # what each frame produced and the state after it
        for f in copy.deepcopy(frames):
            events = assembler.feed(f)
            state = (assembler.answer, assembler.completed, assembler.failure, assembler.sources, assembler.media)
            steps.append((events, state, assembler.model, assembler.thread, assembler.research, assembler.reasoning))
        outcomes.append(steps)
    return outcomes


def fake_frames(fmt, **options):
    from perplexity.testing.envelope import AskContext
    from perplexity.testing.generate import build_frames
    from perplexity.testing.script import Reply

    ctx = AskContext("q", "turbo", "b1", "c1", "f1", "fc1", "rw", "slug", "cur", "Title")
    return [f for f in build_frames(ctx, Reply(format=fmt, chunk_size=5, **options)) if f]


@pytest.mark.parametrize("fmt", ["text", "markdown", "diff", "workflow", "plaintext"])
@pytest.mark.parametrize("options", [{}, {"reasoning": True, "revise_final": "Other answer [1]."}, {"research": True}])
def test_fast_path_agrees_on_every_fake_format(fmt, options):
    fast, general = both_paths(fake_frames(fmt, **options))
    assert fast == general


def markdown_copy_frames(answer):
    return markdown_frames(answer, usage="ask_text_0_markdown")


@pytest.mark.parametrize("make", [markdown_frames, markdown_copy_frames, diff_frames, workflow_frames, text_frames])
def test_fast_path_agrees_on_hand_built_formats(make):
    fast, general = both_paths(make(ANSWER))
    assert fast == general


def test_fast_path_agrees_on_the_streamed_captures():
    from perplexity.testing import load_capture_frames

    from .conftest import CAPTURES

    for name in (
        "ak2k-pplx-agent-tools__fetch-url__example-com-prompt__2026-05-13.events.jsonl",
        "Zykairotis-Perplexity-claude__client_streaming__anon-turbo-concise__2025-10-12.json",
    ):
        fast, general = both_paths(load_capture_frames(CAPTURES / name))
        assert fast == general and any(events for events, *_ in fast), name


_CLARIFYING_STEP = {
    "step_type": "RESEARCH_CLARIFYING_QUESTIONS",
    "content": {"uuid": "e9", "title": "Focus", "questions": [{"question_text": "Which?", "options": ["A", "B"]}]},
}


def _mutations():
    """Frames that look like appends but are not, one way each: the fast path must leave all of them alone."""
    chunk = {"progress": "IN_PROGRESS", "chunks": [" more"], "chunk_starting_offset": 99}

    def md(**changes):
        return {"intended_usage": "ask_text", "markdown_block": {**chunk, **changes}}

    return {
        "repaint": frame(blocks=[md(chunk_starting_offset=0, chunks=["Re", "painted"])]),
        "gap": frame(blocks=[md(chunk_starting_offset=1000)]),
        "done": frame(blocks=[md(progress="DONE")]),
        "done, revised": frame(blocks=[md(progress="DONE", answer="Paris is the capital [1]. It is large.")]),
        "no offset": frame(blocks=[{"intended_usage": "ask_text", "markdown_block": {"chunks": [" x"]}}]),
        "text too": frame(blocks=[md()], text=json.dumps([{"step_type": "FINAL", "content": {"answer": "{}"}}])),
        "clarifying text": frame(blocks=[md()], text=json.dumps([_CLARIFYING_STEP])),
        "model": frame(blocks=[md()], display_model="other"),
        "thread": frame(blocks=[md()], backend_uuid="b2"),
        "research": frame(blocks=[md()], search_mode="research"),
        "media": frame(blocks=[md()], media_items=[{"url": "https://img.example/a.png", "medium": "image"}]),
        "error": frame(blocks=[md()], error_code="BOOM", status="FAILED"),
        "error pending": frame(blocks=[md()], error_code="BOOM"),
        "completed": terminal(blocks=[md()]),
        "other usage": frame(blocks=[{"intended_usage": "ask_text_1_markdown", "markdown_block": chunk}]),
        "extra key": frame(blocks=[{**md(), "diff_block": {"field": "markdown_block", "patches": []}}]),
        "two blocks": frame(blocks=[md(), md()]),
        "sources": frame(blocks=[md(), {"intended_usage": "web_results", "web_result_block": {"web_results": []}}]),
        "not a list": frame(blocks=[md(chunks=" x")]),
        "non-string chunk": frame(blocks=[md(chunks=[" a", 7, " b"])]),
        "no status": {k: v for k, v in frame(blocks=[md()]).items() if k != "status"},
    }


@pytest.mark.parametrize("name", sorted(_mutations()))
def test_fast_path_agrees_when_a_frame_is_not_a_plain_append(name):
    frames = markdown_frames(ANSWER)
    middle = len(frames) // 2
    odd = copy.deepcopy(_mutations()[name])
    for block in odd.get("blocks") or ():
        if block.get("markdown_block", {}).get("chunk_starting_offset") == 99:
            block["markdown_block"]["chunk_starting_offset"] = middle - 1  # a true append position
    fast, general = both_paths([*frames[:middle], odd, *frames[middle:]])
    assert fast == general


def test_fast_path_takes_the_plain_appends():
    assembler = AnswerAssembler()
    general = assembler._feed_append
    taken = []
    assembler._feed_append = lambda f: taken.append(general(f)) or taken[-1]
    frames = markdown_frames(ANSWER)
    events = [event for f in frames for event in assembler.feed(f)]
    assert deltas(events) == ANSWER
    # The first answer frame starts the tracking, the terminal one is not an append: all others are fast.
    assert sum(result is not None for result in taken) == len(frames) - 3
