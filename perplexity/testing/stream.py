"""Writing one SSE answer stream: pacing, heartbeats, in-stream faults and the open-stream gauge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .envelope import AskContext, failed_frame
from .handler import RouteHandler
from .script import Fault, Reply
from .wire import END_OF_STREAM, BodyStream, ClientGone, ServerStopping, encode_event

__all__ = ["final_frame", "stream_frames"]

_MALFORMED_DATA = '{"status": "PENDING", "blocks": [{"intended_usage": "ask_text", '


def final_frame(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the COMPLETED frame of a stream (what reconnect answers), else its last frame."""
    for frame in reversed(frames):
        if frame.get("status") == "COMPLETED":
            return frame
    real = [f for f in frames if f]
    return real[-1] if real else None


def stream_frames(
    h: RouteHandler,
    frames: list[dict[str, Any]],
    *,
    reply: Reply | None = None,
    fault: Fault | None = None,
    ctx: AskContext | None = None,
    headers: Callable[[], list[tuple[str, str]]] | None = None,
) -> None:
    """Answer with `frames` as an SSE response; a final `{}` item goes out as `end_of_stream`.

    `headers` gives extra response headers, called only when the 200 headers are about to go out.
    """
    _StreamWriter(h, frames, reply or Reply(), fault, ctx, headers).run()


class _StreamWriter:
    """One SSE response. `open_streams` drops just before the last bytes go out, so a client that
    has read a whole stream never sees it still counted; an abandoned stream drops when noticed."""

    def __init__(
        self,
        h: RouteHandler,
        frames: list[dict[str, Any]],
        reply: Reply,
        fault: Fault | None,
        ctx: AskContext | None,
        headers: Callable[[], list[tuple[str, str]]] | None = None,
    ) -> None:
        self.h, self.frames, self.reply, self.fault, self.ctx = h, frames, reply, fault, ctx
        self.headers = headers
        self.after = fault.after_frames if fault else len(frames) + 1
        # The fault still to apply inside the body (slow_first_byte acts before the headers).
        self.pending = fault if fault and fault.kind != "slow_first_byte" else None
        self.counted = False

    def run(self) -> None:
        try:
            if not self._before_headers():
                return
            stream = self.h.start_stream(self.headers() if self.headers else None)
            self.h.fake.stream_opened()
            self.counted = True
            if self._write(stream):
                self._release()
                stream.end()
        except ClientGone:
            self.h.fake.client_left()
            self.h.close_connection = True
        except ServerStopping:
            self.h.close_connection = True
        finally:
            self._release()

    def _release(self) -> None:
        if self.counted:
            self.counted = False
            self.h.fake.stream_closed()

    def _before_headers(self) -> bool:
        """Apply faults that act before the status line; return False if no response follows."""
        kind = self.fault.kind if self.fault else None
        if kind == "slow_first_byte":
            self.h.chunked().wait(self.fault.delay if self.fault else 0)
        if kind == "reset" and self.after < 0:  # RST instead of any response
            self.h.reset_connection()
            return False
        if kind == "eof" and self.after < 0:  # close instead of any response
            self.h.close_connection = True
            return False
        return True

    def _write(self, stream: BodyStream) -> bool:
        """Write frames and fault; return True if the body should be ended with the zero chunk."""
        stream.wait(self.reply.first_byte_delay, self.reply.heartbeat_every)
        at = max(self.after, 0)
        for index, frame in enumerate(self.frames):
            if index == at and (ended := self._inject(stream)) is not None:
                return ended
            if self.ctx and self.ctx.backend_uuid in self.h.fake.terminated:
                return self._send_terminated(stream)
            if index:
                stream.wait(self.reply.frame_delay, self.reply.heartbeat_every)
            last = index == len(self.frames) - 1
            if last and self.pending is None:
                self._release()
            stream.send(END_OF_STREAM if last and frame == {} else encode_event(frame))
        if at >= len(self.frames) and (ended := self._inject(stream)) is not None:
            return ended
        return True

    def _inject(self, stream: BodyStream) -> bool | None:
        """Apply an in-stream fault: None to carry on, True to end the body, False if it is gone."""
        fault, self.pending = self.pending, None
        if fault is None:
            return None
        if fault.kind == "stall":
            stream.wait(fault.delay)  # no bytes at all, not even heartbeats
            return None
        if fault.kind == "malformed":
            stream.send(encode_event(_MALFORMED_DATA))
            return None
        self._release()
        if fault.kind == "reset":
            self.h.reset_connection()
            return False
        if fault.kind in ("failed", "rate_limited_in_stream"):
            stream.send(encode_event(self._failed_frame(fault)))
        if fault.kind != "eof":  # failed, rate limited, truncated: end_of_stream, no COMPLETED
            stream.send(END_OF_STREAM)
        return True

    def _failed_frame(self, fault: Fault) -> dict[str, Any]:
        default_code = "RATE_LIMIT_EXCEEDED" if fault.kind == "rate_limited_in_stream" else "INTERNAL_ERROR"
        code = fault.error_code or default_code
        message = fault.message or ("Rate limit exceeded." if "RATE_LIMIT" in code else "Something went wrong.")
        if self.ctx is None:
            return {"status": "FAILED", "error_code": code, "text": message}
        return failed_frame(self.ctx, code=code, message=message)

    def _send_terminated(self, stream: BodyStream) -> bool:
        """A terminated run reports COMPLETED with `text_completed: false` (protocol 2.3)."""
        self._release()
        final = final_frame(self.frames)
        if final is not None:
            stream.send(encode_event({**final, "text_completed": False}))
        stream.send(END_OF_STREAM)
        return True
