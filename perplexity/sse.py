"""Incremental decoding of a `text/event-stream` body (WHATWG server-sent events) from raw bytes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from perplexity.errors import MalformedFrameError

__all__ = ["SSEDecoder", "ServerSentEvent", "iter_events"]

_BOM = b"\xef\xbb\xbf"
_DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024
# Event names Perplexity sends, decoded once (a dict hit is cheaper than a decode per frame).
_EVENT_NAMES = {b"message": "message", b"end_of_stream": "end_of_stream"}
_MAX_FAST_NAME = 7 + 64  # "event: " + a name this long at most takes the fast path


# Not frozen: a frozen dataclass's __init__ costs about 3x more (object.__setattr__ per field), and one of
# these is built per upstream frame. Treat instances as immutable all the same.
@dataclass(slots=True)
class ServerSentEvent:
    """One dispatched event: its type, its data lines joined with `\\n`, the last event id and `retry`."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns body chunks, split anywhere, into events; spec-exact line handling, no I/O.

    Lines end in CRLF, LF or a bare CR. A CR that ends a chunk completes its line at once; the decoder then
    drops a LF that starts the next chunk, so a CRLF split across chunks is still one line end. Each chunk
    is scanned once with `bytes.find`, and an unfinished line is kept as a list of pieces, so a long line
    arriving in many small chunks costs linear time.

    `id` keeps the stream's last event id (it carries over to later events, as the spec says); `retry` is
    the value of a `retry:` field inside this event's block, else None.
    """

    __slots__ = ("_max_line", "_head", "_skip_lf", "_pieces", "_pending", "_event", "_data", "_id", "_retry")

    def __init__(self, *, max_line_bytes: int = _DEFAULT_MAX_LINE_BYTES) -> None:
        self._max_line = max_line_bytes
        self._head: bytes | None = b""  # bytes seen before the BOM check; None once it is done
        self._skip_lf = False  # the previous chunk ended in CR: a LF starting this chunk belongs to it
        self._pieces: list[bytes] = []  # the unfinished last line, in pieces
        self._pending = 0  # total length of `_pieces`
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume one chunk of the body; return the events it completed, in order."""
        if type(chunk) is not bytes:
            chunk = bytes(chunk)  # bytearray / memoryview: the scanner needs bytes.find
        if self._head is not None:
            chunk = self._strip_bom(chunk)
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if not self._pieces and not self._data and not self._event and self._retry is None:
            event = self._single_event(chunk)
            if event is not None:
                return [event]
        events: list[ServerSentEvent] = []
        for line in self._complete_lines(chunk):
            self._process_line(line, events)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of body: process an unterminated last line, then drop the unfinished event (WHATWG)."""
        events: list[ServerSentEvent] = []
        tail = self._head if self._head else b""  # a stream shorter than a BOM is still content
        self._head = None
        if tail:
            self._pieces.append(tail)
        if self._pieces:
            line = b"".join(self._pieces)
            self._pieces.clear()
            self._pending = 0
            self._check_length(len(line))
            self._process_line(line, events)
        # An event without its terminating blank line is never dispatched.
        self._event, self._data, self._retry = "", [], None
        return events

    def _single_event(self, chunk: bytes) -> ServerSentEvent | None:
        """The fast path: a chunk that is exactly one `event: NAME` + one `data: ...` event, CRLF or LF.

        That is how Perplexity frames every event, one per HTTP chunk; the general line scanner costs
        several times more per 4 KB frame. Anything else (None) goes through the general path.
        """
        if chunk[-4:] == b"\r\n\r\n":
            eol, size = b"\r\n", 2
        elif chunk[-2:] == b"\n\n" and chunk[-3:-2] != b"\r":
            eol, size = b"\n", 1
        else:
            return None
        # Line breaks are looked for in str, not bytes: on CPython 3.11 `b"x" in some_bytes` and `bytes.find`
        # first try their argument as an int and format a TypeError for it, which costs more than the memchr.
        if chunk[:7] == b"event: ":
            name, found, _ = chunk[7:_MAX_FAST_NAME].partition(eol)
            event = _EVENT_NAMES.get(name)
            if event is None:
                event = name.decode("utf-8", "replace")
                if not found or "\r" in event or "\n" in event:
                    return None
                event = event or "message"
            start = 7 + len(name) + size + 6
            if chunk[start - 6 : start] != b"data: ":
                return None
        elif chunk[:6] == b"data: ":
            event, start = "message", 6
        else:
            return None
        end = len(chunk) - 2 * size
        data = chunk[start:end].decode("utf-8", "replace")
        # Exactly one non-empty data line: no other CR or LF in it (an empty one follows the spec's rules in
        # the general path).
        if not data or "\n" in data or "\r" in data:
            return None
        self._check_length(end - start + 6)  # the whole line in bytes, as the general path counts it
        return ServerSentEvent(event, data, self._id, None)

    def _strip_bom(self, chunk: bytes) -> bytes:
        """Hold the first bytes until it is clear whether they are a UTF-8 BOM, and drop it if so."""
        head = self._head + chunk if self._head else chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _complete_lines(self, chunk: bytes) -> list[bytes]:
        """Return the lines this chunk completes; keep its unterminated tail for the next chunk."""
        lines = _split_lines(chunk)
        tail = lines.pop()
        if chunk[-1:] == b"\r":
            # The CR completed its line already; a LF that starts the next chunk is part of it.
            self._skip_lf = True
        if lines and self._pieces:
            self._pieces.append(lines[0])
            lines[0] = b"".join(self._pieces)
            self._pieces.clear()
            self._pending = 0
        if tail:
            self._pieces.append(tail)
            self._pending += len(tail)
            self._check_length(self._pending)
        if lines:
            self._check_length(max(map(len, lines)))
        return lines

    def _check_length(self, length: int) -> None:
        if length > self._max_line:
            raise MalformedFrameError(f"SSE line longer than {self._max_line} bytes")

    def _process_line(self, line: bytes, events: list[ServerSentEvent]) -> None:
        """Apply one line to the event being built (WHATWG "process the field")."""
        if not line:
            self._dispatch(events)
            return
        if line[0] == 0x3A:  # ":" starts a comment (Perplexity's heartbeats)
            return
        if line.startswith(b"data:"):
            # Fast path for the bulk of the bytes: one slice and one decode per data line.
            self._data.append((line[6:] if line[5:6] == b" " else line[5:]).decode("utf-8", "replace"))
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():  # bytes.isdigit is ASCII-only, as the spec wants
                self._retry = int(value)
        # Any other field name is ignored.

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        """Blank line: emit the event unless it has no data lines, then start a new one."""
        if self._data:
            data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
            events.append(ServerSentEvent(self._event or "message", data, self._id, self._retry))
        self._event, self._data, self._retry = "", [], None


def _split_lines(chunk: bytes) -> list[bytes]:
    """Split at CRLF, LF and bare CR; the last item is the unterminated rest (b"" if none).

    `bytes.find` (memchr) is several times faster than `bytes.split`/`replace` on 4 KB frames, and each
    byte is scanned at most once per terminator kind: a terminator is only searched for again once used.
    """
    lf = chunk.find(b"\n")
    cr = chunk.find(b"\r")
    if lf < 0 and cr < 0:
        return [chunk]
    lines: list[bytes] = []
    pos = 0
    while lf >= 0 or cr >= 0:
        if cr < 0 or 0 <= lf < cr:
            lines.append(chunk[pos:lf])
            pos = lf + 1
        else:
            lines.append(chunk[pos:cr])
            pos = cr + 2 if lf == cr + 1 else cr + 1
        if 0 <= lf < pos:
            lf = chunk.find(b"\n", pos)
        if 0 <= cr < pos:
            cr = chunk.find(b"\r", pos)
    lines.append(chunk[pos:])
    return lines


def iter_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Yield the events of a body given as an iterable of byte chunks."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()
