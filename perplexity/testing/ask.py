"""The ask endpoints of the fake: `perplexity_ask` streams, follow-ups, reconnect and terminate."""

from __future__ import annotations

import uuid
from typing import Any

from .content import default_title
from .envelope import AskContext, failed_frame
from .faults import fault_response
from .generate import build_frames
from .handler import ASK_PATH, FakeHandler, route
from .script import PRE_STREAM_FAULTS, Fault, RecordedRequest, Reply, ThreadRecord
from .wire import END_OF_STREAM, ChunkedStream, ClientGone, ServerStopping, encode_event

__all__ = ["stream_frames"]

_REQUIRED_PARAMS = ("version", "model_preference", "frontend_uuid")
_MALFORMED_DATA = '{"status": "PENDING", "blocks": [{"intended_usage": "ask_text", '


@route("POST", ASK_PATH)
def ask(h: FakeHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Answer an ask: auth, validation, scripted fault or reply, thread bookkeeping, then the stream."""
    if not h.logged_in():
        return h.not_logged_in()
    problem = _validate(req.json)
    if problem:
        return h.send_json(422, {"detail": [problem]})
    item = h.fake.take_script_item()
    if isinstance(item, Fault) and item.kind in PRE_STREAM_FAULTS:
        return h.send_canned(fault_response(item, h.requestline))
    fault = item if isinstance(item, Fault) else None
    reply = item if isinstance(item, Reply) else (fault.reply if fault else None) or h.fake.default_reply
    found = _thread_for(h, req.json, reply)
    if found is None:  # unknown entry or wrong read_write_token: the thread is gone
        if item is not None:
            h.fake.give_back(item)
        return h.send_json(403, {})
    thread, ctx = found
    req.thread = ctx.context_uuid
    frames = [dict(f) for f in reply.frames] if reply.frames is not None else build_frames(ctx, reply)
    h.fake.add_entry(thread, ctx.backend_uuid, _final_frame(frames))
    stream_frames(h, frames, reply=reply, fault=fault, ctx=ctx)


def _validate(body: Any) -> dict[str, Any] | None:
    """Return a FastAPI-style 422 detail item for a malformed ask body, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("query_str"), str):
        return {"loc": ["body", "query_str"], "msg": "field required", "type": "value_error.missing"}
    params = body.get("params")
    if not isinstance(params, dict):
        return {"loc": ["body", "params"], "msg": "field required", "type": "value_error.missing"}
    for name in _REQUIRED_PARAMS:
        if not params.get(name):
            return {"loc": ["body", "params", name], "msg": "field required", "type": "value_error.missing"}
    return None


def _thread_for(h: FakeHandler, body: dict[str, Any], reply: Reply) -> tuple[ThreadRecord, AskContext] | None:
    """Find (follow-up) or create (first ask) the thread; None when a follow-up names no live thread."""
    params = body["params"]
    backend_uuid = str(uuid.uuid4())
    followup = params.get("query_source") == "followup" or bool(params.get("last_backend_uuid"))
    if followup:
        thread = h.fake.thread_of_entry(params.get("last_backend_uuid"))
        if thread is None or params.get("read_write_token") != thread.read_write_token:
            return None
        if reply.title is not None:
            thread.title = reply.title
    else:
        thread = ThreadRecord(
            context_uuid=str(uuid.uuid4()),
            read_write_token=str(uuid.uuid4()),
            # Since 2026 the slug is the first entry's backend_uuid (protocol 2.1).
            slug=backend_uuid,
            title=reply.title if reply.title is not None else default_title(body["query_str"]),
            frontend_context_uuid=params.get("frontend_context_uuid") or str(uuid.uuid4()),
        )
    ctx = AskContext(
        query=body["query_str"],
        model=str(params["model_preference"]),
        backend_uuid=backend_uuid,
        context_uuid=thread.context_uuid,
        frontend_uuid=str(params["frontend_uuid"]),
        # The server echoes the first message's frontend_context_uuid on follow-ups (ZK capture).
        frontend_context_uuid=thread.frontend_context_uuid or "",
        read_write_token=thread.read_write_token,
        slug=thread.slug,
        cursor=str(uuid.uuid4()),
        title=thread.title,
        mode="CONCISE" if str(params.get("mode", "")).lower() == "concise" else "COPILOT",
        search_mode="RESEARCH" if reply.research else "SEARCH",
        query_source=str(params.get("query_source") or ("followup" if followup else "home")),
        attachments=list(params.get("attachments") or []),
        author_id=h.fake.user["id"],
        author_username=h.fake.user.get("username") or "",
    )
    return thread, ctx


def _final_frame(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the COMPLETED frame of a stream (what reconnect answers), else its last frame."""
    for frame in reversed(frames):
        if frame.get("status") == "COMPLETED":
            return frame
    real = [f for f in frames if f]
    return real[-1] if real else None


def stream_frames(
    h: FakeHandler,
    frames: list[dict[str, Any]],
    *,
    reply: Reply | None = None,
    fault: Fault | None = None,
    ctx: AskContext | None = None,
) -> None:
    """Write `frames` as an SSE response; a final `{}` item goes out as `end_of_stream`."""
    reply = reply or Reply()
    kind = fault.kind if fault else None
    after = fault.after_frames if fault else len(frames) + 1
    try:
        if fault and kind == "slow_first_byte":
            h.chunked().wait(fault.delay)
        if fault and kind == "reset" and after < 0:  # RST before the status line
            h.reset_connection()
            return
        if fault and kind == "eof" and after < 0:  # close before the status line
            h.close_connection = True
            return
    except ClientGone:
        h.fake.client_left()
        h.close_connection = True
        return
    stream = h.start_stream()
    h.fake.stream_opened()
    try:
        if _write_frames(h, stream, frames, reply, fault, ctx):
            stream.end()
    except ClientGone:
        h.fake.client_left()
        h.close_connection = True
    except ServerStopping:
        h.close_connection = True
    finally:
        h.fake.stream_closed()


def _write_frames(
    h: FakeHandler,
    stream: ChunkedStream,
    frames: list[dict[str, Any]],
    reply: Reply,
    fault: Fault | None,
    ctx: AskContext | None,
) -> bool:
    """Write the frames and the fault; return False when the connection is already gone (reset)."""
    stream.wait(reply.first_byte_delay, reply.heartbeat_every)
    after = fault.after_frames if fault else -1
    for index, frame in enumerate(frames):
        if fault and index == max(after, 0):
            ended = _inject(h, stream, fault, ctx)
            if ended is not None:
                return ended
        if ctx and ctx.backend_uuid in h.fake.terminated:
            return _send_terminated(stream, frames)
        if index:
            stream.wait(reply.frame_delay, reply.heartbeat_every)
        last = index == len(frames) - 1
        stream.send(END_OF_STREAM if last and frame == {} else encode_event(frame))
    if fault and after >= len(frames):
        ended = _inject(h, stream, fault, ctx)
        return True if ended is None else ended
    return True


def _inject(h: FakeHandler, stream: ChunkedStream, fault: Fault, ctx: AskContext | None) -> bool | None:
    """Apply an in-stream fault: None to carry on, True to end the body cleanly, False if it is gone."""
    kind = fault.kind
    if kind == "stall":
        stream.wait(fault.delay)  # no bytes at all, not even heartbeats
        return None
    if kind == "malformed":
        stream.send(encode_event(_MALFORMED_DATA))
        return None
    if kind == "reset":
        h.reset_connection()
        return False
    if kind in ("failed", "rate_limited_in_stream"):
        default_code = "RATE_LIMIT_EXCEEDED" if kind == "rate_limited_in_stream" else "INTERNAL_ERROR"
        code = fault.error_code or default_code
        message = fault.message or ("Rate limit exceeded." if "RATE_LIMIT" in code else "Something went wrong.")
        if ctx is not None:
            stream.send(encode_event(failed_frame(ctx, code=code, message=message)))
        else:
            stream.send(encode_event({"status": "FAILED", "error_code": code, "text": message}))
        stream.send(END_OF_STREAM)
        return True
    if kind == "truncated":
        stream.send(END_OF_STREAM)
        return True
    if kind == "eof":
        return True
    return None  # slow_first_byte acted before the headers


def _send_terminated(stream: ChunkedStream, frames: list[dict[str, Any]]) -> bool:
    """A terminated run reports COMPLETED with `text_completed: false` (protocol 2.3)."""
    final = _final_frame(frames)
    if final is not None:
        stream.send(encode_event({**final, "text_completed": False}))
    stream.send(END_OF_STREAM)
    return True


@route("POST GET", r"/rest/sse/perplexity_ask/reconnect/(?P<entry>[^/]+)")
def reconnect(h: FakeHandler, req: RecordedRequest, args: dict[str, str]) -> None:
    """Reconnect after completion: one COMPLETED frame, then end_of_stream; 403 `{}` if unknown."""
    if not h.logged_in():
        return h.not_logged_in()
    thread = h.fake.thread_of_entry(args["entry"])
    final = thread.final_frames.get(args["entry"]) if thread else None
    if final is None:
        return h.send_json(403, {})
    stream_frames(h, [final, {}])


@route("POST", r"/rest/sse/perplexity_terminate")
def terminate(h: FakeHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Stop a run: its stream ends with COMPLETED, `text_completed: false` (no token needed)."""
    if not h.logged_in():
        return h.not_logged_in()
    entry = str((req.json or {}).get("entry_uuid") or "")
    thread = h.fake.thread_of_entry(entry)
    if thread is None:
        return h.send_json(403, {})
    h.fake.terminated.append(entry)
    h.send_json(200, {"status": "completed", "_response_type": "COMPLETED_RESPONSE", "thread_url_slug": thread.slug})
