"""A light upstream that holds thousands of answer streams open, for the open-streams phase of scripts/bench.py.

The fake Perplexity (`perplexity.testing`) runs one thread per stream and polls each idle socket every 20 ms; on a
2-core machine it cannot hold thousands of streams without starving the server under test. This one is asyncio in
its own process: for `POST /rest/sse/perplexity_ask` with the session cookie it answers 200 `text/event-stream`,
sends `prefix` (the first frames of a real fake answer, captured by the bench: the stream is mid-answer), then only
`: ping` heartbeats every `heartbeat` seconds, until the client leaves. It counts open streams like the fake does.
Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from typing import Any

from bench_procs import HOST, ChildProcess, raise_nofile

__all__ = ["HoldProcess"]

_ASK = b"/rest/sse/perplexity_ask"
_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nServer: cloudflare\r\n\r\n"
)
_PING = b": ping\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Holder:
    def __init__(self, token: str, heartbeat: float, prefix: bytes) -> None:
        self.cookie = f"__Secure-next-auth.session-token={token}".encode()
        self.heartbeat = heartbeat
        self.prefix = prefix
        self.open = self.started = self.left = self.errors = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.writers.add(writer)
        counted = False
        gone: asyncio.Future[bytes] | None = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            request_line, _, rest = head.partition(b"\r\n")
            headers = {}
            for line in rest.split(b"\r\n"):
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length") or 0)
            if length:
                await reader.readexactly(length)
            parts = request_line.split(b" ")
            if len(parts) < 2 or parts[0] != b"POST" or not parts[1].startswith(_ASK):
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if self.cookie not in headers.get(b"cookie", b""):
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                return
            writer.write(_HEAD + (_chunk(self.prefix) if self.prefix else b""))
            await writer.drain()
            self.open += 1
            self.started += 1
            counted = True
            gone = asyncio.ensure_future(reader.read(1))  # completes only when the client leaves
            while True:
                done, _ = await asyncio.wait({gone}, timeout=self.heartbeat)
                if done:
                    self.left += 1
                    return
                writer.write(_chunk(_PING))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            if counted:
                self.left += 1
        except Exception:
            self.errors += 1
        finally:
            if gone is not None:
                gone.cancel()
            if counted:
                self.open -= 1
            self.writers.discard(writer)
            writer.close()

    def abort_all(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()


async def _run(conn: Any, token: str, heartbeat: float, prefix: bytes) -> None:
    holder = _Holder(token, heartbeat, prefix)
    server = await asyncio.start_server(holder.handle, HOST, 0, backlog=4096, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    conn.send((f"http://{HOST}:{port}", os.getpid()))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def reset() -> None:
        holder.abort_all()
        for _ in range(500):
            if holder.open == 0:
                break
            await asyncio.sleep(0.01)
        conn.send(holder.open)

    def on_command() -> None:
        try:
            command, _argument = conn.recv()
        except (EOFError, OSError):
            stop.set()
            return
        if command == "stop":
            stop.set()
        elif command == "gauge":
            conn.send((holder.open, holder.started, holder.left, holder.errors))
        elif command == "reset":
            loop.create_task(reset())
        else:
            conn.send(ValueError(f"unknown command {command!r}"))

    loop.add_reader(conn.fileno(), on_command)
    async with server:
        await stop.wait()
        holder.abort_all()
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


def _serve_holder(conn: Any, token: str, nofile: int, heartbeat: float, prefix: bytes) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us by PID
    raise_nofile(nofile)
    asyncio.run(_run(conn, token, heartbeat, prefix))


class HoldProcess(ChildProcess):
    """The light holding upstream in its own process (same gauge/reset/stop interface as FakeProcess)."""

    def __init__(self, token: str, *, heartbeat: float, prefix: bytes, nofile: int = 20000) -> None:
        self.token = token
        super().__init__(_serve_holder, (token, nofile, heartbeat, prefix), "holding upstream")
