"""Server-sent events out: event encoding, heartbeats during upstream silence, and the chat chunk generator."""

from __future__ import annotations

import logging
import queue
import select
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from perplexity.errors import PerplexityError
from perplexity.stream import AskStream

from .completion import CompletionMeta, chunk, extras, usage
from .errors import APIError, error_payload, to_api_error
from .turn import ChatTurn, Piece

__all__ = ["DONE", "PING", "ChunkEncoder", "chat_chunks", "encode", "error_event", "turn_pieces", "with_heartbeats"]

log = logging.getLogger(__name__)

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
_END = object()
_BATCH = 64  # events handed over per wake-up; bounds latency while saving writes


def encode(data: Any, event: str | None = None) -> bytes:
    """One SSE event with compact JSON data."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class ChunkEncoder:
    """The SSE bytes of one completion's delta chunks, equal to `encode(chunk(...))` at a fraction of the cost.

    Everything but the delta (id, model, choices scaffolding, usage, citations and search results) is encoded
    once into a prefix and a suffix, and again only when the fields change (new sources); each chunk then
    encodes just its delta. The template comes from `chunk()` itself, so the two cannot drift apart.
    """

    __slots__ = ("_meta", "_with_usage", "_prefix", "_suffix")

    def __init__(self, meta: CompletionMeta, *, with_usage: bool, fields: dict[str, Any] | None = None) -> None:
        self._meta = meta
        self._with_usage = with_usage
        self.set_fields(fields or {})

    def set_fields(self, fields: dict[str, Any]) -> None:
        """Perplexity's top-level fields (citations, search_results) for the chunks from now on."""
        whole = encode(chunk(self._meta, _PLACEHOLDER, fields=fields, with_usage=self._with_usage))
        # A literal {"__delta__":0} can only be the placeholder: inside a JSON string its quotes are escaped.
        self._prefix, self._suffix = whole.split(_PLACEHOLDER_JSON, 1)

    def content(self, text: str) -> bytes:
        return self._prefix + b'{"content":' + orjson.dumps(text) + b"}" + self._suffix

    def delta(self, delta: dict[str, Any]) -> bytes:
        return self._prefix + orjson.dumps(delta) + self._suffix


_PLACEHOLDER: dict[str, Any] = {"__delta__": 0}
_PLACEHOLDER_JSON = orjson.dumps(_PLACEHOLDER)


def error_event(exc: BaseException) -> bytes:
    """The single `data: {"error": ...}` event that ends a broken stream (no [DONE] after it)."""
    error = to_api_error(exc)
    if not isinstance(exc, PerplexityError | APIError):
        log.exception("stream failed")
    return encode(error_payload(error))


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _offer(box: queue.Queue[Any], item: Any, stopped: threading.Event) -> bool:
    """Put `item` unless the consumer has gone; a full queue never strands the reader."""
    while not stopped.is_set():
        try:
            box.put(item, timeout=1.0)
            return True
        except queue.Full:
            continue
    return False


def _reader(source: Iterable[Any], box: queue.Queue[Any], stopped: threading.Event) -> None:
    try:
        for item in source:
            if not _offer(box, item, stopped):
                return
        _offer(box, _END, stopped)
    except BaseException as exc:  # handed to the consumer, which re-raises it in its own context
        _offer(box, _Failure(exc), stopped)


def _start_reader(source: Iterable[Any]) -> tuple[Any, Any]:
    """Run `_reader` beside the consumer: a bare greenlet under gevent (a patched Thread and Queue cost
    several KiB more per stream), an OS thread otherwise (e.g. the Flask test client)."""
    if _gevent_active():
        import gevent
        import gevent.event
        import gevent.queue

        box: Any = gevent.queue.Queue(maxsize=256)
        stopped: Any = gevent.event.Event()
        gevent.spawn(_reader, source, box, stopped)
        return box, stopped
    box, stopped = queue.Queue(maxsize=256), threading.Event()
    threading.Thread(target=_reader, args=(source, box, stopped), daemon=True, name="upstream-reader").start()
    return box, stopped


def _gevent_active() -> bool:
    module = sys.modules.get("gevent.monkey")
    return bool(module and module.is_module_patched("socket"))


class ClientGone(Exception):
    """The client closed its connection; the stream should end quietly (nothing can be sent any more)."""


def client_watcher(environ: dict[str, Any]) -> Callable[[], bool]:
    """A check whether the client has closed its end, from gunicorn's socket (always False elsewhere).

    A WSGI server notices a vanished client only when a write fails, which after a FIN is the second
    write: polling the socket on each heartbeat tick finds the FIN at the first tick instead. It uses
    poll(2) with POLLRDHUP (Linux), which has no descriptor limit (select(2) fails above 1024 fds) and
    needs no read; elsewhere the check is off.
    """
    sock = environ.get("gunicorn.socket")
    rdhup = getattr(select, "POLLRDHUP", 0)
    if sock is None or not rdhup:
        return lambda: False
    fd = sock.fileno()
    make_poll = _original_poll()
    mask = rdhup | select.POLLHUP | select.POLLERR

    def gone() -> bool:
        poller = make_poll()
        poller.register(fd, mask)
        try:
            return bool(poller.poll(0))
        except OSError:
            return False  # unsure: let the next write decide

    return gone


def _original_poll() -> Callable[[], Any]:
    # gevent's select.poll would park the greenlet; a zero-timeout system poll never blocks.
    if _gevent_active():
        from gevent import monkey

        return monkey.get_original("select", "poll")
    return select.poll


def with_heartbeats(
    source: Iterable[Any],
    interval: float,
    close: Callable[[], None],
    gone: Callable[[], bool] | None = None,
) -> Iterator[list[Any] | None]:
    """Batches of items from `source`, read in a helper thread; None after `interval` s of silence.

    Under gevent the thread and queue are greenlet-based (monkey patching), so one stream costs a
    greenlet, not an OS thread. `close` is called when the consumer stops early so the reader,
    blocked on the upstream socket, is released at once.
    """
    box, stopped = _start_reader(source)
    try:
        while True:
            try:
                item = box.get(timeout=interval)
            except queue.Empty:
                if gone is not None and gone():
                    raise ClientGone from None
                yield None
                continue
            batch = [item]
            while len(batch) < _BATCH and batch[-1] is not _END and not isinstance(batch[-1], _Failure):
                try:
                    batch.append(box.get_nowait())
                except queue.Empty:
                    break
            last = batch[-1]
            items = [i for i in batch if i is not _END and not isinstance(i, _Failure)]
            if items:
                yield items
            if isinstance(last, _Failure):
                raise last.exc
            if last is _END:
                return
    finally:
        stopped.set()
        close()


def turn_pieces(
    stream: AskStream, turn: ChatTurn, heartbeat: float, gone: Callable[[], bool] | None = None
) -> Iterator[list[Piece] | None]:
    """What `turn` makes of each upstream batch (None after `heartbeat` s of silence); stops once it finished.

    When the transport can time a wait and carry on (`AskStream.supports_idle`), this greenlet reads the
    upstream itself; otherwise a reader greenlet feeds it through a queue (`with_heartbeats`), which costs
    a greenlet, a queue and two switches per batch more.
    """
    ticking = stream.supports_idle
    batches = stream.ticks(heartbeat) if ticking else with_heartbeats(stream, heartbeat, stream.close, gone)
    try:
        for batch in batches:
            if batch is None:
                # with_heartbeats checks the client itself; the stream's own ticks are checked here (one
                # generator level less: each costs C stack in every waiting greenlet).
                if ticking and gone is not None and gone():
                    raise ClientGone
                yield None
                continue
            pieces: list[Piece] = []
            for event in batch:
                pieces += turn.feed(event)
                if turn.finish_reason is not None:
                    break
            yield pieces
            if turn.finish_reason is not None:
                return
    finally:
        batches.close()  # releases the reader at once, not when the generator is collected


def guarded(
    body: Iterator[bytes], stream: AskStream, on_error: Callable[[BaseException], None] | None
) -> Iterator[bytes]:
    """Run an SSE body: a failure becomes one error event, a departed client ends it quietly, and the
    upstream is closed whatever happens."""
    try:
        yield from body
    except ClientGone:
        return
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
        yield error_event(exc)
    finally:
        stream.close()


def chat_chunks(
    stream: AskStream,
    turn: ChatTurn,
    meta: CompletionMeta,
    *,
    prompt_text: str,
    include_usage: bool,
    heartbeat: float,
    on_done: Callable[[ChatTurn], None],
    on_error: Callable[[BaseException], None] | None = None,
    on_first_token: Callable[[], None] | None = None,
    gone: Callable[[], bool] | None = None,
) -> Iterator[bytes]:
    """The chat completion SSE body: role chunk, deltas, finish chunk, optional usage chunk, [DONE]."""
    body = _chat_body(stream, turn, meta, prompt_text, include_usage, heartbeat, on_done, on_first_token, gone)
    return guarded(body, stream, on_error)


def _chat_body(
    stream: AskStream,
    turn: ChatTurn,
    meta: CompletionMeta,
    prompt_text: str,
    include_usage: bool,
    heartbeat: float,
    on_done: Callable[[ChatTurn], None],
    on_first_token: Callable[[], None] | None,
    gone: Callable[[], bool] | None,
) -> Iterator[bytes]:
    yield PING  # flushes the headers now; the role chunk waits for sources (LangChain reads the first chunk)
    started = first_token = False
    encoder = ChunkEncoder(meta, with_usage=include_usage)
    for pieces in turn_pieces(stream, turn, heartbeat, gone):
        if pieces is None:
            yield PING
            continue
        out: list[bytes] = []
        for piece in pieces:
            kind = piece.kind
            if kind == "sources":
                encoder.set_fields(extras(turn, meta, final=False))  # they ride on this and later chunks
            if not started:
                started = True
                out.append(encoder.delta({"role": "assistant", "content": ""}))
            if kind == "content":
                out.append(encoder.content(piece.text))
                if not first_token:
                    first_token = True
                    if on_first_token is not None:
                        on_first_token()
            elif kind == "reasoning":
                out.append(encoder.delta({"reasoning_content": piece.text, "reasoning": piece.text}))
            # "finish" is sent once, by _closing
        if out:
            yield b"".join(out)
    yield _closing(turn, meta, prompt_text, include_usage, started)
    on_done(turn)


def _closing(turn: ChatTurn, meta: CompletionMeta, prompt_text: str, include_usage: bool, started: bool) -> bytes:
    parts = []
    if not started:
        parts.append(encode(chunk(meta, {"role": "assistant", "content": ""}, with_usage=include_usage)))
    fields = extras(turn, meta, final=True)
    annotations = turn.annotations
    # Not in the spec's delta schema, but OpenRouter-style clients read annotations from a late delta.
    delta: dict[str, Any] = {"annotations": annotations} if annotations else {}
    parts.append(
        encode(chunk(meta, delta, finish_reason=turn.finish_reason or "stop", fields=fields, with_usage=include_usage))
    )
    if include_usage:
        body = chunk(meta, {}, fields=None)
        body["choices"] = []
        body["usage"] = usage(prompt_text, turn)
        parts.append(encode(body))
    parts.append(DONE)
    return b"".join(parts)
