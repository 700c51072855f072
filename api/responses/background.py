"""Background responses: the job a `background: true` request leaves running in the worker, its stored events,
and the readers that follow them (`GET /v1/responses/{id}?stream=true&starting_after=N`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import gevent
from flask import Response

from perplexity.errors import PerplexityError

from ..core.agent import AgentOutcome, AgentStream
from ..core.errors import APIError
from ..core.service import PreparedAsk
from ..core.streaming import ClientGone
from ..core.turn import ChatTurn
from ..edge.sse import PING, encode
from ..state import ServerState
from ..steps import StreamHooks, json_response
from ..stores.jobs import Frame, MemoryJobs, RedisJobs, open_jobs
from ..stores.records import StoredResponse, account_of
from .events import ResponseEvents, response_events
from .objects import ResponseMeta, response_object

if TYPE_CHECKING:
    from perplexity.stream import AskStream

__all__ = ["cancel", "follow", "follow_response", "jobs_of", "judge", "start"]

log = logging.getLogger(__name__)

FINISHED = ("completed", "incomplete", "failed", "cancelled")
_FINAL_EVENTS = (b"event: response.completed\n", b"event: response.incomplete\n", b"event: response.failed\n")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_POLL = 0.05  # seconds a follower waits between reads of the stored events
_STOPPED = {"code": "server_error", "message": "the server running it stopped"}


def jobs_of(server: ServerState) -> MemoryJobs | RedisJobs:
    """The worker's job store, made on first use beside its response store."""
    jobs = getattr(server, "_jobs", None)
    if jobs is None:
        jobs = open_jobs(server.responses, float(server.config["CONVERSATION_TIMEOUT"]))
        server._jobs = jobs  # type: ignore[attr-defined]
    return jobs


class _RecordingEvents(ResponseEvents):
    """ResponseEvents that also keep each event it numbers, for the runner to store."""

    def __init__(self, meta: ResponseMeta) -> None:
        super().__init__(meta)
        self.pending: list[Frame] = []

    def event(self, kind: str, **fields: Any) -> bytes:
        number = self._sequence
        frame = super().event(kind, **fields)
        self.pending.append((number, frame))
        return frame

    def take(self) -> list[Frame]:
        out, self.pending = self.pending, []
        return out


def _final(frame: bytes) -> bool:
    return frame.startswith(_FINAL_EVENTS)


def start(
    server: ServerState,
    prepared: PreparedAsk,
    turn: ChatTurn,
    meta: ResponseMeta,
    *,
    who: str,
    items: list[dict[str, Any]],
    remember: Callable[[AgentOutcome], None],
    agent: bool,
    stream: bool,
) -> Response:
    """Store the response as queued, open the upstream (so a refusal still gets its real status), leave a greenlet
    reading it into the stored response and events, and answer: the queued response, or the events as they come.

    Everything the greenlet needs is built here: it runs outside the request (no `request`, `g` or app context).
    """
    jobs = jobs_of(server)
    rid = meta.id
    cap = int(server.config["BACKGROUND_MAX_EVENTS"])

    def save(response: dict[str, Any]) -> None:
        server.responses.save(StoredResponse(rid, who, time.time(), prepared.conversation_id, response, items))

    def keep(response: dict[str, Any]) -> None:
        # A cancel wins: one that lands between the check and the save is put back right after.
        if jobs.cancelled(rid):
            return
        save(response)
        if jobs.cancelled(rid):
            save({**response, "status": "cancelled"})

    account, lease = account_of(who), float(server.config["BACKGROUND_LEASE_SECONDS"])
    caps = int(server.config["BACKGROUND_MAX_JOBS"]), int(server.config["BACKGROUND_MAX_JOBS_PER_CALLER"])
    if not jobs.admit(rid, account, lease, *caps):
        raise APIError(
            429, "Too many background responses are running; wait for one to finish.", type="rate_limit_error",
            code="rate_limit_exceeded",
        )  # fmt: skip
    try:
        upstream = server.service.open(prepared)  # a refusal still gets its real status
    except BaseException:
        jobs.finish(rid, account)
        raise
    queued = response_object(meta, None, status="queued", output=[])
    save(queued)
    events = _RecordingEvents(meta)

    def failed(exc: BaseException) -> None:
        if isinstance(exc, PerplexityError):
            server.record_upstream_error(exc, prepared.account)
            log.warning("background response ended by upstream %s: %s", exc.kind, exc.message)
        elif not isinstance(exc, APIError):
            log.exception("background response failed")

    hooks = StreamHooks(
        heartbeat=float(server.config["HEARTBEAT_INTERVAL"]),
        gone=lambda: jobs.cancelled(rid),
        first_token=lambda: None,
        failed=failed,
    )
    agent_stream = AgentStream(server.service, prepared, hooks.heartbeat, hooks.gone) if agent else None

    def done(outcome: AgentOutcome, response: dict[str, Any]) -> None:
        remember(outcome)
        keep(response)

    body = response_events(
        upstream, turn, events, hooks, prompt_text=prepared.prompt_text, on_done=done, agent=agent_stream
    )
    renew = _Renewer(jobs, rid, account, lease)
    gevent.spawn(_run, body, upstream, events, turn, jobs, rid, cap, keep, failed, renew)
    if stream:
        return follow_response(server, jobs, rid, who, -1)
    return json_response(queued)


def _run(
    body: Iterator[bytes],
    upstream: AskStream,
    events: _RecordingEvents,
    turn: ChatTurn,
    jobs: MemoryJobs | RedisJobs,
    rid: str,
    cap: int,
    keep: Callable[[dict[str, Any]], None],
    failed: Callable[[BaseException], None],
    renew: _Renewer,
) -> None:
    """Read the job to its end (or its cancel), storing its events: up to `cap`, and always the final one; its
    lease is renewed as it goes (the upstream's silence still turns the loop, once a heartbeat)."""
    stored = 0

    def flush() -> None:
        nonlocal stored
        renew()
        frames, room = events.take(), max(cap - stored, 0)
        frames = frames[:room] + [frame for frame in frames[room:] if _final(frame[1])]
        if frames:
            jobs.append(rid, frames)
            stored += len(frames)

    try:
        keep(response_object(events.meta, None, status="in_progress", output=[]))
        for _chunk in body:
            flush()
            if jobs.cancelled(rid):  # checked here too: `gone` is only asked on silent ticks
                break
        flush()
    except ClientGone:
        pass  # cancelled
    except Exception as exc:
        failed(exc)
        try:
            events.failed_event(exc, turn, keep)
            flush()
        except Exception:
            log.exception("could not store a background response's failure")
    finally:
        if hasattr(body, "close"):
            body.close()
        upstream.close()
        renew.finish()


class _Renewer:
    """Renews a job's lease every third of it; `finish` gives its running slot back."""

    def __init__(self, jobs: MemoryJobs | RedisJobs, rid: str, account: str, lease: float) -> None:
        self.jobs, self.rid, self.account, self.lease = jobs, rid, account, lease
        self._renewed = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._renewed >= self.lease / 3:
            self._renewed = time.monotonic()
            try:
                self.jobs.renew(self.rid, self.account, self.lease)
            except Exception:  # a missed renewal is retried next time; only a lapse of the whole lease counts
                log.warning("could not renew a background response's lease", exc_info=True)

    def finish(self) -> None:
        try:
            self.jobs.finish(self.rid, self.account)
        except Exception:  # the lease lapses on its own
            log.warning("could not release a background response's slot", exc_info=True)


def judge(server: ServerState, record: StoredResponse) -> StoredResponse:
    """The record, marked failed (and stored so) when it is queued or running but its runner's lease lapsed: the
    worker running it died."""
    response = record.response
    if not response.get("background") or response["status"] not in ("queued", "in_progress"):
        return record
    if jobs_of(server).alive(record.id):
        return record
    current = server.responses.get(record.caller, record.id)  # it may have finished since it was read
    if current is not None and current.response["status"] not in ("queued", "in_progress"):
        return current
    stopped = replace(record, response={**response, "status": "failed", "error": dict(_STOPPED)})
    server.responses.save(stopped)
    return stopped


def cancel(server: ServerState, record: StoredResponse) -> dict[str, Any]:
    """Cancel a queued or running background job: its runner closes the upstream at its next step."""
    record = judge(server, record)
    response = record.response
    if not response.get("background"):
        raise APIError(400, "Only responses created with background=true can be cancelled.", code="invalid_request")
    if response["status"] == "cancelled":
        return response  # cancelling twice answers the same
    if response["status"] in FINISHED:
        raise APIError(400, f"Cannot cancel a {response['status']} response.", code="invalid_request")
    jobs_of(server).cancel(record.id)
    cancelled = {**response, "status": "cancelled"}
    server.responses.save(replace(record, response=cancelled))
    return cancelled


def follow_response(server: ServerState, jobs: MemoryJobs | RedisJobs, rid: str, who: str, after: int) -> Response:
    """The job's events after sequence number `after`, as SSE: those stored, then the live ones to the last."""
    body = follow(server, jobs, rid, who, after, float(server.config["HEARTBEAT_INTERVAL"]))
    return Response(body, mimetype="text/event-stream", headers=_SSE_HEADERS)


def follow(
    server: ServerState, jobs: MemoryJobs | RedisJobs, rid: str, who: str, after: int, heartbeat: float
) -> Iterator[bytes]:
    """Read the stored events until the final one (or the job is cancelled or gone), pinging while none come."""
    position, quiet, last = 0, 0.0, after
    while True:
        frames = jobs.read(rid, position)
        position += len(frames)
        for number, frame in frames:
            last = max(last, number)
            if number > after:
                yield frame
            if _final(frame):
                return
        if frames:
            quiet = 0.0
            continue
        gevent.sleep(_POLL)
        quiet += _POLL
        if quiet < heartbeat:
            continue
        quiet = 0.0
        record = server.responses.get(who, rid)
        if record is not None:
            record = judge(server, record)
        if record is None or record.response["status"] in ("cancelled", "failed"):
            if jobs.read(rid, position):
                continue  # what was stored meanwhile first
            if record is not None and record.response["status"] == "failed":  # its worker died: say so and end
                yield encode({"type": "response.failed", "response": record.response, "sequence_number": last + 1},
                             event="response.failed")  # fmt: skip
            return
        yield PING
