"""Tests of the fake Perplexity upstream itself, over real loopback HTTP (requests, http.client, sockets)."""

from __future__ import annotations

import copy
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from perplexity.testing import FakePerplexity, Fault, Reply, load_capture_frames

COOKIE = "__Secure-next-auth.session-token"
ASK = "/rest/sse/perplexity_ask"
CAPTURES = Path(__file__).parent / "fixtures" / "captures"
AK_CAPTURE = CAPTURES / "ak2k-pplx-agent-tools__fetch-url__example-com-prompt__2026-05-13.events.jsonl"
ZK_STREAM = CAPTURES / "Zykairotis-Perplexity-claude__client_streaming__anon-turbo-concise__2025-10-12.json"
ZK_FINAL = CAPTURES / "Zykairotis-Perplexity-claude__client_reasoning_mode__final-frame__2025-10-12.json"
ZK_FOLLOW = (
    CAPTURES / "Zykairotis-Perplexity-claude__client_follow_up__initial-and-followup-final-frames__2025-10-12.json"
)
ANSWER = "Paris is the capital of France [1]. It lies on the Seine [2]."


# ---- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakePerplexity(session_token="test-session-token") as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture
def session(fake):
    with requests.Session() as s:
        s.cookies.set(COOKIE, fake.session_token)
        yield s


def ask_body(query: str = "What is the capital of France?", **params: Any) -> dict[str, Any]:
    base = {
        "version": "2.18",
        "source": "default",
        "model_preference": "turbo",
        "mode": "copilot",
        "frontend_uuid": str(uuid.uuid4()),
        "frontend_context_uuid": str(uuid.uuid4()),
        "query_source": "home",
        "attachments": [],
    }
    base.update(params)
    return {"query_str": query, "params": base}


def post_ask(fake, session, body=None) -> tuple[int, dict[str, str], bytes]:
    url = f"{fake.url}{ASK}?version=2.18&source=default"
    with session.post(url, json=body or ask_body(), stream=True, timeout=5) as resp:
        return resp.status_code, dict(resp.headers), b"".join(resp.iter_content(None))


def parse_sse(raw: bytes) -> list[tuple[str, str]]:
    """Split a CRLF SSE body into (event, data) pairs; comments become ("comment", text)."""
    events = []
    for block in raw.decode().split("\r\n\r\n"):
        if not block:
            continue
        lines = block.split("\r\n")
        if lines[0].startswith(":"):
            events.append(("comment", lines[0]))
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], fields["data"]))
    return events


def stream_frames(raw: bytes) -> list[dict[str, Any]]:
    """Check the framing of a complete stream and return its message frames."""
    assert b"\n" not in raw.replace(b"\r\n", b""), "every line must end with CRLF"
    events = [e for e in parse_sse(raw) if e[0] != "comment"]
    assert events[-1] == ("end_of_stream", "{}")
    assert all(name == "message" for name, _ in events[:-1])
    return [json.loads(data) for _, data in events[:-1]]


def apply_ops(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """A minimal RFC 6902 applier (add/replace), independent of the fake's own."""
    for op in ops:
        if op["path"] == "":
            doc = copy.deepcopy(op["value"])
            continue
        *parents, last = op["path"][1:].split("/")
        target = doc
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if isinstance(target, list) and op["op"] == "add":
            target.insert(len(target) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif isinstance(target, list):
            target[int(last)] = copy.deepcopy(op["value"])
        else:
            target[last] = copy.deepcopy(op["value"])
    return doc


def accumulate(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold streaming blocks (diffs and markdown deltas) into one document per usage."""
    docs: dict[str, Any] = {}
    for frame in frames:
        for block in frame.get("blocks", []):
            usage = block["intended_usage"]
            if "diff_block" in block:
                docs[usage] = apply_ops(docs.get(usage, {}), block["diff_block"]["patches"])
            elif "markdown_block" in block:
                md = block["markdown_block"]
                old = docs.get(usage, {}).get("chunks", [])
                docs[usage] = {**md, "chunks": old[: md["chunk_starting_offset"]] + md["chunks"]}
            else:
                (kind,) = [k for k in block if k != "intended_usage"]
                docs[usage] = block[kind]
    return docs


def block(frame: dict[str, Any], usage: str) -> dict[str, Any]:
    (found,) = [b for b in frame.get("blocks", []) if b["intended_usage"] == usage]
    (kind,) = [k for k in found if k != "intended_usage"]
    return found[kind]


def final_answer_in_text(text: str) -> str:
    steps = json.loads(text)
    (final,) = [s for s in steps if s["step_type"] == "FINAL"]
    return json.loads(final["content"]["answer"])["answer"]


def workflow_answer(doc: dict[str, Any]) -> str:
    items = [i for step in doc["steps"] for i in step["items"] if i["type"] == "WORKFLOW_ITEM_TEXT"]
    answers = [i["payload"]["text_payload"] for i in items if i["variant"] == "answer"]
    return answers[-1].get("text", "".join(answers[-1]["chunks"]))


# ---- answer formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "markdown", "diff", "workflow", "plaintext"])
def test_every_format_is_a_well_formed_stream_ending_in_completed(fake, session, fmt):
    body = ask_body()
    fake.enqueue(Reply(answer=ANSWER, format=fmt, chunk_size=7))
    status, headers, raw = post_ask(fake, session, body)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Transfer-Encoding"] == "chunked"
    frames = stream_frames(raw)
    *streaming, pending, completed = frames
    assert [f["status"] for f in frames].count("COMPLETED") == 1
    assert pending["text_completed"] and pending["final"] and pending["status"] == "PENDING"
    assert completed["final_sse_message"] and completed["message_mode"] == "FULL"
    assert completed["reconnectable"] is False and completed["thread_title"]
    assert completed["related_queries"] and completed["related_query_items"][0]["type"] == "DEFAULT"
    assert "_extras" in completed
    assert all(f["uuid"] == body["params"]["frontend_uuid"] for f in frames)
    assert all(f.get("blocks") != [] for f in frames), "blocks only appear on frames where they changed"
    assert all("diff_block" not in b for b in completed["blocks"]), "terminal frame is plain snapshots"
    assert "read_write_token" not in frames[0] and "read_write_token" in frames[1]


def test_text_format_carries_the_answer_only_in_the_cumulative_text(fake, session):
    fake.enqueue(Reply(answer=ANSWER, format="text", chunk_size=10))
    frames = stream_frames(post_ask(fake, session)[2])
    assert all(isinstance(f["text"], str) for f in frames)
    assert not any(b["intended_usage"].startswith("ask_text") for f in frames for b in f.get("blocks", []))
    assert final_answer_in_text(frames[-2]["text"]) == ANSWER
    growth = [len(final_answer_in_text(f["text"])) for f in frames if "FINAL" in f["text"]]
    assert growth == sorted(growth) and growth[0] < len(ANSWER)
    assert [s["step_type"] for s in json.loads(frames[0]["text"])] == ["INITIAL_QUERY"]


def test_markdown_format_places_chunks_by_index_and_repaints_at_the_end(fake, session):
    fake.enqueue(Reply(answer=ANSWER, format="markdown", chunk_size=9))
    *streaming, completed = stream_frames(post_ask(fake, session)[2])
    assert not any("text" in f for f in streaming)
    offsets = [block(f, "ask_text")["chunk_starting_offset"] for f in streaming if _has(f, "ask_text")]
    assert offsets == list(range(len(offsets)))
    assert "".join(accumulate(streaming)["ask_text"]["chunks"]) == ANSWER
    final = block(completed, "ask_text")
    assert final["progress"] == "DONE" and final["chunk_starting_offset"] == 0 and final["answer"] == ANSWER
    assert block(completed, "ask_text_0_markdown")["chunks"] == [ANSWER]
    assert final_answer_in_text(completed["text"]) == ANSWER
    steps = [block(f, "pro_search_steps")["steps"] for f in streaming if _has(f, "pro_search_steps")]
    assert all(len(s) == 1 for s in steps), "streaming pro_search_steps list only new steps"
    assert len(block(completed, "pro_search_steps")["steps"]) == len(steps)


def _has(frame: dict[str, Any], usage: str) -> bool:
    return any(b["intended_usage"] == usage for b in frame.get("blocks", []))


def test_diff_format_sends_json_patch_starting_with_root_replace(fake, session):
    fake.enqueue(Reply(answer=ANSWER, format="diff", chunk_size=8))
    *streaming, completed = stream_frames(post_ask(fake, session)[2])
    first_ops: dict[str, dict[str, Any]] = {}
    for frame in streaming:
        for b in frame.get("blocks", []):
            if "diff_block" in b:
                first_ops.setdefault(b["intended_usage"], b["diff_block"]["patches"][0])
    assert first_ops and all(op == {**op, "op": "replace", "path": ""} for op in first_ops.values())
    docs = accumulate(streaming)
    assert "".join(docs["ask_text"]["chunks"]) == ANSWER
    assert [g["description"] for g in docs["plan"]["goals"]] == ["Searching the web"]
    assert block(completed, "ask_text")["answer"] == ANSWER
    assert [r["url"] for r in block(completed, "web_results")["web_results"]] == [
        r["url"] for r in docs["web_results"]["web_results"]
    ]


def test_workflow_format_streams_the_answer_only_in_workflow_root(fake, session):
    fake.enqueue(Reply(answer=ANSWER, format="workflow", chunk_size=8))
    *streaming, pending, completed = stream_frames(post_ask(fake, session)[2])
    assert not any(_has(f, "ask_text") for f in [*streaming, pending, completed])
    assert "text" not in completed
    paths = [
        op["path"]
        for f in streaming
        for b in f.get("blocks", [])
        if "diff_block" in b
        for op in b["diff_block"]["patches"]
    ]
    assert any(p.endswith("/payload/text_payload/chunks/0") for p in paths)
    doc = accumulate([*streaming, pending])["workflow_root"]
    text_item = doc["steps"][-1]["items"][0]["payload"]["text_payload"]
    assert text_item["text"] == ANSWER and text_item["is_streaming"] is False
    types = [i["type"] for s in doc["steps"] for i in s["items"]]
    assert {"WORKFLOW_ITEM_QUERIES", "WORKFLOW_ITEM_SOURCES", "WORKFLOW_ITEM_TEXT"} <= set(types)
    assert workflow_answer(block(completed, "workflow_root")) == ANSWER


def test_markdown_with_send_text_carries_both_channels_like_the_ak_capture(fake, session):
    fake.enqueue(Reply(answer=ANSWER, format="markdown", send_text=True))
    frames = stream_frames(post_ask(fake, session)[2])
    assert all(isinstance(f["text"], str) for f in frames)
    assert final_answer_in_text(frames[-2]["text"]) == "".join(accumulate(frames[:-1])["ask_text"]["chunks"])


def test_plaintext_quirk_puts_the_raw_answer_in_terminal_text(fake, session):
    fake.enqueue(Reply(answer=ANSWER, format="plaintext"))
    *streaming, completed = stream_frames(post_ask(fake, session)[2])
    assert not any("text" in f for f in streaming)
    assert completed["text"] == ANSWER
    with pytest.raises(json.JSONDecodeError):
        json.loads(completed["text"])


def test_default_reply_is_generated_from_the_query(fake, session):
    frames = stream_frames(post_ask(fake, session, ask_body("Why is the sky blue?"))[2])
    answer = block(frames[-1], "ask_text")["answer"]
    assert answer.startswith("Answer to: Why is the sky blue?") and "[1]" in answer and "[2]" in answer
    urls = [r["url"] for r in block(frames[-1], "web_results")["web_results"]]
    assert urls == ["https://example.com/1", "https://example.com/2", "https://example.com/3"]
    assert frames[-1]["thread_title"] == "Why is the sky blue?"
    again = stream_frames(post_ask(fake, session, ask_body("Why is the sky blue?"))[2])
    assert block(again[-1], "ask_text")["answer"] == answer


def test_revise_final_changes_only_the_terminal_answer(fake, session):
    revised = ANSWER.replace("[2]", "[3]")
    fake.enqueue(Reply(answer=ANSWER, format="diff", revise_final=revised))
    *streaming, completed = stream_frames(post_ask(fake, session)[2])
    assert "".join(accumulate(streaming)["ask_text"]["chunks"]) == ANSWER
    assert block(completed, "ask_text")["answer"] == revised
    assert final_answer_in_text(completed["text"]) == revised


def test_reasoning_reply_adds_goals_thinking_items_and_terminal_text(fake, session):
    fake.enqueue(Reply(answer=ANSWER, format="diff", reasoning=True))
    *streaming, completed = stream_frames(post_ask(fake, session)[2])
    docs = accumulate(streaming)
    assert len(docs["plan"]["goals"]) > 1
    variants = [i["variant"] for s in docs["workflow_root"]["steps"] for i in s["items"]]
    assert "thinking" in variants and "answer" not in variants
    assert completed["_extras"]["pro_search_mode"] == "reasoning"
    assert final_answer_in_text(completed["text"]) == ANSWER


def test_clarifying_questions_appear_mid_stream_and_the_run_continues(fake, session):
    fake.enqueue(Reply(answer=ANSWER, format="text", clarifying=True))
    frames = stream_frames(post_ask(fake, session)[2])
    steps = json.loads(frames[-1]["text"])
    names = [s["step_type"] for s in steps]
    assert names.index("RESEARCH_CLARIFYING_QUESTIONS") < names.index("SEARCH_WEB") < names.index("FINAL")
    content = steps[names.index("RESEARCH_CLARIFYING_QUESTIONS")]["content"]
    assert content["auto_skip_seconds"] == 60 and len(content["questions"]) == 3
    assert content["questions"][0]["options"][0].endswith("(Recommended)")
    assert frames[-1]["status"] == "COMPLETED"


def test_research_streams_the_report_by_whole_string_replace(fake, session):
    report = "# Report\n\nA long body [1] with several paragraphs [2]."
    fake.enqueue(Reply(answer=report, format="diff", research=True, chunk_size=10))
    body = ask_body(model_preference="pplx_alpha")
    *streaming, completed = stream_frames(post_ask(fake, session, body)[2])
    assert all(f["search_mode"] == "RESEARCH" and f["display_model"] == "pplx_alpha" for f in streaming)
    replaces = [
        op["value"]
        for f in streaming
        for b in f.get("blocks", [])
        if b["intended_usage"] == "unified_assets"
        for op in b["diff_block"]["patches"]
        if op["path"] == "/assets/0/research_report/source_content"
    ]
    assert replaces[-1] == report and all(report.startswith(v) for v in replaces)
    steps = json.loads(completed["text"])
    (research,) = [s for s in steps if s["step_type"] == "RESEARCH_ANSWER"]
    assert research["content"]["answer"] == report
    cover = block(completed, "ask_text")["answer"]
    assert cover != report and final_answer_in_text(completed["text"]) == cover


def test_media_items_are_streamed_and_repeated_on_the_terminal_frame(fake, session):
    media = [{"url": "https://example.com/cat", "image": "https://example.com/cat.png", "name": "A cat"}]
    fake.enqueue(Reply(answer=ANSWER, media=media))
    frames = stream_frames(post_ask(fake, session)[2])
    items = accumulate(frames[:-1])["answer_media_items"]["media_block"]["media_items"]
    assert items[0]["image"] == "https://example.com/cat.png" and items[0]["medium"] == "image"
    assert frames[-1]["media_items"][0]["name"] == "A cat"


def test_custom_sources_are_completed_with_the_real_item_keys(fake, session):
    fake.enqueue(Reply(answer="X [1]", sources=[{"name": "Doc", "url": "https://docs.python.org/3/"}]))
    frames = stream_frames(post_ask(fake, session)[2])
    (source,) = block(frames[-1], "web_results")["web_results"]
    assert source["meta_data"]["domain_name"] == "docs.python.org" and source["is_attachment"] is False


def test_heartbeats_fill_delays_when_asked(fake, session):
    fake.enqueue(Reply(answer="Hi", first_byte_delay=0.12, heartbeat_every=0.05))
    raw = post_ask(fake, session)[2]
    assert parse_sse(raw)[0] == ("comment", ": ping")
    assert stream_frames(raw)[-1]["status"] == "COMPLETED"


# ---- replaying captures -------------------------------------------------------------------------


def test_jsonl_capture_replays_verbatim_with_end_of_stream(fake, session):
    frames = load_capture_frames(AK_CAPTURE)
    lines = AK_CAPTURE.read_text().splitlines()
    assert frames == [json.loads(line) for line in lines] and frames[-1] == {}
    fake.enqueue(Reply(frames=frames))
    replayed = stream_frames(post_ask(fake, session)[2])
    assert replayed == frames[:-1]


def test_capture_wrappers_are_unwrapped_and_text_reencoded():
    streaming = load_capture_frames(ZK_STREAM)
    assert len(streaming) == 20 and streaming[-1] != {}, "a capture cut mid-stream stays truncated"
    (final, end) = load_capture_frames(ZK_FINAL)
    assert end == {} and isinstance(final["text"], str)
    assert json.loads(final["text"])[0]["step_type"] == "INITIAL_QUERY"
    initial, follow_up, end = load_capture_frames(ZK_FOLLOW)
    assert initial["context_uuid"] == follow_up["context_uuid"] and end == {}
    (only, end) = load_capture_frames(ZK_FOLLOW, part="follow_up_result")
    assert only["backend_uuid"] == follow_up["backend_uuid"]


def test_replayed_capture_without_terminal_frame_has_no_end_of_stream(fake, session):
    fake.enqueue(Reply(frames=load_capture_frames(ZK_STREAM)))
    events = parse_sse(post_ask(fake, session)[2])
    assert len(events) == 20 and all(name == "message" for name, _ in events)


# ---- threads and follow-ups ---------------------------------------------------------------------


def _first_ask(fake, session) -> tuple[dict[str, Any], dict[str, Any]]:
    body = ask_body()
    return body, stream_frames(post_ask(fake, session, body)[2])[-1]


def _follow_up(first: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    params = {
        "query_source": "followup",
        "followup_source": "link",
        "last_backend_uuid": first["backend_uuid"],
        "read_write_token": first["read_write_token"],
    }
    params.update(overrides)
    body = ask_body("Tell me more", **params)
    del body["params"]["frontend_context_uuid"]
    return body


def test_new_thread_gets_fresh_ids_and_slug_equal_to_backend_uuid(fake, session):
    body, done = _first_ask(fake, session)
    assert done["thread_url_slug"] == done["backend_uuid"]
    assert done["frontend_context_uuid"] == body["params"]["frontend_context_uuid"]
    thread = fake.threads[done["context_uuid"]]
    assert thread.entries == [done["backend_uuid"]] and thread.read_write_token == done["read_write_token"]
    assert fake.asks[0].thread == done["context_uuid"]


def test_good_follow_up_continues_the_thread(fake, session):
    body, first = _first_ask(fake, session)
    status, _, raw = post_ask(fake, session, _follow_up(first))
    assert status == 200
    second = stream_frames(raw)[-1]
    for key in ("context_uuid", "thread_url_slug", "read_write_token", "thread_title", "frontend_context_uuid"):
        assert second[key] == first[key], key
    assert second["backend_uuid"] != first["backend_uuid"]
    assert fake.threads[first["context_uuid"]].entries == [first["backend_uuid"], second["backend_uuid"]]
    assert [a.thread for a in fake.asks] == [first["context_uuid"]] * 2


@pytest.mark.parametrize(
    "overrides",
    [{"read_write_token": "wrong-token"}, {"read_write_token": None}, {"last_backend_uuid": str(uuid.uuid4())}],
)
def test_bad_follow_up_is_thread_gone_and_keeps_the_script(fake, session, overrides):
    _, first = _first_ask(fake, session)
    fake.enqueue(Reply(answer="kept for the next ask"))
    status, headers, raw = post_ask(fake, session, _follow_up(first, **overrides))
    assert (status, headers["Content-Type"], raw) == (403, "application/json", b"{}")
    frames = stream_frames(post_ask(fake, session)[2])
    assert block(frames[-1], "ask_text")["answer"] == "kept for the next ask"


def test_delete_thread_then_reconnect_and_follow_up_are_gone(fake, session):
    _, first = _first_ask(fake, session)
    url = f"{fake.url}/rest/sse/perplexity_ask/reconnect/{first['backend_uuid']}"
    with session.post(url, json={"reconnectInitialSnapshot": True}, stream=True) as resp:
        (again,) = stream_frames(b"".join(resp.iter_content(None)))
    assert again["status"] == "COMPLETED" and again["backend_uuid"] == first["backend_uuid"]
    delete = {"entry_uuid": first["backend_uuid"], "read_write_token": "wrong"}
    assert session.delete(f"{fake.url}/rest/thread/delete_thread_by_entry_uuid", json=delete).status_code == 403
    delete["read_write_token"] = first["read_write_token"]
    assert session.delete(f"{fake.url}/rest/thread/delete_thread_by_entry_uuid", json=delete).status_code == 200
    assert fake.threads == {}
    resp = session.post(url, json={"reconnectInitialSnapshot": True})
    assert (resp.status_code, resp.content) == (403, b"{}")
    assert post_ask(fake, session, _follow_up(first))[0] == 403


def test_terminate_mid_stream_ends_with_completed_but_text_incomplete(fake, session):
    fake.enqueue(Reply(answer=ANSWER, chunk_size=4, frame_delay=0.02))
    url = f"{fake.url}{ASK}"
    with session.post(url, json=ask_body(), stream=True) as resp:
        lines = resp.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith(b"data:"))[5:])
        body = {"entry_uuid": first["backend_uuid"], "context_uuid": first["context_uuid"]}
        answer = session.post(f"{fake.url}/rest/sse/perplexity_terminate", json=body).json()
        assert answer["status"] == "completed" and answer["thread_url_slug"] == first["thread_url_slug"]
        rest = [json.loads(line[5:]) for line in lines if line.startswith(b"data:")]
    assert rest[-1] == {} and rest[-2]["status"] == "COMPLETED" and rest[-2]["text_completed"] is False


# ---- authentication and validation ---------------------------------------------------------------


def test_ask_without_a_valid_cookie_is_403_json(fake, session):
    session.cookies.set(COOKIE, "not-the-token")
    status, headers, raw = post_ask(fake, session)
    assert status == 403 and headers["Content-Type"] == "application/json" and "detail" in json.loads(raw)
    assert fake.threads == {}


def test_chunked_session_cookies_are_joined(fake):
    token = fake.session_token
    with requests.Session() as s:
        s.cookies.set(f"{COOKIE}.0", token[:5])
        s.cookies.set(f"{COOKIE}.1", token[5:])
        assert post_ask(fake, s)[0] == 200


def test_expired_session_fails_asks_and_empties_the_session(fake, session):
    fake.session_valid = False
    assert post_ask(fake, session)[0] == 403
    resp = session.get(f"{fake.url}/api/auth/session")
    assert (resp.status_code, resp.json()) == (200, {})
    table = session.get(f"{fake.url}/rest/rate-limit/status").json()
    assert not table["free_queries"]["available"]
    assert all(not mode["available"] for mode in table["modes"].values())


@pytest.mark.parametrize("missing", ["query_str", "params", "frontend_uuid", "model_preference", "version"])
def test_ask_body_missing_a_required_field_is_422(fake, session, missing):
    body = ask_body()
    body.pop(missing, None)
    body.get("params", {}).pop(missing, None)
    status, _, raw = post_ask(fake, session, body)
    assert status == 422 and missing in json.dumps(json.loads(raw)["detail"])


def test_requests_are_recorded_with_query_and_lower_case_headers(fake, session):
    body = ask_body()
    post_ask(fake, session, body)
    (recorded,) = fake.asks
    assert recorded.query == {"version": "2.18", "source": "default"}
    assert recorded.json == body and json.loads(recorded.body) == body
    assert recorded.headers["content-type"] == "application/json"
    assert f"{COOKIE}=" in recorded.headers["cookie"]


# ---- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "marker"),
    [
        (Fault("cloudflare"), 403, "text/html", b"Just a moment..."),
        (Fault("cloudflare_503"), 503, "text/html", b"_cf_chl_opt"),
        (Fault("auth"), 403, "application/json", b'"detail"'),
        (Fault("auth_401"), 401, "application/json", b'"detail"'),
        (Fault("rate_limit", retry_after=3), 429, "application/json", b'"detail"'),
        (Fault("server_error"), 500, "application/json", b'"detail"'),
        (Fault("server_error", status=502), 502, "application/json", b"Bad Gateway"),
        (Fault("html_200"), 200, "text/html", b"<!DOCTYPE html>"),
        (Fault("thread_gone"), 403, "application/json", b"{}"),
    ],
)
def test_pre_stream_faults(fake, session, fault, status, content_type, marker):
    fake.enqueue(fault)
    got_status, headers, raw = post_ask(fake, session)
    assert got_status == status and headers["Content-Type"].startswith(content_type) and marker in raw
    assert "cf-ray" in {k.lower() for k in headers}
    if fault.kind == "rate_limit":
        assert headers["Retry-After"] == "3"
    if fault.kind.startswith("cloudflare"):
        assert headers["cf-mitigated"] == "challenge"
    assert fake.threads == {} and fake.streams_started == 0


def test_fault_times_then_normal_reply(fake, session):
    fake.enqueue(Fault("rate_limit", retry_after=None, times=2), Reply(answer="finally"))
    first, second = post_ask(fake, session), post_ask(fake, session)
    assert first[0] == second[0] == 429 and "Retry-After" not in first[1]
    status, _, raw = post_ask(fake, session)
    assert status == 200 and block(stream_frames(raw)[-1], "ask_text")["answer"] == "finally"
    assert stream_frames(post_ask(fake, session)[2])[-1]["status"] == "COMPLETED", "then the default reply"


def test_malformed_fault_inserts_a_non_json_frame_and_continues(fake, session):
    fake.enqueue(Fault("malformed", after_frames=2))
    events = parse_sse(post_ask(fake, session)[2])
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[2][1])
    assert json.loads(events[-2][1])["status"] == "COMPLETED" and events[-1][0] == "end_of_stream"


@pytest.mark.parametrize(("kind", "code"), [("failed", "INTERNAL_ERROR"), ("rate_limited_in_stream", "RATE_LIMIT")])
def test_in_stream_failure_frames(fake, session, kind, code):
    fake.enqueue(Fault(kind, after_frames=3))
    frames = stream_frames(post_ask(fake, session)[2])
    assert len(frames) == 4
    failed = frames[-1]
    assert failed["status"] == "FAILED" and code in failed["error_code"] and failed["text"]


def test_truncated_fault_ends_without_completed(fake, session):
    fake.enqueue(Fault("truncated", after_frames=3))
    frames = stream_frames(post_ask(fake, session)[2])
    assert len(frames) == 3 and all(f["status"] == "PENDING" for f in frames)


def test_eof_fault_ends_the_body_without_end_of_stream(fake, session):
    fake.enqueue(Fault("eof", after_frames=2))
    status, _, raw = post_ask(fake, session)
    assert status == 200 and [name for name, _ in parse_sse(raw)] == ["message", "message"]
    assert post_ask(fake, session)[0] == 200, "the connection stays usable"


def test_reset_fault_drops_the_connection_mid_stream(fake, session):
    fake.enqueue(Fault("reset", after_frames=2))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        post_ask(fake, session)
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=1)


def test_reset_before_the_status_line(fake, session):
    fake.enqueue(Fault("reset", after_frames=-1))
    with pytest.raises(requests.exceptions.ConnectionError):
        post_ask(fake, session)
    assert fake.streams_started == 0


def test_slow_first_byte_delays_the_status_line(fake, session):
    fake.enqueue(Fault("slow_first_byte", delay=0.2))
    started = time.monotonic()
    with session.post(f"{fake.url}{ASK}", json=ask_body(), stream=True) as resp:
        waited = time.monotonic() - started
        assert resp.status_code == 200
        frames = stream_frames(b"".join(resp.iter_content(None)))
    assert waited >= 0.19 and frames[-1]["status"] == "COMPLETED"


def test_stall_holds_the_stream_silent_then_carries_on(fake, session):
    fake.enqueue(Fault("stall", after_frames=2, delay=0.2))
    started = time.monotonic()
    frames = stream_frames(post_ask(fake, session)[2])
    assert time.monotonic() - started >= 0.19 and frames[-1]["status"] == "COMPLETED"


def _read_until(sock: socket.socket, needle: bytes, count: int) -> bytes:
    data = b""
    while data.count(needle) < count:
        chunk = sock.recv(65536)
        assert chunk, "server closed early"
        data += chunk
    return data


def test_client_leaving_mid_stall_closes_the_stream(fake):
    fake.enqueue(Fault("stall", after_frames=2, delay=30))
    payload = json.dumps(ask_body()).encode()
    request = (
        f"POST {ASK} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Cookie: {COOKIE}={fake.session_token}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection(("127.0.0.1", fake.port), timeout=2) as sock:
        sock.sendall(request)
        _read_until(sock, b"event: message", 2)
        assert fake.open_streams == 1
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=1)
    assert fake.streams_closed_by_client == 1 and fake.streams_started == 1


def test_client_leaving_during_a_slow_stream_is_noticed(fake, session):
    fake.enqueue(Reply(answer=ANSWER * 10, chunk_size=5, frame_delay=0.05))
    with session.post(f"{fake.url}{ASK}", json=ask_body(), stream=True) as resp:
        next(resp.iter_content(None))
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=1)
    assert fake.streams_closed_by_client == 1


def test_stop_ends_a_stalled_stream_promptly():
    server = FakePerplexity().start()
    server.enqueue(Fault("stall", after_frames=1, delay=30))
    with requests.Session() as s:
        s.cookies.set(COOKIE, server.session_token)
        with s.post(f"{server.url}{ASK}", json=ask_body(), stream=True) as resp:
            next(resp.iter_content(None))
            server.stop()  # would wait out its bounded join if the 30 s stall kept the stream open
            assert server.open_streams == 0


# ---- side endpoints -----------------------------------------------------------------------------


def test_fault_for_other_paths(fake, session):
    fake.fault_for("/rest/models/config", Fault("server_error", status=503, times=2))
    fake.fault_for("/api/auth/session", Fault("server_error"))
    fake.fault_for("/rest/uploads/batch_create_upload_urls", Fault("auth"))
    statuses = [session.get(f"{fake.url}/rest/models/config").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert session.get(f"{fake.url}/api/auth/session").status_code == 500
    assert session.post(f"{fake.url}/rest/uploads/batch_create_upload_urls", json={}).status_code == 403


def test_models_fault_stays_until_cleared(fake, session):
    fake.models_fault = Fault("cloudflare")
    assert [session.get(f"{fake.url}/rest/models/config").status_code for _ in range(2)] == [403, 403]
    fake.models_fault = None
    assert session.get(f"{fake.url}/rest/models/config").status_code == 200


def test_models_config_v1(fake, session):
    config = session.get(f"{fake.url}/rest/models/config?version=2.18&source=default").json()
    assert config["config_schema"] == "v1"
    assert config["default_models"]["research"] == "pplx_alpha"
    assert config["agentic_research_compare_models"] == ["gpt55_thinking", "claude48opusthinking", "gemini31pro_high"]
    rows = {row["label"]: row for row in config["config"]}
    assert rows["Claude Opus 4.8"]["reasoning_model"] == "claude48opusthinking"
    assert rows["Claude Opus 4.8"]["subscription_tier"] == "max"
    assert any(row["audience"] == "internal" for row in config["config"])
    for row in config["config"]:
        for key in ("non_reasoning_model", "reasoning_model"):
            assert row[key] is None or row[key] in config["models"]
    assert config["models"]["gpt55"]["provider"] == "OPENAI" and config["models"]["turbo"]["label"] == "Best"


def test_models_config_v2(fake, session):
    fake.models_schema = "v2"
    config = session.get(f"{fake.url}/rest/models/config").json()
    assert config["config_schema"] == "v2" and "research" in config["default_models"]
    tiers = {row["subscription_tier"] for row in config["search_config"]}
    assert tiers == {"free", "pro", "max"}
    assert config["computer_config"][0]["model"] == "pplx_asi"
    assert all("mode" in m and "label" in m for m in config["models"].values())


def test_session_endpoint_and_rotation(fake, session):
    body = session.get(f"{fake.url}/api/auth/session").json()
    assert body["user"]["id"] == fake.user["id"] and body["user"]["subscription_tier"] == "pro"
    assert body["expires"].endswith("Z")
    old = fake.session_token
    fake.rotate_on_session = True
    resp = session.get(f"{fake.url}/api/auth/session")
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    new = cookie.split(";")[0].split("=", 1)[1]
    assert new == fake.session_token != old
    for token in (old, new):  # the old token keeps working after a rotation
        with requests.Session() as client:
            client.cookies.set(COOKIE, token)
            assert post_ask(fake, client)[0] == 200
    fake.session_token = "replaced"
    assert post_ask(fake, session)[0] == 403, "setting the token revokes the others"


def test_session_without_cookie_is_empty_200(fake):
    with requests.get(f"{fake.url}/api/auth/session") as resp:
        assert (resp.status_code, resp.json()) == (200, {})


def test_rate_limit_status_and_user_settings(fake, session):
    table = session.get(f"{fake.url}/rest/rate-limit/status").json()
    assert table["modes"]["pro_search"] == {"available": True, "remaining_detail": {"kind": "not_provided"}}
    assert table["modes"]["research"]["remaining_detail"]["kind"] == "exact"
    assert session.get(f"{fake.url}/rest/user/settings").json()["default_model"] == "turbo"


def test_unknown_path_is_404_json(fake, session):
    resp = session.get(f"{fake.url}/rest/nothing/here")
    assert resp.status_code == 404 and resp.json() == {"detail": "Not Found"}


def _upload(fake: FakePerplexity, answer: dict[str, Any], data: bytes, *, drop: str | None = None):
    fields = {k: v for k, v in answer["fields"].items() if k != drop}
    files = {"file": ("notes.txt", data, "text/plain")}
    return requests.post(answer["s3_bucket_url"], data=fields, files=files, timeout=5)


def test_batch_presign_then_s3_upload(fake, session):
    spec = {"filename": "notes.txt", "content_type": "text/plain", "file_size": 11, "source": "default"}
    resp = session.post(f"{fake.url}/rest/uploads/batch_create_upload_urls", json={"files": {"abc": spec}})
    answer = resp.json()["results"]["abc"]
    assert answer["s3_bucket_url"] == f"{fake.url}/fake-s3/"
    assert answer["s3_object_url"].startswith(f"{fake.url}/fake-s3/web/direct-files/attachments/{fake.user['id']}/")
    assert answer["s3_object_url"].endswith("/notes.txt") and "policy" in answer["fields"]
    with _upload(fake, answer, b"hello\r\nworld\n") as up:
        assert up.status_code == 204 and up.content == b""
    assert fake.uploads[answer["s3_object_url"]] == ("notes.txt", "text/plain", b"hello\r\nworld\n")
    with requests.get(answer["s3_object_url"]) as back:
        assert back.content == b"hello\r\nworld\n"


def test_legacy_presign_and_s3_rejections(fake, session):
    spec = {"content_type": "image/png", "file_size": 4, "filename": "x.png", "force_image": False}
    answer = session.post(f"{fake.url}/rest/uploads/create_upload_url", json=spec).json()
    assert set(answer) == {"s3_bucket_url", "s3_object_url", "fields"}
    with _upload(fake, answer, b"png!", drop="policy") as up:
        assert up.status_code == 403 and b"AccessDenied" in up.content
    with requests.post(answer["s3_bucket_url"], data=answer["fields"]) as up:
        assert up.status_code == 400
    fake.max_upload_bytes = 3
    with _upload(fake, answer, b"png!") as up:
        assert up.status_code == 400 and b"<Code>EntityTooLarge</Code>" in up.content
    assert fake.uploads == {}


def test_keep_alive_serves_several_requests_on_one_connection(fake):
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        headers = {"Cookie": f"{COOKIE}={fake.session_token}", "Content-Type": "application/json"}
        for _ in range(2):
            conn.request("POST", ASK, body=json.dumps(ask_body()), headers=headers)
            with conn.getresponse() as resp:
                assert stream_frames(resp.read())[-1]["status"] == "COMPLETED"
        conn.request("GET", "/rest/models/config")
        with conn.getresponse() as resp:
            assert resp.status == 200 and json.loads(resp.read())["config_schema"] == "v1"
    finally:
        conn.close()


def test_reset_clears_state_but_keeps_the_token(fake, session):
    fake.session_token = "kept"
    session.cookies.set(COOKIE, "kept")
    fake.enqueue(Fault("auth"))
    fake.models_schema = "v2"
    post_ask(fake, session)
    fake.reset()
    assert (fake.requests, fake.threads, fake.streams_started, fake.models_schema) == ([], {}, 0, "v1")
    assert post_ask(fake, session)[0] == 200


def test_reset_ends_streams_left_over_from_earlier_requests(fake, session):
    fake.enqueue(Fault("stall", after_frames=1, delay=30))
    with session.post(f"{fake.url}{ASK}", json=ask_body(), stream=True) as resp:
        next(resp.iter_content(None))
        fake.reset()  # waits (bounded) for the gauge: only a stream that was really ended brings it to 0
        assert fake.open_streams == 0
    assert post_ask(fake, session)[0] == 200 and fake.open_streams == 0


def test_constructor_refuses_non_loopback_hosts():
    with pytest.raises(ValueError):
        FakePerplexity(host="0.0.0.0")
    with pytest.raises(ValueError):
        Reply(format="html")
    with pytest.raises(ValueError):
        Fault("explode")


def test_command_line_serves_until_sigterm():
    command = [sys.executable, "-m", "perplexity.testing", "--port", "0", "--token", "cli-token"]
    command += ["--format", "diff", "--frame-delay", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:") and "cli-token" in process.stdout.readline()
        with requests.Session() as s:
            s.cookies.set(COOKIE, "cli-token")
            with s.post(f"{url}{ASK}", json=ask_body(), timeout=5) as resp:
                frames = stream_frames(resp.content)
        assert any("diff_block" in b for f in frames for b in f.get("blocks", []))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
