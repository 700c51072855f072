"""Measure the memory (RSS) each open stream costs in one gevent process, per HTTP engine and protocol.

For each engine this starts the scripted TLS/HTTP/2 upstream (tests/h2_upstream.py) in its own process, then a
fresh measuring process that, under gevent, opens `--streams` concurrent streams (each one a greenlet reading
with idle ticks, as the HTTP layer does), waits until every stream has its first event, and reports
(RSS with the streams open - RSS before) / streams. Engines:

- `h2`: CurlTransport over TLS with HTTP/2 (the production path: streams multiplexed on shared connections);
- `h1`: CurlTransport over TLS with HTTP/1.1 (one connection, and one TLS session, per stream);
- `requests`: RequestsTransport (urllib3) over plain HTTP/1.1, with its reader greenlet per ticking stream.

Usage: python scripts/curl_memory.py [--streams 2000] [--engines h2,h1,requests]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_ASK_HEADERS = {
    "accept": "text/event-stream",
    "cookie": "__Secure-next-auth.session-token=" + "t" * 900,
    "x-request-id": "00000000-0000-4000-8000-000000000000",
}
_ASK_BODY = {"query_str": "q" * 200, "params": {"language": "en-US", "sources": ["web"], "padding": "p" * 1000}}
_UPSTREAM_MODE = {"h2": "h2", "h1": "h1", "requests": "plain"}


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _measure(engine: str, url: str, ca: str, streams: int) -> dict[str, Any]:
    """Run in the measuring process: open `streams` streams at once and report RSS per open stream."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.event

    from perplexity.transport import CurlTransport, RequestsTransport

    if engine == "requests":
        transport: Any = RequestsTransport(pool_size=64)
    else:
        transport = CurlTransport(impersonate="chrome", pool_size=64, ca_bundle=ca)
    opened = 0
    all_open = gevent.event.Event()
    responses: list[Any] = []

    def hold(path: str, count: int) -> None:
        nonlocal opened
        # Shaped like an ask: a POST with a JSON body and the headers the client sends.
        response = transport.request(
            "POST", url + path, headers=_ASK_HEADERS, json=_ASK_BODY, stream=True, timeout=(30, 120)
        )
        responses.append(response)
        for piece in response.iter_bytes(next_tick=lambda: 5.0):
            if piece.startswith(b"data:"):
                opened += 1
                if opened == count:
                    all_open.set()

    def open_streams(count: int) -> list[Any]:
        nonlocal opened
        opened = 0
        all_open.clear()
        holders = [gevent.spawn(hold, "/hold?ping=30", count) for _ in range(count)]
        if not all_open.wait(120):
            raise SystemExit(f"only {opened} of {count} streams opened")
        return holders

    def close_all(holders: list[Any]) -> None:
        for response in responses:
            response.close()
        responses.clear()
        gevent.joinall(holders, timeout=30)

    # Warm up: imports, TLS context and session cache, the first connections, pooled handles, allocator arenas.
    close_all(open_streams(min(20, streams)))
    gevent.sleep(0.5)
    gc.collect()
    before = _rss()
    started = time.monotonic()
    holders = open_streams(streams)
    took = time.monotonic() - started
    gevent.sleep(0.5)
    gc.collect()
    after = _rss()
    close_all(holders)
    transport.close()
    return {
        "engine": engine,
        "streams": streams,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_open_mib": round(after / 2**20, 1),
        "kib_per_stream": round((after - before) / streams / 1024, 1),
        "open_seconds": round(took, 2),
    }


def _run_engine(engine: str, streams: int) -> dict[str, Any]:
    """Start the upstream and a fresh measuring process for `engine`; return what it measured."""
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.h2_upstream", "--mode", _UPSTREAM_MODE[engine], "--max-streams", "256"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None
        served = json.loads(upstream.stdout.readline())
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        measured = subprocess.run(
            [sys.executable, __file__, "--measure", engine, "--url", served["url"], "--ca", served["ca"]]
            + ["--streams", str(streams)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if measured.returncode != 0:
            raise SystemExit(f"{engine}: the measuring process failed:\n{measured.stderr}")
        return json.loads(measured.stdout.strip().splitlines()[-1])
    finally:
        assert upstream.stdin is not None
        upstream.stdin.close()
        upstream.wait(30)
        upstream.stdout.close()  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--engines", default="h2,h1,requests")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.url, args.ca, args.streams)))
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.streams + 1024)), hard))
    print(f"{'engine':<10} {'streams':>8} {'RSS before':>11} {'RSS open':>9} {'KiB/stream':>11} {'open s':>7}")
    for engine in args.engines.split(","):
        row = _run_engine(engine.strip(), args.streams)
        print(
            f"{row['engine']:<10} {row['streams']:>8} {row['rss_before_mib']:>9.1f}Mi {row['rss_open_mib']:>7.1f}Mi"
            f" {row['kib_per_stream']:>11.1f} {row['open_seconds']:>7.2f}"
        )


if __name__ == "__main__":
    main()
