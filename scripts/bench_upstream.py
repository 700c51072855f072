"""A light upstream that holds thousands of answer streams open, for the open-streams phase of scripts/bench.py.

The fake Perplexity (`perplexity.testing`) runs one thread per stream and polls each idle socket every 20 ms; on a
2-core machine it cannot hold thousands of streams without starving the server under test. This one is asyncio in
its own process: for `POST /rest/sse/perplexity_ask` with the session cookie it answers 200 `text/event-stream`,
sends `prefix` (the first frames of a real fake answer, captured by the bench: the stream is mid-answer), then only
`: ping` heartbeats every `heartbeat` seconds, until the client leaves. It counts open streams like the fake does.
Loopback only.

`HoldProcess(..., tls_h2=True)` serves the same over TLS with ALPN `h2` and `http/1.1`, as perplexity.ai's Cloudflare
front does: an h2 connection multiplexes up to `max_concurrent_streams` streams (100, like Cloudflare), each answered
with HEADERS, the prefix and `: ping` DATA frames within the client's flow-control window; RST_STREAM or a closed
connection counts as the client leaving. The certificate comes from a throwaway CA made in the parent (trustme) and
`holder.ca_path` is that CA's PEM file: hand it to the server under test, e.g. `PERPLEXITY_CA_BUNDLE` in Gunicorn's
`extra_env`. The url is then `https://127.0.0.1:PORT`. A connection that negotiates http/1.1 gets the plain mode's
answer over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

from bench_procs import HOST, ChildProcess, raise_nofile

__all__ = ["HoldProcess"]

_ASK = b"/rest/sse/perplexity_ask"
_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nServer: cloudflare\r\n\r\n"
)
_PING = b": ping\r\n\r\n"
# Like a real server: the default stream window, a connection window raised well above it.
_H2_STREAM_WINDOW = 65535
_H2_CONNECTION_WINDOW = 4 * 1024 * 1024


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Holder:
    def __init__(self, token: str, heartbeat: float, prefix: bytes, max_streams: int = 100) -> None:
        self.cookie = f"__Secure-next-auth.session-token={token}".encode()
        self.heartbeat = heartbeat
        self.prefix = prefix
        self.max_streams = max_streams
        self.open = self.started = self.left = self.errors = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A TLS connection: HTTP/2 if ALPN chose h2, else the HTTP/1.1 answer."""
        tls = writer.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() == "h2":
            await _H2Connection(self, reader, writer).serve()
        else:
            await self.handle(reader, writer)

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


class _H2Connection:
    """One HTTP/2 connection of the holder: asyncio reads frames, h2 does the framing (no lock: one event loop)."""

    def __init__(self, holder: _Holder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config  # bench-only dependency: imported only when a client negotiates h2
        import h2.connection
        import h2.settings

        self.holder, self.reader, self.writer = holder, reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: holder.max_streams,
                codes.INITIAL_WINDOW_SIZE: _H2_STREAM_WINDOW,
                codes.MAX_HEADER_LIST_SIZE: self.h2.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        self.requests: dict[int, list[tuple[bytes, bytes]]] = {}
        # Open answer streams -> bytes waiting for the client's flow-control window.
        self.streams: dict[int, bytearray] = {}

    async def serve(self) -> None:
        import h2.events
        import h2.exceptions

        self.holder.writers.add(self.writer)
        ticker = asyncio.ensure_future(self._heartbeats())
        try:
            self.h2.initiate_connection()
            self.h2.increment_flow_control_window(_H2_CONNECTION_WINDOW - _H2_STREAM_WINDOW)
            await self._flush()
            while data := await self.reader.read(65536):
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await self._flush()  # the GOAWAY h2 queued
                    return
                for event in events:
                    self._on_event(event)
                await self._flush()
                if any(isinstance(event, h2.events.ConnectionTerminated) for event in events):
                    return
        except (ConnectionError, TimeoutError, OSError):
            pass
        except Exception:
            self.holder.errors += 1
        finally:
            ticker.cancel()
            for _ in list(self.streams):  # every stream still open: its client left with the connection
                self._closed_by_client()
            self.streams.clear()
            self.holder.writers.discard(self.writer)
            self.writer.close()

    def _on_event(self, event: Any) -> None:
        import h2.exceptions

        try:
            self._apply(event)
        except h2.exceptions.StreamClosedError as exc:
            # A later frame of the same read (the client's RST_STREAM) already closed the stream in h2.
            self._drop(exc.stream_id)

    def _apply(self, event: Any) -> None:
        import h2.events

        if isinstance(event, h2.events.RequestReceived):
            self.requests[event.stream_id] = list(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._answer(event.stream_id, self.requests.pop(event.stream_id, []))
        elif isinstance(event, h2.events.StreamReset):
            self._drop(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for stream_id in list(self.streams):
                self._on_pump(stream_id)

    def _answer(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The same answers as the HTTP/1.1 mode: 404 off the ask path, 403 without the cookie, else the stream."""
        fields = {name: value for name, value in headers if name.startswith(b":")}
        cookies = b"; ".join(value for name, value in headers if name == b"cookie")
        if fields.get(b":method") != b"POST" or not fields.get(b":path", b"").startswith(_ASK):
            self.h2.send_headers(stream_id, [(":status", "404"), ("content-length", "0")], end_stream=True)
            return
        if self.holder.cookie not in cookies:
            self.h2.send_headers(stream_id, [(":status", "403"), ("content-length", "2")])
            self.h2.send_data(stream_id, b"{}", end_stream=True)
            return
        sse = [(":status", "200"), ("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
        self.h2.send_headers(stream_id, [*sse, ("server", "cloudflare")])
        self.streams[stream_id] = bytearray(self.holder.prefix)
        self.holder.open += 1
        self.holder.started += 1
        self._pump(stream_id)

    def _pump(self, stream_id: int) -> None:
        """Send what the stream's and the connection's windows allow; the rest waits for WINDOW_UPDATE."""
        pending = self.streams[stream_id]
        while pending:
            size = min(len(pending), self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if size <= 0:
                return
            self.h2.send_data(stream_id, bytes(pending[:size]))
            del pending[:size]

    def _on_pump(self, stream_id: int) -> None:
        import h2.exceptions

        try:
            self._pump(stream_id)
        except h2.exceptions.StreamClosedError:
            self._drop(stream_id)

    async def _heartbeats(self) -> None:
        """One ticker per connection: a `: ping` on every open stream (none piles up behind a shut window)."""
        while True:
            await asyncio.sleep(self.holder.heartbeat)
            for stream_id, pending in list(self.streams.items()):
                if not pending:
                    pending.extend(_PING)
                    self._on_pump(stream_id)
            with contextlib.suppress(ConnectionError, OSError):
                await self._flush()

    async def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    def _drop(self, stream_id: int) -> None:
        """The client reset `stream_id`: forget it, and count it as left if it was an open answer."""
        self.requests.pop(stream_id, None)
        if self.streams.pop(stream_id, None) is not None:
            self._closed_by_client()

    def _closed_by_client(self) -> None:
        self.holder.open -= 1
        self.holder.left += 1


def _tls_context(tls: tuple[str, str] | None) -> ssl.SSLContext | None:
    """The server context for (certificate chain file, key file), offering h2 and http/1.1; None for plain HTTP."""
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(*tls)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def _run(
    conn: Any, token: str, heartbeat: float, prefix: bytes, tls: tuple[str, str] | None = None, max_streams: int = 100
) -> None:
    holder = _Holder(token, heartbeat, prefix, max_streams)
    context = _tls_context(tls)
    callback = holder.handle if context is None else holder.handle_tls
    server = await asyncio.start_server(callback, HOST, 0, backlog=4096, limit=1 << 20, ssl=context)
    port = server.sockets[0].getsockname()[1]
    conn.send((f"{'http' if context is None else 'https'}://{HOST}:{port}", os.getpid()))
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


def _serve_holder(
    conn: Any,
    token: str,
    nofile: int,
    heartbeat: float,
    prefix: bytes,
    tls: tuple[str, str] | None = None,
    max_streams: int = 100,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us by PID
    raise_nofile(nofile)
    asyncio.run(_run(conn, token, heartbeat, prefix, tls, max_streams))


def _issue_certificate(directory: Path) -> tuple[str, str, str]:
    """Make a throwaway CA and a certificate for 127.0.0.1/localhost; return (CA file, chain file, key file)."""
    import trustme  # bench-only dependency, needed only for tls_h2

    ca = trustme.CA(organization_name="bench holding upstream test CA")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = [directory / "ca.pem", directory / "chain.pem", directory / "key.pem"]
    ca.cert_pem.write_to_path(str(paths[0]))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(paths[1]), append=True)
    cert.private_key_pem.write_to_path(str(paths[2]))
    return str(paths[0]), str(paths[1]), str(paths[2])


class HoldProcess(ChildProcess):
    """The light holding upstream in its own process (same gauge/reset/stop interface as FakeProcess).

    `tls_h2=True` serves HTTPS with HTTP/2 (see the module docstring); `ca_path` is then the CA file to trust.
    """

    def __init__(
        self,
        token: str,
        *,
        heartbeat: float,
        prefix: bytes,
        nofile: int = 20000,
        tls_h2: bool = False,
        max_concurrent_streams: int = 100,
    ) -> None:
        self.token = token
        self.ca_path: str | None = None
        self._tls_dir: Path | None = None
        tls = None
        if tls_h2:
            self._tls_dir = Path(tempfile.mkdtemp(prefix="bench-holder-ca-"))
            self.ca_path, chain, key = _issue_certificate(self._tls_dir)
            tls = (chain, key)
        args = (token, nofile, heartbeat, prefix, tls, max_concurrent_streams)
        try:
            super().__init__(_serve_holder, args, "holding upstream")
        except BaseException:
            self._remove_tls_files()  # a child that died starting raises without stop()
            raise

    def stop(self) -> None:
        """Stop the child, then remove the certificate files."""
        super().stop()
        self._remove_tls_files()

    def _remove_tls_files(self) -> None:
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None
