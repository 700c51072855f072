"""A scripted upstream on 127.0.0.1 over TLS with HTTP/2 (h2) or HTTP/1.1 (h11), or plain HTTP/1.1, on asyncio.

The curl transport tests need what the threaded `http.server` cannot give: HTTP/2 (streams multiplexed on one
connection, RST_STREAM, flow control) and, for scripts/curl_memory.py, thousands of open streams at once. The h2
and h11 libraries do the framing; this module only scripts the answers. Routes (query parameters tune them):

- `/sse?n=5&gap=0.05`: `n` events `gap` s apart, then the end of the body.
- `/stall?n=1&hold=30`: `n` events, then silence until the client leaves or `hold` s pass.
- `/hold?ping=15`: one event, then a `: ping` comment every `ping` s until the client leaves (memory script).
- `/reset?n=1`: `n` events, then RST_STREAM over HTTP/2 (a TCP reset over HTTP/1.1).
- `/big?size=1048576`: `size` bytes of a position-dependent pattern, honouring HTTP/2 flow control.
- `/peer`: the client's port (the same one on two requests means they shared a connection).

`tag=x` on any route lets a test wait for the client to leave that stream (`gone(tag)`); `connections` counts
the TCP connections accepted. Run as `python -m tests.h2_upstream --mode h2|h1|plain` to serve from another
process: it prints one JSON line (port, CA file) and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import struct
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import trustme

__all__ = ["H2Upstream", "pattern"]

_READ = 65536


def pattern(start: int, end: int) -> bytes:
    """The `/big` body between two offsets."""
    return bytes(i % 251 for i in range(start, end))


class _Exchange:
    """One request's answer, whatever the protocol: the routes write through this."""

    def __init__(self, path: str, peer_port: int) -> None:
        url = urlsplit(path)
        self.route = url.path.strip("/")
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.peer_port = peer_port
        self.gone = asyncio.Event()  # the client reset the stream or closed the connection

    def number(self, name: str, default: float) -> float:
        return float(self.query.get(name, default))

    async def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def end(self) -> None:
        raise NotImplementedError

    async def reset(self) -> None:
        raise NotImplementedError

    async def hold(self, seconds: float) -> bool:
        """Wait up to `seconds`; True if the client left meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), seconds)
        return self.gone.is_set()


async def _answer(ex: _Exchange) -> None:
    """Run the route named by the request path."""
    sse = [("content-type", "text/event-stream")]
    if ex.route == "sse":
        await ex.head(200, sse)
        for i in range(int(ex.number("n", 5))):
            if i and await ex.hold(ex.number("gap", 0.05)):
                return
            await ex.send(b'event: message\r\ndata: {"i": %d}\r\n\r\n' % i)
        await ex.send(b"event: end_of_stream\r\ndata: {}\r\n\r\n")
        await ex.end()
    elif ex.route in ("stall", "hold"):
        await ex.head(200, sse)
        for i in range(int(ex.number("n", 1))):
            await ex.send(b"data: %d\n\n" % i)
        ping = ex.number("ping", 0)
        deadline = asyncio.get_running_loop().time() + ex.number("hold", 3600 if ping else 30)
        while not await ex.hold(min(ping or 3600, deadline - asyncio.get_running_loop().time())):
            if asyncio.get_running_loop().time() >= deadline:
                await ex.end()
                return
            await ex.send(b": ping\r\n\r\n")
    elif ex.route == "reset":
        await ex.head(200, sse)
        for i in range(int(ex.number("n", 1))):
            await ex.send(b"data: %d\n\n" % i)
        await asyncio.sleep(0.05)
        await ex.reset()
    elif ex.route == "big":
        size = int(ex.number("size", 1 << 20))
        await ex.head(200, [("content-type", "application/octet-stream"), ("content-length", str(size))])
        for start in range(0, size, 65536):
            await ex.send(pattern(start, min(size, start + 65536)))
        await ex.end()
    elif ex.route == "peer":
        body = str(ex.peer_port).encode()
        await ex.head(200, [("content-type", "text/plain"), ("content-length", str(len(body)))])
        await ex.send(body)
        await ex.end()
    else:
        await ex.head(404, [("content-length", "0")])
        await ex.end()


# --- HTTP/2 ------------------------------------------------------------------------------------------


class _H2Exchange(_Exchange):
    def __init__(self, conn: _H2Connection, stream_id: int, path: str) -> None:
        super().__init__(path, conn.peer_port)
        self.conn = conn
        self.stream_id = stream_id

    async def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.conn.h2.send_headers(self.stream_id, [(":status", str(status)), *headers])
        await self.conn.flush()

    async def send(self, data: bytes) -> None:
        conn, sid = self.conn, self.stream_id
        while data and not self.gone.is_set():
            window = min(conn.h2.local_flow_control_window(sid), conn.h2.max_outbound_frame_size)
            if window <= 0:
                await conn.window_opened(sid, self.gone)
                continue
            conn.h2.send_data(sid, data[:window])
            data = data[window:]
            await conn.flush()

    async def end(self) -> None:
        if not self.gone.is_set():
            self.conn.h2.end_stream(self.stream_id)
            await self.conn.flush()

    async def reset(self) -> None:
        self.conn.h2.reset_stream(self.stream_id, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
        await self.conn.flush()


class _H2Connection:
    """One HTTP/2 connection: reads frames, starts a task per request, honours the peer's flow control."""

    def __init__(self, upstream: H2Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.upstream = upstream
        self.reader, self.writer = reader, writer
        self.peer_port = writer.get_extra_info("peername")[1]
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.exchanges: dict[int, _H2Exchange] = {}
        self.windows = asyncio.Event()  # set on every WINDOW_UPDATE (senders re-check their window)

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def window_opened(self, stream_id: int, gone: asyncio.Event) -> None:
        self.windows.clear()
        waiters = [asyncio.ensure_future(self.windows.wait()), asyncio.ensure_future(gone.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.upstream.max_streams})
        await self.flush()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                data = await self.reader.read(_READ)
                if not data:
                    return
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    return
                for event in events:
                    self._on_event(event, tasks)
                await self.flush()
        finally:
            for exchange in self.exchanges.values():
                self.upstream.left(exchange)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_event(self, event: Any, tasks: set[asyncio.Task[None]]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers)
            exchange = _H2Exchange(self, event.stream_id, headers.get(":path", "/"))
            self.exchanges[event.stream_id] = exchange
            task = asyncio.ensure_future(self._serve(exchange))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            exchange = self.exchanges.pop(event.stream_id, None)
            if exchange is not None:
                self.upstream.left(exchange)
        elif isinstance(event, h2.events.WindowUpdated):
            self.windows.set()

    async def _serve(self, exchange: _H2Exchange) -> None:
        self.upstream.opened(exchange)
        try:
            await _answer(exchange)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass
        finally:
            self.exchanges.pop(exchange.stream_id, None)
            self.upstream.closed(exchange)


# --- HTTP/1.1 ----------------------------------------------------------------------------------------


class _H1Exchange(_Exchange):
    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, path: str, peer_port: int) -> None:
        super().__init__(path, peer_port)
        self.h11, self.writer = conn, writer
        self.broken = False

    async def _write(self, event: Any) -> None:
        if self.gone.is_set():
            return
        self.writer.write(self.h11.send(event))
        try:
            await self.writer.drain()
        except ConnectionError:
            self.gone.set()

    async def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        if not any(name == "content-length" for name, _ in headers):
            headers = [*headers, ("transfer-encoding", "chunked")]
        await self._write(h11.Response(status_code=status, headers=headers))

    async def send(self, data: bytes) -> None:
        await self._write(h11.Data(data=data))

    async def end(self) -> None:
        await self._write(h11.EndOfMessage())

    async def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.broken = True
        self.writer.transport.abort()


async def _serve_h1(upstream: H2Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive HTTP/1.1: one request at a time; the connection closing ends (and marks gone) the exchange."""
    conn = h11.Connection(h11.SERVER)
    peer_port = writer.get_extra_info("peername")[1]
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(_READ)
            if not data:
                return
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            exchange = _H1Exchange(conn, writer, event.target.decode(), peer_port)
            if not await _serve_h1_exchange(upstream, reader, conn, exchange):
                return
            continue
        if event is h11.PAUSED:
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
            continue
        if isinstance(event, h11.ConnectionClosed):
            return


async def _serve_h1_exchange(
    upstream: H2Upstream, reader: asyncio.StreamReader, conn: h11.Connection, exchange: _H1Exchange
) -> bool:
    """Answer one request while watching the socket for the client leaving; False when the connection is done."""

    async def watch() -> None:
        while True:
            data = await reader.read(_READ)
            if not data:
                exchange.gone.set()
                return
            conn.receive_data(data)  # a pipelined next request or the request body: h11 keeps it

    upstream.opened(exchange)
    watcher = asyncio.ensure_future(watch())
    try:
        await _answer(exchange)
    except ConnectionError:
        exchange.gone.set()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await watcher
        if exchange.gone.is_set():
            upstream.left(exchange)
        upstream.closed(exchange)
    return not (exchange.gone.is_set() or exchange.broken)


# --- the server --------------------------------------------------------------------------------------


class H2Upstream:
    """The scripted upstream; `mode` is "h2" (TLS, ALPN h2), "h1" (TLS, ALPN http/1.1) or "plain" (HTTP/1.1)."""

    def __init__(self, mode: str = "h2", *, max_streams: int = 100) -> None:
        if mode not in ("h2", "h1", "plain"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.max_streams = max_streams
        self.connections = 0
        self.open_streams = 0
        self.port = 0
        self._lock = threading.Lock()
        self._gone: dict[str, threading.Event] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="h2-upstream-")
        self.ca_path = str(Path(self._dir.name) / "ca.pem")
        self._context = self._tls_context() if mode != "plain" else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def _tls_context(self) -> ssl.SSLContext:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(self.ca_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        context.set_alpn_protocols(["h2"] if self.mode == "h2" else ["http/1.1"])
        return context

    # -- lifecycle --

    def start(self) -> H2Upstream:
        """Serve from a background thread running its own event loop."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="h2-upstream", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            loop.close()
        self._loop = self._thread = None
        self._dir.cleanup()

    def __enter__(self) -> H2Upstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, ssl=self._context, backlog=4096, limit=_READ
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        # End each connection under its handler (which then returns by itself): cancelling the handlers
        # instead would leave their transports to the garbage collector.
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        with self._lock:
            self.connections += 1
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                await _H2Connection(self, reader, writer).run()
            else:
                await _serve_h1(self, reader, writer)
        except (ConnectionError, ssl.SSLError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)
            self._handlers.discard(task)

    # -- bookkeeping (the handlers call these) --

    def opened(self, exchange: _Exchange) -> None:
        with self._lock:
            self.open_streams += 1

    def closed(self, exchange: _Exchange) -> None:
        with self._lock:
            self.open_streams -= 1

    def left(self, exchange: _Exchange) -> None:
        exchange.gone.set()
        self.gone(exchange.query.get("tag", "")).set()

    # -- for the tests --

    def gone(self, tag: str) -> threading.Event:
        """Set once the client left a stream whose request carried `tag=<tag>`."""
        with self._lock:
            return self._gone.setdefault(tag, threading.Event())

    def url(self, path: str) -> str:
        scheme = "http" if self.mode == "plain" else "https"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run a coroutine function on the server's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(10)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("h2", "h1", "plain"), default="h2")
    parser.add_argument("--max-streams", type=int, default=100)
    args = parser.parse_args()
    with H2Upstream(args.mode, max_streams=args.max_streams) as upstream:
        sys.stdout.write(json.dumps({"port": upstream.port, "ca": upstream.ca_path, "url": upstream.url("")}) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # serve until the parent closes our stdin (or exits)


if __name__ == "__main__":
    _main()
