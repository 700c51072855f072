"""The benchmark's report: the side-by-side table, the secondary figures, the issue's targets and the seed's values."""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = [
    "SEED",
    "STAGES",
    "TARGET",
    "agent_lines",
    "concurrency_lines",
    "details",
    "floor_line",
    "machine",
    "messages_lines",
    "table",
]

# The requirement, and the seed's figures measured on the same rig (quoted in scripts/README.md).
TARGET = {"added_ms": 1.0, "ttft_added_ms": 1.5, "cpu_us": 20.0, "streams": 5000, "kib": 64.0, "release_extra_s": 1.0}
SEED = {"added_ms": "+5.6 ms", "ttft": "n/a", "cpu_us": "2,434 µs", "streams": "6 / 500", "release": "never"}
# Stages of the offline replay (bench_replay.py), in pipeline order.
STAGES = ("sse_decode_us", "json_loads_us", "assembler_us", "chat_turn_us", "chunk_encode_us")


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "MISS")


def signed(value: Any, digits: int = 3) -> str:
    """A difference with its sign (+1.234, -0.012), or "-" when missing."""
    return fmt(value, digits) if value is None or value != value else f"{value:+,.{digits}f}"


def floor_cell(r: dict[str, Any], value: Any, extra: str, digits: int) -> str:
    """The stack floor's cell: its value and what it adds (or "-", or why it is missing)."""
    if value is not None:
        return f"{fmt(value, digits)} ({extra})" if extra else fmt(value, digits)
    return "(failed, see below)" if r.get("floor_error") else "-"


def table(results: dict[str, Any], heartbeat: float) -> str:
    """The side-by-side table: figure, direct, server, added/ratio, floor (its added), target, seed, verdict.

    The floor column (the stack floor: bench_floor.py, a minimal Flask + requests pass-through under the same
    gunicorn settings) is left out when no phase measured it (--no-floor, or only the other phases)."""
    rows: list[tuple[str, ...]] = [
        ("Figure", "direct", "server", "added / ratio", "floor (added)", "target", "seed", "")
    ]
    for key, label, target_key, seed in (
        ("latency", "Non-streamed latency", "added_ms", SEED["added_ms"]),
        ("ttft", "Time to first token", "ttft_added_ms", SEED["ttft"]),
    ):
        r = results.get(key) or {}
        if "direct" not in r:
            rows.append((label, problem(r), "", "", "", "", seed, ""))
            continue
        limit = TARGET[target_key]
        for q in ("p50", "p99"):
            added = r[f"added_{q}_ms"]
            extra = f" / {fmt(r['ratio_p50'])}x" if q == "p50" else ""
            floor = (r.get("floor") or {}).get(f"{q}_ms")
            rows.append(
                (
                    f"{label} {q} (ms)",
                    fmt(r["direct"][f"{q}_ms"], 3),
                    fmt(r["server"][f"{q}_ms"], 3),
                    f"{signed(added)}{extra}",
                    floor_cell(r, floor, signed(r.get(f"floor_added_{q}_ms")), 3),
                    f"<= +{fmt(limit, 1)} ms" if q == "p50" else "",
                    seed if q == "p50" else "",
                    verdict(added <= limit) if q == "p50" else "",
                )
            )
    r = results.get("cpu") or {}
    if "worker_cpu_us_per_chunk" in r:
        us = r["worker_cpu_us_per_chunk"]
        decode = r["direct_decode_us_per_frame"]
        ratio = us / decode if us and decode else None
        floor = r.get("floor_worker_cpu_us_per_chunk")
        floor_ratio = f"{fmt(floor / decode, 1)}x" if floor and decode else ""
        rows.append(
            (
                f"CPU per streamed chunk, {fmt(r['upstream_frame_bytes_p50'])} B frames (us)",
                f"{fmt(decode, 1)} (decode)",
                fmt(us, 1),
                f"{fmt(ratio, 1)}x" if ratio else "-",
                floor_cell(r, floor, floor_ratio, 1),
                f"<= {fmt(TARGET['cpu_us'], 0)} us",
                SEED["cpu_us"],
                verdict(us <= TARGET["cpu_us"] if us is not None else None),
            )
        )
        real = r.get("realistic") or {}
        if real.get("worker_cpu_us_per_chunk") is not None:
            us = real["worker_cpu_us_per_chunk"]
            rows.append(
                (
                    f"  same, real-shaped {real['frame_bytes_p50']:,} B frames, {real['delta_chars']}-char deltas",
                    "",
                    fmt(us, 1),
                    "",
                    floor_cell(r, real.get("floor_worker_cpu_us_per_chunk"), "", 1),
                    f"<= {fmt(TARGET['cpu_us'], 0)} us",
                    SEED["cpu_us"],
                    verdict(us <= TARGET["cpu_us"]),
                )
            )
    else:
        rows.append(("CPU per streamed chunk (us)", problem(r), "", "", "", "", SEED["cpu_us"], ""))
    r = results.get("streams") or {}
    if "held" in r:
        rows.append(
            (
                "Open streams held by one worker",
                "-",
                f"{fmt(r['held'])} / {fmt(r['target'])}",
                f"{fmt(r['alive_in_window'])} alive",
                "",
                f"{fmt(TARGET['streams'])}",
                SEED["streams"],
                # A run asking for fewer streams (--quick, --streams) cannot meet or miss the target.
                verdict(r["held"] >= TARGET["streams"] if r["target"] >= TARGET["streams"] else None),
            )
        )
        kib = r["kib_per_stream"]
        rows.append(
            (
                "Worker RSS per open stream (KiB)",
                "-",
                fmt(kib, 1),
                f"slope {fmt(r['kib_per_stream_slope'], 1)}",
                "",
                f"<= {fmt(TARGET['kib'], 0)} KiB",
                "-",
                verdict(kib <= TARGET["kib"] if kib is not None else None),
            )
        )
    else:
        rows.append(("Open streams held by one worker", problem(r), "", "", "", "", SEED["streams"], ""))
    r = results.get("release") or {}
    limit = heartbeat + TARGET["release_extra_s"]
    for mode in ("rst", "fin"):
        m = r.get(mode) or {}
        label = f"Upstream released after client {mode.upper()}, p50 / max (s)"
        if "p50_s" not in m:
            rows.append((label, problem(m or r), "", "", "", "", SEED["release"], ""))
            continue
        rows.append(
            (
                label,
                "-",
                f"{fmt(m['p50_s'], 2)} / {fmt(m['max_s'], 2)}",
                f"{fmt(m['streams'])} streams, {fmt(m['still_open'])} left",
                "",
                f"<= {fmt(limit, 1)} s (HB {fmt(heartbeat, 1)} + 1)",
                SEED["release"],
                verdict(m["max_s"] is not None and m["max_s"] <= limit),
            )
        )
    if not any(row[4] not in ("", "-") for row in rows[1:]):
        rows = [row[:4] + row[5:] for row in rows]  # no floor measured: no floor column
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def problem(r: dict[str, Any]) -> str:
    return str(r.get("error") or r.get("skipped") or "not run")[:60]


def details(results: dict[str, Any]) -> str:
    """Secondary figures under the table."""
    out: list[str] = []
    floor = floor_line(results)
    if floor:
        out.append(floor)
    for key in ("latency", "ttft"):
        r = results.get(key) or {}
        if "worker_cpu_ms_per_request" in r:
            if "floor" in r:
                out.append(
                    f"{key}: {r['server']['n']} rounds of direct/server/floor; worker CPU "
                    f"{r['worker_cpu_ms_per_request']} ms per request (floor "
                    f"{r.get('floor_worker_cpu_ms_per_request')}), fake CPU {r['fake_cpu_ms_per_ask']} ms per ask; "
                    f"mean direct/server/floor {r['direct']['mean_ms']}/{r['server']['mean_ms']}/"
                    f"{r['floor']['mean_ms']} ms"
                )
            else:
                out.append(
                    f"{key}: {r['server']['n']} pairs; worker CPU {r['worker_cpu_ms_per_request']} ms per request, "
                    f"fake CPU {r['fake_cpu_ms_per_ask']} ms per ask; mean direct/server "
                    f"{r['direct']['mean_ms']}/{r['server']['mean_ms']} ms"
                )
        if r.get("floor_error"):
            out.append(f"{key}: stack floor missing: {str(r['floor_error']).splitlines()[0]}")
    c = results.get("cpu") or {}
    if "content_chunks" in c:
        out.append(
            f"cpu: {c['streams']} streams x {c['upstream_frames_per_stream']} upstream frames "
            f"(p10/p50/p90 {c['upstream_frame_bytes_p10_p90'][0]}/{c['upstream_frame_bytes_p50']}/"
            f"{c['upstream_frame_bytes_p10_p90'][1]} B, final frame {c['upstream_final_frame_bytes']:,} B); "
            f"{c['content_chunks']:,} content chunks, worker {c['worker_cpu_s']} s CPU in {c['wall_s']} s; "
            f"{c['worker_cpu_us_per_upstream_frame']} us/upstream frame; fake {c['fake_cpu_us_per_frame']} us/frame"
        )
        if c.get("floor_worker_cpu_us_per_chunk") is not None:
            out.append(
                f"cpu: floor {c['floor_streams']} streams, {c['floor_content_chunks']:,} content chunks (one per "
                f"upstream read), worker {c['floor_worker_cpu_s']} s CPU in {c['floor_wall_s']} s"
            )
        elif c.get("floor_error"):
            out.append(f"cpu: stack floor missing: {str(c['floor_error']).splitlines()[0]}")
        real = c.get("realistic") or {}
        if real.get("worker_cpu_us_per_stream"):
            per_stream = real["worker_cpu_us_per_stream"]
            line = f"cpu: real-shaped us/chunk per stream (the table shows medians): server {per_stream}"
            if real.get("floor_worker_cpu_us_per_stream"):
                line += f", floor {real['floor_worker_cpu_us_per_stream']} (streams interleaved)"
            out.append(line)
        short = c.get("short_streams") or {}
        if short.get("worker_cpu_us_per_chunk") is not None:
            out.append(
                f"cpu: short streams ({short['streams']} x {short['frames_per_stream']} frames): "
                f"{short['worker_cpu_us_per_chunk']} us/chunk vs {c['worker_cpu_us_per_chunk']} us/chunk at "
                f"{c['upstream_frames_per_stream']} frames (a per-chunk cost that grows with the answer is quadratic)"
            )
        b = c.get("offline_breakdown") or {}
        if "total_us" in b:
            out.append(
                "cpu offline replay (us/frame): "
                + ", ".join(f"{k[:-3]} {b[k]}" for k in STAGES if k in b)
                + f" = {b['total_us']}; assembler first/last 10% of frames "
                f"{b['assembler_first_10pct_us']}/{b['assembler_last_10pct_us']} us, "
                f"COMPLETED frame {b['assembler_completed_frame_ms']} ms"
            )
        elif b:
            out.append(f"cpu offline replay: {b.get('error')}")
    out.extend(agent_lines(results.get("agent")))
    out.extend(messages_lines(results.get("messages")))
    out.extend(concurrency_lines(results.get("concurrency")))
    s = results.get("streams") or {}
    if "held" in s:
        fin = s.get("release_all_fin") or {}
        out.append(
            f"streams: opened in {s['open_seconds']} s, failed {s['failed']} {s['errors'] or ''}, ended by server "
            f"{s['ended_by_server']}, upstream open {s['upstream_open']:,}; worker RSS {s['worker_rss_before_mib']} -> "
            f"{s['worker_rss_with_mib']} MiB, {s['worker_fds_per_stream']} fds/stream; holding: worker "
            f"{s['worker_cpu_pct_holding']}% CPU ({s['worker_cpu_us_per_stream_second']} us/stream/s), upstream "
            f"({s['upstream']}, {s['state']}) {s['upstream_cpu_pct_holding']}%; all leave (FIN): upstream p50/max "
            f"{fin.get('p50_s')}/{fin.get('max_s')} s,"
            f" {fin.get('still_open')} left"
        )
        if s.get("first_error"):
            out.append(f"streams: first error: {s['first_error']}")
    return "\n".join(out)


def concurrency_lines(r: dict[str, Any] | None) -> list[str]:
    """The concurrency phase: per level of concurrent clients, each side's p50/p99 and throughput."""
    if not r:
        return []
    if "error" in r or "skipped" in r:
        return [f"concurrency: {r.get('error') or r.get('skipped')}"]
    out = ["concurrency: non-streamed completions, per side p50 / p99 ms and requests/s (median of bursts):"]
    for row in r["by_level"]:
        cells = [
            f"{side} {row[side]['p50_ms']} / {row[side]['p99_ms']} ms, {row[side]['rps']}/s"
            for side in ("direct", "server", "floor")
            if side in row
        ]
        out.append(f"concurrency:   {row['clients']:>3} clients  " + "; ".join(cells))
    return out


def agent_lines(r: dict[str, Any] | None) -> list[str]:
    """The agent phase (opt-in): a tool-call answer against a text answer of the same upstream stream."""
    if not r:
        return []
    if "nonstream" not in r:
        return [f"agent: {problem(r)}"]
    out = [
        f"agent: one {r['answer_chars']}-char <tool_call> answer ({r['upstream_frames']} upstream frames of "
        f"{r['upstream_chunk_chars']} chars), with tools (a tool call) and without (text); {r['rounds']} "
        f"interleaved rounds of 4 kinds in {r['wall_s']} s; p50/p99 ms, tool added and tool/text ratio:"
    ]
    width = len("streamed, to first delta")
    for key, label in (
        ("nonstream", "non-streamed"),
        ("stream_first_delta", "streamed, to first delta"),
        ("stream_done", "streamed, to [DONE]"),
    ):
        v = r[key]
        out.append(
            f"agent:   {label.ljust(width)}  text {fmt(v['text']['p50_ms'], 3)} / {fmt(v['text']['p99_ms'], 3)}, "
            f"tool {fmt(v['tool']['p50_ms'], 3)} / {fmt(v['tool']['p99_ms'], 3)}: added "
            f"{signed(v['added_p50_ms'])} / {signed(v['added_p99_ms'])} ms, {fmt(v['ratio_p50'])}x / "
            f"{fmt(v['ratio_p99'])}x"
        )
    cpu = r.get("worker_cpu_ms_per_request") or {}
    if cpu.get("text") is not None:
        parts = []
        for label, text, tool, key in (
            ("non-streamed", "text", "tool", "worker_cpu_tool_added_nonstream"),
            ("streamed", "text_stream", "tool_stream", "worker_cpu_tool_added_stream"),
        ):
            added = r.get(key) or {}
            parts.append(
                f"{label} text {fmt(cpu.get(text), 3)} / tool {fmt(cpu.get(tool), 3)} ms "
                f"({signed(added.get('added_ms'))} ms, {fmt(added.get('ratio'))}x)"
            )
        out.append(
            f"agent:   worker CPU per request (medians of {r['cpu_blocks_per_kind']} blocks of {r['cpu_block']} per "
            "kind; added and ratio: medians of tool block vs text block of the same round): " + "; ".join(parts)
        )
    return out


def messages_lines(r: dict[str, Any] | None) -> list[str]:
    """The messages phase (opt-in): POST /v1/messages against POST /v1/chat/completions, the same upstream answer."""
    if not r:
        return []
    if "nonstream" not in r:
        return [f"messages: {problem(r)}"]
    out = [
        f"messages: /v1/messages ({r['model']}) vs /v1/chat/completions, one {r['answer_chars']}-char answer "
        f"({r['upstream_frames']} upstream frames); {r['rounds']} interleaved rounds of 4 kinds in {r['wall_s']} s; "
        "p50/p99 ms, messages added and messages/chat ratio:"
    ]
    width = len("streamed, to first text")
    for key, label in (
        ("nonstream", "non-streamed"),
        ("stream_first_token", "streamed, to first text"),
        ("stream_done", "streamed, to the end"),
    ):
        v = r[key]
        out.append(
            f"messages:   {label.ljust(width)}  chat {fmt(v['chat']['p50_ms'], 3)} / {fmt(v['chat']['p99_ms'], 3)}, "
            f"messages {fmt(v['messages']['p50_ms'], 3)} / {fmt(v['messages']['p99_ms'], 3)}: added "
            f"{signed(v['added_p50_ms'])} / {signed(v['added_p99_ms'])} ms, {fmt(v['ratio_p50'])}x / "
            f"{fmt(v['ratio_p99'])}x"
        )
    for key in ("cpu", "cpu_short"):
        c = r.get(key) or {}
        if c.get("chat_us_per_frame") is None:
            continue
        chat, messages = c.get("chat_client") or {}, c.get("messages_client") or {}
        out.append(
            f"messages:   worker CPU per upstream frame, {c['upstream_frames_per_stream']:,} real-shaped "
            f"{c['frame_bytes_p50']:,} B frames per stream (medians of {c['rounds']} rounds of one stream each): "
            f"chat {fmt(c['chat_us_per_frame'], 1)} us, messages {fmt(c['messages_us_per_frame'], 1)} us: added "
            f"{signed(c['added_us_per_frame'], 1)} us, {fmt(c['ratio'])}x; client got chat "
            f"{fmt(chat.get('text_chunks'))} content chunks ({fmt(chat.get('body_bytes'))} B), messages "
            f"{fmt(messages.get('text_chunks'))} text deltas in {fmt(messages.get('events'))} events "
            f"({fmt(messages.get('body_bytes'))} B)"
        )
        out.append(
            f"messages:     us/frame per stream: chat {c['chat_us_per_frame_per_stream']}, "
            f"messages {c['messages_us_per_frame_per_stream']}"
        )
    return out


def floor_line(results: dict[str, Any]) -> str:
    """The stack floor's added cost (over direct) and what our code adds on top of it (server - floor)."""
    lat, ttft, cpu = (results.get(k) or {} for k in ("latency", "ttft", "cpu"))
    real = cpu.get("realistic") or {}
    floor_us, real_floor_us = cpu.get("floor_worker_cpu_us_per_chunk"), real.get("floor_worker_cpu_us_per_chunk")
    if "floor" not in lat and "floor" not in ttft and floor_us is None:
        return ""

    def minus(a: Any, b: Any, digits: int) -> str:
        return signed(a - b, digits) if a is not None and b is not None else "-"

    code_us = minus(cpu.get("worker_cpu_us_per_chunk"), floor_us, 1)
    real_code_us = minus(real.get("worker_cpu_us_per_chunk"), real_floor_us, 1)
    return (
        f"stack floor (minimal Flask+requests pass-through): {signed(lat.get('floor_added_p50_ms'))} ms non-stream, "
        f"{signed(ttft.get('floor_added_p50_ms'))} ms TTFT, {fmt(floor_us, 1)} µs/chunk "
        f"(real-shaped {fmt(real_floor_us, 1)}); our code adds {signed(lat.get('over_floor_p50_ms'))} ms / "
        f"{signed(ttft.get('over_floor_p50_ms'))} ms / {code_us} µs (real-shaped {real_code_us}) on top (p50s)"
    )


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
