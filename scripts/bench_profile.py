#!/usr/bin/env python
"""Profile the gunicorn worker with py-spy under one of the benchmark's workloads, and print its hot spots.

    pip install py-spy
    python scripts/bench_profile.py nonstream        # non-streamed chat completions in a loop
    python scripts/bench_profile.py stream           # streamed completions of 4 KB upstream frames
    python scripts/bench_profile.py hold --streams 2000   # idle open streams (heartbeats only)
    python scripts/bench_profile.py nonstream --floor     # the stack floor (bench_floor.py) instead of the server

Same setup as scripts/bench.py (fake upstream in its own process, gunicorn with one gevent worker, 127.0.0.1
only). py-spy samples the worker for `--seconds`; the raw stacks are kept in `--out` and the functions with the
most samples are printed, inclusive (the function or anything it calls) and self (the function's own code).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import bench  # noqa: E402
from bench_herd import Herd  # noqa: E402
from bench_procs import FakeProcess, raise_nofile  # noqa: E402
from bench_upstream import HoldProcess  # noqa: E402

from perplexity.testing import Reply  # noqa: E402

_LINE = re.compile(r":\d+\)$")


def summarize(path: Path, top: int) -> str:
    """Top functions of a py-spy `--format raw` file (one `frame;frame;... count` line per stack)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        for name in set(frames):
            inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return "no samples"
    out = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out.append(f"-- {title}")
        out.extend(f"{v / total * 100:5.1f}%  {k}" for k, v in counter.most_common(top))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=("nonstream", "stream", "realistic", "hold"))
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time (max 120)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--streams", type=int, default=2000, help="open streams for the hold workload")
    parser.add_argument("--frames", type=int, default=2000, help="upstream frames per stream (stream workload)")
    parser.add_argument("--top", type=int, default=30, help="functions listed per table")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-py-spy.txt"), help="raw py-spy stacks")
    parser.add_argument(
        "--floor", action="store_true", help="profile the stack floor (bench_floor.py) instead of the server"
    )
    args = parser.parse_args(argv)
    if args.floor and args.workload == "hold":
        raise SystemExit("--floor profiles nonstream, stream or realistic only")
    spy_bin = shutil.which("py-spy")
    if spy_bin is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    seconds = min(max(args.seconds, 1.0), 120.0)
    raise_nofile(2 * args.streams + 1000)
    plan = bench.Plan(streams=args.streams, cpu_frames=args.frames, heartbeat=1.0)
    run = bench.Bench(plan, [], profile=False, hold_upstream="light")
    spy: subprocess.Popen[bytes] | None = None
    herd: Herd | None = None
    try:
        run.fake = FakeProcess(bench.TOKEN)
        run.direct = bench.Direct(run.fake.url, bench.TOKEN)
        upstream = run.fake.url
        if args.workload == "hold":
            run.holder = HoldProcess(bench.TOKEN, heartbeat=plan.heartbeat, prefix=run.answer_prefix())
            upstream = run.holder.url
        if args.floor:
            run.start_floor(upstream)
            if run.floor_api is None or run.floor_worker is None:
                raise SystemExit(f"the stack floor did not start: {run.floor_error}")
            api, worker = run.floor_api, run.floor_worker
        else:
            run.start_server("profile", upstream)
            assert run.server is not None and run.worker is not None
            api, worker = run.api, run.worker
        if args.workload == "stream":
            size = run.calibrate_chunk_size()
            run.fake.set_reply(Reply(answer=bench.prose(size * args.frames), chunk_size=size))
        elif args.workload == "realistic":
            frames = bench.realistic_frames(args.frames, bench.REALISTIC_DELTA, plan.frame_bytes)
            run.fake.set_reply(Reply(frames=frames))
        elif args.workload == "nonstream":
            run.fake.set_reply(Reply(answer=bench.SHORT_ANSWER, chunk_size=1000))
            for _ in range(50):
                api.whole()
        else:
            assert run.server is not None
            herd = Herd(run.server.port, run.api.raw_stream_request(run.server.port))
            herd.open(args.streams, ramp=250, deadline=time.monotonic() + 90)
            print(f"holding {herd.held} streams", file=sys.stderr)
        command = [spy_bin, "record", "--pid", str(worker.pid), "--rate", str(args.rate)]
        command += ["--duration", str(int(seconds)), "--format", "raw", "--nonblocking", "-o", str(args.out)]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + seconds + 15
        while spy.poll() is None and time.monotonic() < end:
            if args.workload == "nonstream":
                api.whole()
            elif args.workload in ("stream", "realistic"):
                api.stream_chunks()
            else:
                assert herd is not None
                herd.pump(0.5)
        if spy.poll() is None:
            raise SystemExit("py-spy did not finish in time")
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {(spy.stderr.read() if spy.stderr else b'').decode()[-500:]}")
        what = "floor worker" if args.floor else "worker"
        print(f"{args.workload}: {what} {worker.pid}, {seconds:.0f} s at {args.rate} Hz; stacks in {args.out}")
        print(summarize(args.out, args.top))
        return 0
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(5)
        if herd is not None:
            herd.close()
        run.close()


if __name__ == "__main__":
    sys.exit(main())
