"""Offline replay for scripts/bench.py: a captured upstream body through the app's own pipeline, stage by stage."""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from typing import Any

__all__ = ["offline_breakdown"]


def offline_breakdown(raw: list[bytes], profile: bool) -> dict[str, Any]:
    """Replay a captured upstream body through the app's own pipeline in this process, stage by stage.

    SSE decoding, JSON parsing, answer assembly, the chat turn (citations, stop scan) and chunk encoding, each
    timed per upstream frame: where the worker's CPU per chunk goes, without gunicorn, Flask or gevent.
    """
    try:
        from api.core.completion import CompletionMeta, chunk, extras
        from api.core.turn import ChatTurn, TurnLimits
        from api.edge.sse import encode
        from perplexity.assembler import AnswerAssembler
        from perplexity.extract import loads
        from perplexity.sse import SSEDecoder
    except Exception as exc:  # the app is being edited concurrently; the breakdown is optional
        return {"error": f"import failed: {exc!r}"}
    try:
        out: dict[str, Any] = {}
        t = time.perf_counter()
        decoder = SSEDecoder()
        events = [e for piece in raw for e in decoder.feed(piece)]
        out["sse_decode_us"] = time.perf_counter() - t
        datas = [e.data for e in events if e.event == "message" and e.data]
        t = time.perf_counter()
        frames = [loads(d) for d in datas]
        out["json_loads_us"] = time.perf_counter() - t
        assembler = AnswerAssembler()
        per_frame: list[float] = []
        batches = []
        for frame in frames:
            t = time.perf_counter()
            batches.append(assembler.feed(frame))
            per_frame.append(time.perf_counter() - t)
        out["assembler_us"] = sum(per_frame)
        turn, meta = ChatTurn(TurnLimits()), CompletionMeta(model="perplexity-auto")
        t = time.perf_counter()
        pieces = [p for batch in batches for e in batch for p in turn.feed(e)]
        out["chat_turn_us"] = time.perf_counter() - t
        t = time.perf_counter()
        fields = extras(turn, meta, final=False)
        for p in pieces:
            if p.kind == "content":
                encode(chunk(meta, {"content": p.text}, fields=fields))
        out["chunk_encode_us"] = time.perf_counter() - t
        n = max(len(frames), 1)
        result: dict[str, Any] = {k: round(v / n * 1e6, 1) for k, v in out.items()}
        result["total_us"] = round(sum(result.values()), 1)
        result["frames"] = len(frames)
        tenth = max(1, len(per_frame) // 10)
        body = per_frame[:-1]  # the COMPLETED frame is timed apart: it carries the whole answer
        result["assembler_first_10pct_us"] = round(statistics.fmean(body[:tenth]) * 1e6, 1)
        result["assembler_last_10pct_us"] = round(statistics.fmean(body[-tenth:]) * 1e6, 1)
        result["assembler_completed_frame_ms"] = round(per_frame[-1] * 1e3, 2)
        if profile:
            result["profile"] = profile_pipeline(frames)
        return result
    except Exception as exc:
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def profile_pipeline(frames: list[Any]) -> str:
    """cProfile of assembling and rendering the frames: the top functions by own time."""
    from api.core.turn import ChatTurn, TurnLimits
    from perplexity.assembler import AnswerAssembler

    assembler, turn = AnswerAssembler(), ChatTurn(TurnLimits())
    profiler = cProfile.Profile()
    profiler.enable()
    for frame in frames:
        for event in assembler.feed(frame):
            turn.feed(event)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    return text.getvalue()
