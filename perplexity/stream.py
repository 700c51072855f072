"""AskStream: an opened Perplexity answer stream, read as typed events; closes its connection when done."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any

from .assembler import AnswerAssembler
from .errors import (
    AskFailedError,
    AskRateLimitedError,
    MalformedFrameError,
    StreamError,
    StreamTruncatedError,
    TransportError,
    UpstreamTimeoutError,
)
from .extract import JSONDecodeError, loads
from .sse import SSEDecoder
from .transport import TransportResponse
from .types import AskEvent, AskResult, Completed, Failed, ThreadIds

__all__ = ["AskStream"]

log = logging.getLogger(__name__)


class AskStream:
    """Iterate to get AskEvents; raises a StreamError subclass when the stream breaks.

    The stream owns the HTTP response: it is closed when the events run out, on any error, and
    on `close()`, so a consumer that stops early releases the upstream connection at once.
    """

    def __init__(
        self,
        response: TransportResponse,
        *,
        request_id: str,
        on_close: Callable[[AskStream], None] | None = None,
    ) -> None:
        self._response = response
        self.request_id = request_id
        self._on_close = on_close
        self._also_on_close: list[Callable[[], None]] = []
        self._assembler = AnswerAssembler()
        self._closed = False
        self._iterator: Iterator[AskEvent] | None = None
        self._pending: list[AskEvent] = []
        self.frames = 0

    # ---- public ---------------------------------------------------------------------------

    @property
    def answer(self) -> str:
        """The answer text received so far."""
        return self._assembler.answer

    @property
    def thread(self) -> ThreadIds | None:
        """The thread ids once known (they arrive in the first frames)."""
        return self._assembler.thread

    @property
    def model(self) -> str | None:
        """The model Perplexity says is answering, once a frame named it (from the first one, normally)."""
        return self._assembler.model

    @property
    def completed(self) -> Completed | None:
        """The terminal summary, once the COMPLETED frame has been read."""
        return self._assembler.completed

    def __iter__(self) -> Iterator[AskEvent]:
        if self._iterator is None:
            self._iterator = _flatten(self._guard(self._batches(None)))
        return self._iterator

    @property
    def supports_idle(self) -> bool:
        """Whether `ticks()` works: the transport can wait for the next bytes with a timeout and carry on."""
        return bool(getattr(self._response, "supports_idle", False))

    def ticks(self, idle: float) -> Iterator[list[AskEvent] | None]:
        """The events in batches (those that arrived together), and None after each `idle` s of silence.

        This lets one greenlet both read the upstream and act during its silences (heartbeats, checking
        its client), instead of a reader greenlet and a queue per stream. Needs `supports_idle`.
        """
        if not self.supports_idle:
            raise ValueError("this transport cannot report idle periods")
        if self._iterator is not None:
            raise RuntimeError("the stream is already being read")
        self._iterator = iter(())
        return self._guard(self._batches(idle))

    def __enter__(self) -> AskStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the upstream response (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._response.close()
        finally:
            if self._on_close is not None:
                self._on_close(self)
            for callback in self._also_on_close:
                callback()

    def also_on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when the stream closes (an account pool counting its open asks, for instance)."""
        if self._closed:
            callback()
        else:
            self._also_on_close.append(callback)

    def collect(self) -> AskResult:
        """Read the whole stream and return the answer (Perplexity's final text wins)."""
        for _ in self:
            pass
        done = self._assembler.completed
        assert done is not None  # _events() raises unless the run completed
        return AskResult(
            answer=done.final_answer,
            reasoning=done.reasoning,
            sources=done.sources,
            media=done.media,
            related_questions=done.related_questions,
            title=done.title,
            thread=done.thread,
            model=done.model,
            clarifying_questions=tuple(self._assembler.clarifications),
            mode=done.mode,
        )

    # ---- reading --------------------------------------------------------------------------

    def _guard(self, batches: Iterator[list[AskEvent] | None]) -> Iterator[list[AskEvent] | None]:
        """Map failures to StreamErrors with the partial answer; close the response whatever happens."""
        try:
            yield from batches
        except StreamError as exc:
            exc.partial_answer = exc.partial_answer or self._assembler.answer
            raise
        except TransportError as exc:
            if self._assembler.completed is not None:
                # The answer was whole; only the drain after it failed. Hand it over all the same.
                log.debug("drain after COMPLETED failed: %s", exc.message)
                if self._pending:
                    yield self._pending
                return
            if isinstance(exc, UpstreamTimeoutError):
                message = f"Perplexity stopped sending mid-answer ({exc.message})"
            else:
                message = f"The connection to Perplexity broke mid-answer ({exc.message})"
            raise StreamTruncatedError(message, partial_answer=self.answer) from exc
        finally:
            self.close()

    def _batches(self, idle: float | None) -> Iterator[list[AskEvent] | None]:
        response = self._response
        decoder = SSEDecoder()
        ticking = idle is not None
        # The last batch or tick handed out: the transport ticks `idle` s after it, so bytes without events
        # (the upstream's own `: ping` comments) count as silence too.
        quiet_since = monotonic()
        if ticking:
            chunks = response.iter_bytes(next_tick=lambda: quiet_since + idle - monotonic())  # type: ignore[call-arg]
        else:
            chunks = response.iter_bytes()
        batch: list[AskEvent] = []
        for chunk in chunks:
            if not chunk:
                yield None  # an idle tick: nothing arrived for `idle` seconds
                quiet_since = monotonic()
                continue
            for event in decoder.feed(chunk):
                if event.event == "end_of_stream":
                    self._check_finished("before the answer was complete")
                    continue  # read on to the end of the body, so the connection can be reused
                if event.event != "message" or not event.data or self._assembler.completed is not None:
                    continue
                for answer_event in self._frame(event.data):
                    if self._assembler.completed is None:
                        batch.append(answer_event)
                    else:
                        # The terminal frame's events wait for the (immediate) end of the body: a consumer
                        # that stops at Completed would otherwise cut the connection, not pool it.
                        self._pending.append(answer_event)
            # Events that arrived together go out together (one write downstream), but never wait for
            # bytes that have not arrived yet.
            if batch and not (ticking and response.buffered):  # type: ignore[attr-defined]
                yield batch
                batch = []
                quiet_since = monotonic()
        decoder.close()
        self._check_finished("(the connection closed before the answer was complete)")
        if batch:
            yield batch
        if self._pending:
            yield self._pending

    def _frame(self, data: str) -> list[AskEvent]:
        try:
            frame: Any = loads(data)
        except JSONDecodeError as exc:
            raise MalformedFrameError(
                f"Perplexity sent a frame that is not JSON (frame {self.frames + 1})",
                partial_answer=self.answer,
            ) from exc
        if not isinstance(frame, dict):
            raise MalformedFrameError(
                f"Perplexity sent a frame that is not a JSON object (frame {self.frames + 1})",
                partial_answer=self.answer,
            )
        self.frames += 1
        events = self._assembler.feed(frame)
        # A failed run ends with its Failed event (the assembler adds nothing after it).
        if events and isinstance(events[-1], Failed):
            raise _failure(events[-1], self.answer)
        return events

    def _check_finished(self, when: str) -> None:
        if self._assembler.completed is None:
            raise StreamTruncatedError(
                f"Perplexity ended the answer stream {when} after {self.frames} frames",
                partial_answer=self.answer,
            )


def _flatten(batches: Iterator[list[AskEvent] | None]) -> Iterator[AskEvent]:
    for batch in batches:
        if batch:
            yield from batch


def _failure(event: Failed, partial: str) -> AskFailedError:
    cls = AskRateLimitedError if event.code and "RATE_LIMIT" in event.code.upper() else AskFailedError
    return cls(event.message, code=event.code, partial_answer=partial)
