"""Reading an answer stream into a turn: batches of pieces as they arrive, a None for each heartbeat of silence."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

from perplexity.stream import AskStream

from .turn import ChatTurn, Piece

__all__ = ["ClientGone", "read_whole", "relay", "turn_pieces"]

T = TypeVar("T")
R = TypeVar("R")


class ClientGone(Exception):
    """The client closed its connection; the stream should end quietly (nothing can be sent any more)."""


def turn_pieces(
    stream: AskStream, turn: ChatTurn, heartbeat: float, gone: Callable[[], bool] | None = None
) -> Iterator[list[Piece] | None]:
    """What `turn` makes of each upstream batch (None after `heartbeat` s of silence); stops once it finished.

    The greenlet that answers the client reads the upstream itself (`AskStream.ticks`): every transport can time
    a wait and carry on, so no reader and no queue per stream. Each silent tick also checks whether the client
    is still there (`gone`), so a departed client releases the upstream within one heartbeat.
    """
    batches = stream.ticks(heartbeat)
    try:
        for batch in batches:
            if batch is None:
                if gone is not None and gone():
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
        batches.close()  # releases the upstream at once, not when the generator is collected


def read_whole(stream: AskStream, turn: ChatTurn) -> None:
    """Feed the whole answer to `turn` (up to its limits), for a non-streamed reply."""
    with stream:
        for event in stream:
            turn.feed(event)
            if turn.finish_reason is not None:
                break
    if turn.completed is not None and turn.completed.revised and turn.finish_reason == "stop":
        turn.rerender(turn.completed.final_answer)  # a whole answer can take Perplexity's revision


def relay(steps: Generator[T | None, None, R], write: Callable[[T], bytes], ping: bytes) -> Generator[bytes, None, R]:
    """Run `steps` inside a stream: each item it yields is written with `write` (empty items skipped), each None
    is a heartbeat (`ping`); returns what `steps` returns (an agent turn's settled outcome, for instance)."""
    while True:
        try:
            item = next(steps)
        except StopIteration as done:
            return done.value
        if item is None:
            yield ping
        elif item:
            yield write(item)
