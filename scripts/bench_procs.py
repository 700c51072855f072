"""Child processes for scripts/bench.py: the fake Perplexity upstream and gunicorn, each stopped by its own PID.

The fake runs in its own process (its own GIL, CPU time and fd limit), driven over a pipe: the benchmark sets the
default reply, reads the open-stream gauge and resets it. gunicorn runs `app:app` (or the stack floor,
`bench_floor:app`) with one gevent worker against it.
Everything binds to 127.0.0.1; nothing here ever talks to another host.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests

__all__ = ["HOST", "ChildProcess", "FakeProcess", "Gunicorn", "free_port", "raise_nofile", "require_loopback"]

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
# Variables that would point a child at a real account, a proxy or another config.
_SCRUBBED_PREFIXES = ("PERPLEXITY_", "OPENAI_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
_SCRUBBED_NAMES = {"API_KEYS", "http_proxy", "https_proxy", "all_proxy", "no_proxy", "REDIS_URL", "PORT"}


def require_loopback(url: str) -> str:
    """Return `url` if its host is 127.0.0.1; refuse anything else (the benchmark is loopback only)."""
    host = urlsplit(url).hostname
    if host != HOST:
        raise SystemExit(f"refusing non-loopback target {url!r}: the benchmark only talks to {HOST}")
    return url


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward `wanted` (capped by the hard limit); return the soft limit now set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of one process, all its threads (not its children).

    On Linux this reads the kernel's CPU clock of that process (clock_gettime on the clock id that
    clock_getcpuclockid(pid) returns: ((~pid) << 3) | CPUCLOCK_SCHED), which counts nanoseconds; psutil's
    user/system times count scheduler ticks (10 ms here), too coarse for a stream that costs 30 ms in all.
    Elsewhere, or if the clock cannot be read, psutil's times.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            return time.clock_gettime(((~proc.pid) << 3) | 2)
    times = proc.cpu_times()
    return float(times.user + times.system)


# ---- the fake upstream, in its own process -------------------------------------------------------


def _serve_fake(conn: Any, token: str, nofile: int, backlog: int) -> None:
    """Child process: run FakePerplexity and answer commands from the pipe until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us by PID
    raise_nofile(nofile)
    threading.stack_size(512 * 1024)  # one thread per stream: keep thousands of them light
    from perplexity.testing import FakePerplexity
    from perplexity.testing import server as fake_server

    # socketserver's default listen backlog is 5: thousands of concurrent connects would hit SYN retries.
    fake_server._Server.request_queue_size = backlog
    fake = FakePerplexity(session_token=token).start()
    conn.send((fake.url, os.getpid()))
    try:
        while True:
            try:
                command, argument = conn.recv()
            except (EOFError, OSError):
                break
            if command == "stop":
                break
            if command == "reply":
                fake.default_reply = argument
                conn.send(None)
            elif command == "gauge":
                conn.send((fake.open_streams, fake.streams_started, fake.streams_closed_by_client, len(fake.errors)))
            elif command == "reset":
                reply = fake.default_reply
                fake.reset()  # ends streams still open, forgets requests, threads and their final frames
                fake.default_reply = reply
                conn.send(fake.open_streams)
            else:
                conn.send(ValueError(f"unknown command {command!r}"))
    finally:
        fake.stop()


class ChildProcess:
    """A benchmark helper server in a spawned child process, driven over a pipe; stopped by its own PID."""

    def __init__(self, target: Any, args: tuple[Any, ...], what: str) -> None:
        self.what = what
        context = mp.get_context("spawn")  # a clean interpreter: no inherited sockets, threads or locks
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=target, args=(child, *args), daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(30):
            self.stop()
            raise RuntimeError(f"the {what} did not start within 30 s")
        url, pid = self._conn.recv()
        self.url: str = require_loopback(url)
        self.pid: int = pid
        self.process = psutil.Process(pid)

    def call(self, command: str, argument: Any = None, timeout: float = 15.0) -> Any:
        """Send one command and return the child's answer (an exception it sends back is raised)."""
        self._conn.send((command, argument))
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the {self.what} did not answer {command!r} within {timeout} s")
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def open_streams(self) -> int:
        """How many answer streams the child is writing right now."""
        return int(self.call("gauge")[0])

    def gauge(self) -> tuple[int, int, int, int]:
        """(open streams, streams started, streams the client left, handler errors)."""
        return tuple(self.call("gauge"))  # type: ignore[return-value]

    def reset(self) -> int:
        """End open streams and forget recorded state; return the open-stream count afterwards."""
        return int(self.call("reset", timeout=30))

    def stop(self) -> None:
        """Ask the child to stop; terminate, then kill it by PID if it does not."""
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(("stop", None))
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()


class FakeProcess(ChildProcess):
    """`FakePerplexity` in a child process; `gauge()` reads its open-stream counter."""

    def __init__(self, token: str = "bench-session-token", *, nofile: int = 20000, backlog: int = 4096) -> None:
        self.token = token
        super().__init__(_serve_fake, (token, nofile, backlog), "fake upstream")

    def set_reply(self, reply: Any) -> None:
        """Make `reply` (a perplexity.testing.Reply) the answer to every ask."""
        self.call("reply", reply, timeout=60)


# ---- gunicorn --------------------------------------------------------------------------------------


class Gunicorn:
    """`python -m gunicorn app:app` with one gevent worker, on a free 127.0.0.1 port.

    `app_spec` names another WSGI app (`bench_floor:app`: the stack floor) run with the same flags, environment
    and the repository's gunicorn.conf.py (the cwd is the repository root); `pythonpath` is added to the worker's
    sys.path (gunicorn's --pythonpath) for apps that live outside the root, such as scripts/.
    """

    def __init__(
        self,
        *,
        upstream: str,
        token: str,
        api_key: str,
        log_path: Path,
        extra_env: dict[str, str],
        app_spec: str = "app:app",
        pythonpath: Path | None = None,
    ) -> None:
        self.app_spec = app_spec
        self.port = free_port()
        self.url = require_loopback(f"http://{HOST}:{self.port}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED_NAMES}
        env.update(
            {
                "PERPLEXITY_BASE_URL": require_loopback(upstream),
                "PERPLEXITY_SESSION_TOKEN": token,
                "OPENAI_API_KEY": api_key,
                "PORT": str(self.port),
                "WEB_CONCURRENCY": "1",
                "GRACEFUL_TIMEOUT": "2",
                "LOG_LEVEL": "warning",
                **extra_env,
            }
        )
        self.env = env
        connections = env.get("WORKER_CONNECTIONS", "10000")
        nofile = int(env.get("BENCH_NOFILE", "20000"))
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed in stop()
        self.command = [
            sys.executable,
            "-m",
            "gunicorn",
            app_spec,
            *(("--pythonpath", str(pythonpath)) if pythonpath is not None else ()),
            "--bind",
            f"{HOST}:{self.port}",
            "--workers",
            "1",
            # No --worker-class: gunicorn.conf.py's (the production gevent worker) for the server and the floor.
            "--worker-connections",
            connections,
        ]
        self.proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: raise_nofile(nofile),  # no threads in the parent yet
        )
        self.worker: psutil.Process | None = None

    def wait_ready(self, timeout: float = 30.0) -> psutil.Process:
        """Wait until GET /health answers 200 and the single worker is known; return the worker process."""
        deadline = time.monotonic() + timeout
        session = requests.Session()
        session.trust_env = False
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"gunicorn ({self.app_spec}) exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(requests.RequestException):
                    if session.get(self.url + "/health", timeout=1).status_code == 200:
                        workers = psutil.Process(self.proc.pid).children()
                        if len(workers) == 1:
                            self.worker = workers[0]
                            return self.worker
                time.sleep(0.05)
        finally:
            session.close()
        raise RuntimeError(f"gunicorn ({self.app_spec}) did not become ready within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of gunicorn's output (for error messages)."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the master by PID, SIGKILL it after 10 s, then make sure the worker is gone too."""
        worker = self.worker
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if worker is not None:
            with contextlib.suppress(psutil.Error):
                worker.wait(5)
            with contextlib.suppress(psutil.Error):
                if worker.is_running():
                    worker.kill()
        self._log.close()
