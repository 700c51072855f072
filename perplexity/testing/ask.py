"""The ask endpoints of the fake: `perplexity_ask` streams, follow-ups, reconnect and terminate."""

from __future__ import annotations

import uuid
from typing import Any

from .accounts import ask_mode, set_cookie_header
from .content import default_title
from .envelope import AskContext
from .faults import fault_response
from .generate import build_frames
from .handler import ASK_PATH, RouteHandler, route
from .script import PRE_STREAM_FAULTS, Fault, RecordedRequest, Reply, ThreadRecord
from .stream import final_frame, stream_frames

__all__: list[str] = []

_REQUIRED_PARAMS = ("version", "model_preference", "frontend_uuid")


@route("POST", ASK_PATH)
def ask(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Answer an ask: auth, validation, the account's rate limit and quota, scripted fault or reply, thread
    bookkeeping, then the stream (with a rotated cookie when the account rotates on asks)."""
    if not h.logged_in() or h.account is None:
        return h.not_logged_in()
    problem = _validate(req.json)
    if problem:
        return h.send_json(422, {"detail": [problem]})
    label = h.account.label
    retry_after = h.fake.rate_limited_for(label)
    if retry_after is not None:
        return h.send_canned(fault_response(Fault("rate_limit", retry_after=retry_after), h.requestline))
    mode = ask_mode(req.json["params"])
    spent = h.fake.spend_quota(label, mode)
    if spent is False:  # the mode is exhausted: its failure, whatever the script says
        item, origin = h.account.exhausted_fault(mode or "pro_search"), None
        scripted = False
    else:
        (item, origin), scripted = h.fake.take_scripted(label), True
    if isinstance(item, Fault) and item.kind in PRE_STREAM_FAULTS:
        if spent:
            h.fake.refund_quota(label, mode)
        return h.send_canned(fault_response(item, h.requestline))
    fault = item if isinstance(item, Fault) else None
    reply = item if isinstance(item, Reply) else (fault.reply if fault else None)
    if reply is None and item is None and h.fake.responder is not None:
        reply = h.fake.responder(req.json["query_str"], _earlier_queries(h, req.json))
    reply = reply or h.fake.default_reply
    found = _thread_for(h, req.json, reply)
    if found is None:  # unknown entry, another account's thread or wrong read_write_token: the thread is gone
        if item is not None and scripted:
            h.fake.give_back(item, origin)
        if spent:
            h.fake.refund_quota(label, mode)
        return h.send_json(403, {})
    thread, ctx = found
    thread.queries.append(ctx.query)
    req.thread = ctx.context_uuid
    frames = [dict(f) for f in reply.frames] if reply.frames is not None else build_frames(ctx, reply)
    h.fake.add_entry(thread, ctx.backend_uuid, final_frame(frames))
    stream_frames(h, frames, reply=reply, fault=fault, ctx=ctx, headers=lambda: _rotated_cookie(h, label))


def _rotated_cookie(h: RouteHandler, label: str) -> list[tuple[str, str]]:
    """The Set-Cookie of a rotated token when the account rotates on asks (called as the 200 goes out)."""
    if h.account is None or not h.account.rotate_on_ask:
        return []
    return [set_cookie_header(h.fake.rotate_token(label))]


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


def _earlier_queries(h: RouteHandler, body: dict[str, Any]) -> list[str]:
    """The queries asked before in the thread this ask follows up (oldest first); [] for a new thread."""
    thread = h.own_thread(body["params"].get("last_backend_uuid"))
    return list(thread.queries) if thread is not None else []


def _thread_for(h: RouteHandler, body: dict[str, Any], reply: Reply) -> tuple[ThreadRecord, AskContext] | None:
    """Find (follow-up) or create (first ask) the thread; None when a follow-up names no live thread."""
    params = body["params"]
    backend_uuid = str(uuid.uuid4())
    followup = params.get("query_source") == "followup" or bool(params.get("last_backend_uuid"))
    if followup:
        # Another account's thread is refused like an unknown one: 403 `{}` (protocol 3.8).
        thread = h.own_thread(params.get("last_backend_uuid"))
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
            account=h.label,
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
        author_id=h.account.user_id if h.account else h.fake.user["id"],
        author_username=(h.account.user if h.account else h.fake.user).get("username") or "",
    )
    return thread, ctx


@route("POST GET", r"/rest/sse/perplexity_ask/reconnect/(?P<entry>[^/]+)")
def reconnect(h: RouteHandler, req: RecordedRequest, args: dict[str, str]) -> None:
    """Reconnect after completion: one COMPLETED frame, then end_of_stream; 403 `{}` if unknown."""
    if not h.logged_in():
        return h.not_logged_in()
    thread = h.own_thread(args["entry"])
    final = thread.final_frames.get(args["entry"]) if thread else None
    if final is None:
        return h.send_json(403, {})
    stream_frames(h, [final, {}])


@route("POST", r"/rest/sse/perplexity_terminate")
def terminate(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Stop a run: its stream ends with COMPLETED, `text_completed: false` (no token needed)."""
    if not h.logged_in():
        return h.not_logged_in()
    entry = str((req.json or {}).get("entry_uuid") or "")
    thread = h.own_thread(entry)
    if thread is None:
        return h.send_json(403, {})
    h.fake.terminated.append(entry)
    h.send_json(200, {"status": "completed", "_response_type": "COMPLETED_RESPONSE", "thread_url_slug": thread.slug})
