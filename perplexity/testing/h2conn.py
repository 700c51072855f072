"""HTTP/2 for the fake upstream: an h2 connection loop per TLS connection, a thread per request stream."""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import select
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .faults import cf_ray
from .handler import RouteHandler
from .wire import POLL_SECONDS, BodyStream, ClientGone, ServerStopping

if TYPE_CHECKING:
    from .server import FakePerplexity

__all__ = ["CONNECTION_WINDOW", "STREAM_WINDOW", "H2Exchange", "H2Server", "serve_h2"]

# A real server's per-stream default, and a connection window raised well above it so that one stream the
# client has stopped reading cannot starve the other streams of the connection.
STREAM_WINDOW = 65535
CONNECTION_WINDOW = 4 * 1024 * 1024
_READ_SIZE = 65536
_WRITE_SIZE = 256 * 1024
# How long the connection loop sleeps in select when nothing happens (it also watches for stop()).
_IDLE_SECONDS = 0.05
# Bounded wait for stream threads when the connection closes.
_JOIN_SECONDS = 2.0
# HTTP/2 forbids connection-specific header fields (RFC 9113, 8.2.2).
_CONNECTION_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})


def serve_h2(sock: ssl.SSLSocket, fake: FakePerplexity, max_concurrent_streams: int) -> None:
    """Serve one TLS connection that negotiated h2 until the client or the fake closes it."""
    H2Server(sock, fake, max_concurrent_streams).run()


class H2Server:
    """One HTTP/2 connection. H2Connection is not thread-safe: every use of it holds `lock`. Only the
    connection thread touches the socket; stream threads queue frames in the H2Connection and `wake()` it."""

    def __init__(self, sock: ssl.SSLSocket, fake: FakePerplexity, max_concurrent_streams: int) -> None:
        self.sock = sock
        self.fake = fake
        self.lock = threading.Lock()
        # Notified when a window opens, a stream is reset or the connection closes: flow-blocked writers wait on it.
        self.changed = threading.Condition(self.lock)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        self.streams: dict[int, H2Exchange] = {}
        self.closed = False
        self._threads: list[threading.Thread] = []
        self._out = bytearray()  # bytes h2 produced that the socket has not taken yet
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ---- the connection thread ------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            with self.lock:
                self.h2.initiate_connection()
                self.h2.increment_flow_control_window(CONNECTION_WINDOW - STREAM_WINDOW)
            # poll, not select: a benchmark process may hold more than 1024 descriptors.
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            while self._turn(poller):
                pass
        except OSError:  # the socket failed under us: the client or stop() closed it
            pass
        finally:
            self._close()

    def _turn(self, poller: select.poll) -> bool:
        """Flush what is queued, wait for input or a wake-up, read; return False when the connection is over."""
        if not self._flush() or self.fake.stopping:
            return False
        if self.sock.pending():  # decrypted bytes already buffered: poll would not see them
            return self._receive()
        poller.modify(self.sock, select.POLLIN | (select.POLLOUT if self._out else 0))
        ready = dict(poller.poll(int(_IDLE_SECONDS * 1000)))
        if self._wake_r.fileno() in ready:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        if ready.get(self.sock.fileno(), 0) & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
            return self._receive()
        return True

    def _flush(self) -> bool:
        """Send as much of the queued output as the socket takes now; False if the socket failed."""
        with self.lock:
            self._out += self.h2.data_to_send()
        while self._out:
            try:
                # A bounded slice: a retried TLS write must start with the same bytes, which this keeps true.
                sent = self.sock.send(self._out[:_WRITE_SIZE])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return True
            except (OSError, ValueError):
                return False
            del self._out[:sent]
        return True

    def _receive(self) -> bool:
        try:
            data = self.sock.recv(_READ_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True
        except (OSError, ValueError):
            return False
        if not data:
            return False
        with self.lock:
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:  # h2 has queued a GOAWAY: send it, then hang up
                self._out += self.h2.data_to_send()
                self._flush()
                return False
            ready = [self._on_event(event) for event in events]
        for exchange in ready:
            if isinstance(exchange, H2Exchange):
                self._start(exchange)
        return not any(isinstance(event, h2.events.ConnectionTerminated) for event in events)

    def _on_event(self, event: h2.events.Event) -> H2Exchange | None:
        """Apply one event (the lock is held); return an exchange whose request is complete."""
        if isinstance(event, h2.events.RequestReceived):
            self.streams[event.stream_id] = H2Exchange(self, event.stream_id, event.headers or [])
            self.fake.h2_stream_opened()
        elif isinstance(event, h2.events.DataReceived):
            exchange = self.streams.get(event.stream_id)
            if exchange is not None:
                exchange.body += event.data or b""
            # Give the window back at once, so uploads keep flowing.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            return self.streams.get(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            exchange = self.streams.get(event.stream_id)
            if exchange is not None:
                exchange.gone.set()
            self.changed.notify_all()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.changed.notify_all()
        return None

    def _start(self, exchange: H2Exchange) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=exchange.run, name=f"fake-h2-stream-{exchange.stream_id}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _close(self) -> None:
        """Tell every stream its client is gone, wait (bounded) for their threads, release the wake-up pipe."""
        with self.lock:
            self.closed = True
            for exchange in self.streams.values():
                exchange.gone.set()
            self.changed.notify_all()
        deadline = time.monotonic() + _JOIN_SECONDS
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._wake_r.close()
        self._wake_w.close()

    # ---- used by stream threads -----------------------------------------------------------------

    def wake(self) -> None:
        """Make the connection thread flush what a stream thread queued."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or already closed
            self._wake_w.send(b"\0")

    def forget(self, stream_id: int) -> None:
        with self.lock:
            self.streams.pop(stream_id, None)


class H2Exchange(RouteHandler):
    """One request stream, seen by the routes like a FakeHandler; the body goes out as DATA frames."""

    http_version = "2"

    def __init__(self, server: H2Server, stream_id: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.server = server
        self.stream_id = stream_id
        pseudo, self.headers = _split_headers(raw_headers)
        self.command = pseudo.get(":method", "GET")
        self.path = pseudo.get(":path", "/")
        self.requestline = f"{self.command} {self.path} HTTP/2"
        self.body = bytearray()  # grows by DATA frames: a bytes += would copy an upload quadratically
        # Ignored over HTTP/2: a response left unfinished resets its own stream, never the connection.
        self.close_connection = False
        # Set when the client resets the stream or the connection goes away.
        self.gone = threading.Event()
        self.headers_sent = self.finished = self.blocked = False

    @property
    def fake(self) -> FakePerplexity:
        return self.server.fake

    def run(self) -> None:
        try:
            self.serve_request()
        finally:
            self._set_blocked(False)
            self._finish()

    def _finish(self) -> None:
        """A stream the route neither ended nor reset gets RST_STREAM CANCEL: no proper response, like EOF."""
        self._reset(h2.errors.ErrorCodes.CANCEL)
        self.server.forget(self.stream_id)

    def _read_body(self) -> bytes:
        return bytes(self.body)

    # ---- response side --------------------------------------------------------------------------

    def send_bytes(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        empty = status == 204 or not body
        length = [] if status == 204 else [("content-length", str(len(body)))]
        self._send_headers(status, [*headers, *length], end=empty)
        if not empty:
            writer = self.chunked()
            writer.send(body)
            writer.end()

    def start_stream(self, extra_headers: list[tuple[str, str]] | None = None) -> H2Body:
        sse = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
        self._send_headers(200, [*sse, *(extra_headers or [])], end=False)
        return self.chunked()

    def chunked(self) -> H2Body:
        return H2Body(self)

    def reset_connection(self) -> None:
        """RST_STREAM INTERNAL_ERROR on this stream only: how a broken-off answer looks on HTTP/2."""
        self._reset(h2.errors.ErrorCodes.INTERNAL_ERROR)

    def _send_headers(self, status: int, headers: list[tuple[str, str]], *, end: bool) -> None:
        fields = [(":status", str(status))]
        fields += [(name.lower(), value) for name, value in headers if name.lower() not in _CONNECTION_HEADERS]
        fields += [
            ("cf-ray", cf_ray(self.requestline)),
            ("server", "cloudflare"),
            ("date", email.utils.formatdate(usegmt=True)),
        ]
        self._call(lambda conn: conn.send_headers(self.stream_id, fields, end_stream=end))
        self.headers_sent = True
        self.finished = end

    def send_data(self, data: bytes, cancelled: Any) -> None:
        """Queue `data` as DATA frames, blocking while the client's window is shut (flow control)."""
        view = memoryview(data)
        while view:
            size = self._call(lambda conn, rest=view: self._send_some(conn, rest), wake=False)
            if size:
                view = view[size:]
                self.server.wake()
            if cancelled():
                raise ServerStopping

    def _send_some(self, conn: h2.connection.H2Connection, view: memoryview) -> int:
        """Send what the windows allow now (the lock is held); if nothing, wait a poll interval for a change."""
        size = min(len(view), conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size)
        self._set_blocked(size <= 0)
        if size > 0:
            conn.send_data(self.stream_id, view[:size].tobytes())
            return size
        # Woken by WINDOW_UPDATE, SETTINGS, a reset or the connection closing; the timeout catches stop().
        self.server.changed.wait(POLL_SECONDS)
        return 0

    def _set_blocked(self, blocked: bool) -> None:
        if blocked != self.blocked:
            self.blocked = blocked
            self.fake.flow_blocked(blocked)

    def end_data(self) -> None:
        self._call(lambda conn: conn.end_stream(self.stream_id))
        self.finished = True

    def _call(self, action: Any, wake: bool = True) -> Any:
        """Run `action(h2 connection)` under the lock; ClientGone if the stream or connection is gone."""
        with self.server.lock:
            if self.gone.is_set() or self.server.closed:
                raise ClientGone
            try:
                result = action(self.server.h2)
            except h2.exceptions.ProtocolError as exc:  # the stream closed under us
                raise ClientGone from exc
        if wake:
            self.server.wake()
        return result

    def _reset(self, code: h2.errors.ErrorCodes) -> None:
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(ClientGone):
            self._call(lambda conn: conn.reset_stream(self.stream_id, error_code=code))


class H2Body(BodyStream):
    """The body writer of one HTTP/2 stream (DATA frames, no chunked encoding); same interface as ChunkedStream."""

    def __init__(self, exchange: H2Exchange) -> None:
        super().__init__(exchange.fake.cancel_check())
        self.exchange = exchange

    def send(self, data: bytes) -> None:
        """Send `data`; raise ClientGone if the client reset the stream or left."""
        self._check()
        self.exchange.send_data(data, self.cancelled)

    def end(self) -> None:
        """End the stream (END_STREAM)."""
        self.exchange.end_data()

    def _gone(self) -> bool:
        return self.exchange.gone.is_set()

    def _idle(self, seconds: float) -> None:
        if self.exchange.gone.wait(seconds):
            raise ClientGone


def _split_headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], http.client.HTTPMessage]:
    """Split h2 request headers into pseudo-headers and an http.client message (as BaseHTTPRequestHandler has)."""
    pseudo: dict[str, str] = {}
    message = http.client.HTTPMessage()
    for name_bytes, value_bytes in raw:
        # Latin-1, as http.client decodes HTTP/1.1 header lines.
        name, value = name_bytes.decode("latin-1"), value_bytes.decode("latin-1")
        if name.startswith(":"):
            pseudo[name] = value
        else:
            message[name] = value  # appends: repeated fields (cookie crumbs) stay separate, as get_all expects
    if ":authority" in pseudo and "host" not in message:
        message["host"] = pseudo[":authority"]
    return pseudo, message
