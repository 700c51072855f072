"""The steps every answering view shares: read the body, build the turn, hold a stream slot, open the upstream, and
hand it to a streamed or whole response that always closes it.

A view of an endpoint family does three things of its own: turn its request into a chat-shaped body and a
`PreparedAsk`, say how its stream is written (an SSE body over the turn), and say how its whole answer looks.
Everything else, including the one path a stream failure takes, lives here so the families cannot drift apart.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response, current_app, g, request

from perplexity.errors import PerplexityError
from perplexity.stream import AskStream

from . import lifecycle
from .core.accounts import FAILOVER_ERRORS
from .core.completion import CompletionMeta
from .core.errors import APIError
from .core.service import PreparedAsk
from .core.sonar import APPROXIMATED_HEADER, source_filter
from .core.streaming import ClientGone, read_whole
from .core.tools import AgentSpec
from .core.turn import ChatTurn, TurnLimits
from .edge.auth import check_model, key_entry, stream_cap
from .edge.quotas import check_stream_cap, refuse_stream
from .edge.sse import client_watcher, error_event
from .state import ServerState, state

__all__ = [
    "StreamHooks",
    "StreamSlot",
    "answer",
    "completion_meta",
    "json_body",
    "json_response",
    "permit_model",
    "turn_limits",
]

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---- the request ------------------------------------------------------------------------------------------


def json_body() -> dict[str, Any]:
    """The request's JSON object; 415 when it is not JSON, 400 when it does not parse."""
    if not request.is_json:
        raise APIError(
            415, "The request body must be JSON (Content-Type: application/json).", code="unsupported_media_type"
        )
    try:
        body = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def json_response(body: Any, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    """A JSON response (orjson: the schemas' dumps are checked against these bodies in the tests)."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)


def turn_limits(body: dict[str, Any], agent: AgentSpec | None = None) -> TurnLimits:
    """The output limits of a chat-shaped body (`agent`: the request's tools and output format, if any)."""
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    mode = body.get("citation_mode") or current_app.config["DEFAULT_CITATION_MODE"]
    if mode == "footnotes" and agent is not None and agent.output is not None:
        mode = "default"  # a list of sources after structured output would break its JSON
    return TurnLimits(citation_mode=mode, stops=stops, max_tokens=max_tokens, sources=source_filter(body))


def completion_meta(prepared: PreparedAsk, body: dict[str, Any]) -> CompletionMeta:
    """Identity and opt-in extras of the answer to a chat-shaped body."""
    return CompletionMeta(
        model=prepared.model.id,
        want_related=bool(body.get("return_related_questions")),
        want_images=bool(body.get("return_images")),
    )


def permit_model(asked: str | None) -> None:
    """403 `model_not_allowed` when the request's key may not use the model `asked` selects (DEFAULT_MODEL when
    none), before anything is prepared; an unknown id is left to the usual 404."""
    entry = key_entry()
    if entry is None or entry.models is None:  # no model list: nothing to resolve on this request's path
        return
    server = state()
    model = server.models.resolve(asked or str(server.config["DEFAULT_MODEL"]))
    if model is not None:
        check_model(asked, model.id)


# ---- streams ----------------------------------------------------------------------------------------------


class StreamSlot:
    """One of the caller's `cap` streams (its key's `streams`, else MAX_CONCURRENT_STREAMS), reserved before any
    I/O; `release` gives it back exactly once.

    The worker's own count is checked and taken with no I/O in between (greenlets switch only on I/O), so a burst
    cannot slip past the cap within a worker. With Redis (`server.stream_leases`) the slot is then leased in the
    caller's shared set too, which holds the cap across workers and instances; while Redis cannot be reached the
    worker's own count decides. A slot whose response is dropped unsent is given back when it is collected.
    """

    __slots__ = ("_server", "_caller", "_lease", "_held")

    def __init__(self, server: ServerState, caller: str, cap: int) -> None:
        self._held = False  # first, so a refused slot's finalizer finds nothing to give back
        check_stream_cap(server.streams_by_caller[caller], cap, server.metrics)
        server.stream_opened(caller)
        self._server, self._caller, self._lease, self._held = server, caller, None, True
        if cap and server.stream_leases is not None:
            try:
                admitted, self._lease = server.stream_leases.acquire(caller, cap)
            except BaseException:
                self.release()
                raise
            if not admitted:
                self.release()
                refuse_stream(cap, server.metrics)

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        if self._held:
            self._held = False
            self._server.stream_closed(self._caller)
            if self._lease is not None:
                self._server.stream_leases.release(self._caller, self._lease)  # type: ignore[union-attr]

    def __del__(self) -> None:
        # Only if no path released it (a response dropped before it was sent). No Redis call here: a finalizer
        # must not switch greenlets; the unrenewed lease lapses instead.
        if getattr(self, "_held", False):
            self._held = False
            self._server.stream_closed(self._caller)
            if self._lease is not None:
                self._server.stream_leases.abandon(self._lease)  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True)
class StreamHooks:
    """What a streamed answer needs from the request around it, built once per request."""

    heartbeat: float
    gone: Callable[[], bool]
    first_token: Callable[[], None]
    failed: Callable[[BaseException], None]


def _account_failed(server: ServerState, prepared: PreparedAsk, exc: BaseException) -> None:
    """A failure of the account's own (an in-stream rate limit, an exhausted quota) after the ask opened: the
    next asks go elsewhere (this one cannot move: the answer had started)."""
    account = server.pool.get(prepared.account)
    if account is not None and isinstance(exc, FAILOVER_ERRORS):
        server.pool.failed(account, exc)


def _stream_hooks(server: ServerState, prepared: PreparedAsk) -> StreamHooks:
    started, environ = g.started, request.environ

    def first_token() -> None:
        elapsed = time.perf_counter() - started
        server.metrics.ttft.observe(elapsed)
        environ["pplx.ttft_ms"] = round(elapsed * 1000, 1)  # for the access log (gunicorn.conf.py)

    def failed(exc: BaseException) -> None:
        # The one place a stream failure is counted and logged (the client gets its family's error event).
        if isinstance(exc, PerplexityError):
            server.record_upstream_error(exc, prepared.account)
            _account_failed(server, prepared, exc)
            log.warning("stream ended by upstream %s: %s", exc.kind, exc.message)
        elif not isinstance(exc, APIError):
            log.exception("stream failed")

    return StreamHooks(
        heartbeat=float(server.config["HEARTBEAT_INTERVAL"]),
        gone=client_watcher(request.environ),
        first_token=first_token,
        failed=failed,
    )


def _guarded(
    body: Iterator[bytes], upstream: AskStream, hooks: StreamHooks, fail: Callable[[BaseException], bytes]
) -> Iterator[bytes]:
    """Run an SSE body: a failure is reported once and becomes the family's closing error event (`fail`), a
    departed client ends it quietly, and the upstream is closed whatever happens."""
    writer = _current_greenlet()
    if writer is not None:
        lifecycle.register_stream(writer)  # a drain ends it with `fail` at its deadline (api.lifecycle)
    try:
        yield from body
    except ClientGone:
        return
    except Exception as exc:
        hooks.failed(exc)
        yield fail(exc)
    finally:
        if writer is not None:
            lifecycle.unregister_stream(writer)
        upstream.close()


def _current_greenlet() -> Any:
    """The gevent greenlet writing this response (None outside a gevent worker, e.g. the test client)."""
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return None
    current = gevent.getcurrent()
    return current if isinstance(current, gevent.Greenlet) else None


def _stream_response(body: Iterator[bytes], upstream: AskStream, slot: StreamSlot, headers: dict[str, str]) -> Response:
    response = Response(body, mimetype="text/event-stream", headers={**_SSE_HEADERS, **headers})
    response.call_on_close(upstream.close)  # a generator that never started never runs its finally
    response.call_on_close(slot.release)
    return response


def _account_headers(server: ServerState, prepared: PreparedAsk) -> dict[str, str]:
    """Which account answered (its label, never its token), its quota left as Perplexity last reported it, and
    the model asked for when QUOTA_FALLBACK_MODEL served instead."""
    headers = {}
    if prepared.fallback_from:
        headers["x-perplexity-quota-fallback"] = prepared.fallback_from
    account = server.pool.get(prepared.account)
    if account is None:
        return headers
    headers["x-perplexity-account"] = account.label
    g.account = request.environ["pplx.account"] = account.label  # for the log lines and the access log
    if account.quota is not None:
        left = [f"{name}={mode.remaining}" for name, mode in account.quota.modes.items() if mode.remaining is not None]
        if left:
            headers["x-perplexity-quota-remaining"] = ", ".join(left)
    return headers


def _continuity_header(prepared: PreparedAsk) -> dict[str, str]:
    """`X-Conversation-Continued` for a request that carries a conversation: whether it went to Perplexity as a
    follow-up on the thread, or started a new one (its history flattened): the store was down, the history did
    not match an answer of ours, or the thread was gone. Decided once the upstream is open (that may restart)."""
    if len(prepared.transcript.turns) < 2:
        return {}
    return {"X-Conversation-Continued": "true" if prepared.is_follow_up else "false"}


SSEBody = Callable[[AskStream, StreamHooks], Iterator[bytes]]


def answer(
    prepared: PreparedAsk,
    turn: ChatTurn,
    *,
    stream: SSEBody | None,
    whole: Callable[[], Response],
    fail: Callable[[BaseException], bytes] = error_event,
    headers: dict[str, str] | None = None,
) -> Response:
    """Open the upstream for `prepared` and answer: as SSE written by `stream` (None: not streamed), or whole.

    The turn is built before anything is sent upstream, so a request the turn refuses costs no ask. From the open
    on, every failure closes the upstream before it propagates; once the response exists it owns the upstream. A
    stream that breaks ends with `fail(exc)`, the family's closing error event (`data: {"error": ...}` by default).
    """
    server = state()
    cap = stream_cap(int(server.config["MAX_CONCURRENT_STREAMS"]))
    slot = StreamSlot(server, g.get("caller", ""), cap) if stream is not None else None
    try:
        upstream = server.service.open(prepared)  # errors before the first byte get a real status
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    headers = {**(headers or {}), **_continuity_header(prepared)}
    if prepared.approximated:
        headers[APPROXIMATED_HEADER] = ", ".join(prepared.approximated)
    headers.update(_account_headers(server, prepared))
    try:
        if stream is not None and slot is not None:
            hooks = _stream_hooks(server, prepared)
            body = _guarded(stream(upstream, hooks), upstream, hooks, fail)
            return _stream_response(body, upstream, slot, headers)
        try:
            read_whole(upstream, turn)
        except PerplexityError as exc:
            _account_failed(server, prepared, exc)
            raise
        response = whole()
        response.headers.update(headers)
        return response
    except BaseException:
        upstream.close()
        if slot is not None:
            slot.release()
        raise
