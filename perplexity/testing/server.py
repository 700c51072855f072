"""FakePerplexity: a scripted, loopback-only HTTP server that speaks Perplexity's web API."""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import ask, endpoints  # noqa: F401  (importing them registers their routes)
from .catalog import FAKE_USER
from .handler import ASK_PATH, FakeHandler
from .script import Fault, RecordedRequest, Reply, ThreadRecord
from .uploads import Presign

__all__ = ["FakePerplexity"]

_LOOPBACK = ("127.0.0.1", "localhost")
# A client that connects and never finishes the TLS handshake does not hold its thread longer than this.
_HANDSHAKE_SECONDS = 5.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakePerplexity, tls: ssl.SSLContext | None = None) -> None:
        self.fake = fake
        self.tls = tls
        super().__init__(address, FakeHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; with TLS, wrap the socket now and leave the handshake to the connection's own thread."""
        sock, address = super().get_request()
        self.fake.connection_opened()
        if self.tls is None:
            return sock, address
        try:
            return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address
        except OSError:
            sock.close()
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection: HTTP/1.1 by FakeHandler, or HTTP/2 when TLS negotiated h2 through ALPN."""
        if not isinstance(request, ssl.SSLSocket):
            super().finish_request(request, client_address)
            return
        self.fake.track_connection(request, True)
        try:
            if not _handshake(request):
                return
            if request.selected_alpn_protocol() == "h2":
                from .h2conn import serve_h2  # h2 is a test-only dependency

                serve_h2(request, self.fake, self.fake.max_concurrent_streams)
            else:
                super().finish_request(request, client_address)
        finally:
            self.fake.track_connection(request, False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that vanish mid-request are an expected part of the tests."""


def _handshake(sock: ssl.SSLSocket) -> bool:
    """Run the server side of the TLS handshake; False if the client gave up or refused the certificate."""
    try:
        sock.settimeout(_HANDSHAKE_SECONDS)
        sock.do_handshake()
        sock.settimeout(None)
        return True
    except (ssl.SSLError, OSError, ValueError):
        return False


class FakePerplexity:
    """A fake `https://www.perplexity.ai` on 127.0.0.1 for tests; see the package docstring.

    By default plain HTTP/1.1. `tls=True` serves TLS with a certificate for 127.0.0.1 and localhost from a CA
    made for this instance (`ca_path`: its PEM file, while serving); `http2=True` also offers h2 through ALPN,
    as Cloudflare does, with `max_concurrent_streams` advertised in SETTINGS. Both need the test requirements
    (trustme, h2).
    """

    def __init__(
        self,
        session_token: str = "test-session-token",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: bool = False,
        http2: bool = False,
        max_concurrent_streams: int = 100,
    ):
        if host not in _LOOPBACK:
            raise ValueError("the fake upstream binds to loopback only")
        if http2 and not tls:
            raise ValueError("http2 needs tls: like perplexity.ai, the fake only speaks h2 negotiated by ALPN")
        self.host = host
        self.port = port
        self.tls = tls
        self.http2 = http2
        self.max_concurrent_streams = max_concurrent_streams
        # The PEM file of the CA to trust, while serving over TLS (None otherwise).
        self.ca_path: str | None = None
        self._ca: Any = None  # trustme.CA, made on the first start
        self._tls_context: ssl.SSLContext | None = None
        self._lock = threading.RLock()
        self._tokens = [session_token]
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        # Bumped by reset(): streams started before it end promptly instead of leaking into the next test.
        self._epoch = 0
        self.open_streams = 0
        # h2 streams whose writer waits for the client to open its flow-control window (a live gauge).
        self.flow_blocked_streams = 0
        self._init_state()

    def _init_state(self) -> None:
        self._script: deque[list[Any]] = deque()  # [item, remaining uses]
        self._path_faults: dict[str, list[Any]] = {}
        self.default_reply = Reply()
        # Answers an ask when no script item is queued: (query, earlier queries of the thread) -> Reply,
        # or None for the default reply (e.g. `perplexity.testing.ProtocolModel()`).
        self.responder: Callable[[str, list[str]], Reply | None] | None = None
        self.requests: list[RecordedRequest] = []
        # Exceptions raised inside the fake's handlers (bugs in the fake, never client behaviour).
        self.errors: list[BaseException] = []
        self.streams_started = 0
        self.streams_closed_by_client = 0
        # Connections accepted (TLS or not) and HTTP/2 request streams received.
        self.connections_opened = 0
        self.h2_streams = 0
        self.threads: dict[str, ThreadRecord] = {}
        self.uploads: dict[str, tuple[str, str, bytes]] = {}
        self.presigns: dict[str, Presign] = {}
        self.terminated: list[str] = []
        # path -> (status, content type, body): answered verbatim, e.g. to replay a captured response.
        self.canned: dict[str, tuple[int, str, bytes]] = {}
        # entry (backend_uuid) -> the /rest/thread/export answer to give for it instead of a generated one.
        self.exports: dict[str, dict[str, Any]] = {}
        self.rotate_on_session = False
        self.session_valid = True
        self.models_schema = "v1"
        self.models_fault: Fault | None = None
        self.max_upload_bytes = 50 * 1024 * 1024
        self.user: dict[str, Any] = dict(FAKE_USER)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakePerplexity:
        """Start serving in a background thread; `url` is valid afterwards."""
        if self._server is not None:
            return self
        self._stopping.clear()
        tls = self._start_tls() if self.tls else None
        self._server = _Server((self.host, self.port), self, tls)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-perplexity", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end open streams and keep-alive connections, and wait for handlers to finish."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:  # wakes handlers blocked reading the next keep-alive request
                # The plain socket's shutdown even for TLS: SSLSocket.shutdown would drop its TLS state
                # under the thread still reading it.
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self.wait_until(lambda: not self._connections, timeout=5)
        self._server = self._thread = None
        if self.ca_path is not None:
            shutil.rmtree(Path(self.ca_path).parent, ignore_errors=True)
            self.ca_path = None

    def _start_tls(self) -> ssl.SSLContext:
        """The server's TLS context (made once per instance) and a fresh CA file for clients to trust."""
        if self._tls_context is None:
            import trustme  # a test-only dependency, needed only for TLS

            self._ca = trustme.CA(organization_name="Fake Perplexity test CA")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            context.set_alpn_protocols(["h2", "http/1.1"] if self.http2 else ["http/1.1"])
            if self.http2:
                from . import h2conn  # noqa: F401  (fail at start, not at the first h2 connection, without h2)
            self._tls_context = context
        ca_file = Path(tempfile.mkdtemp(prefix="fake-perplexity-ca-")) / "ca.pem"
        self._ca.cert_pem.write_to_path(str(ca_file))
        self.ca_path = str(ca_file)
        return self._tls_context

    def __enter__(self) -> FakePerplexity:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:PORT` or with TLS `https://127.0.0.1:PORT` (no trailing slash)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def stopping(self) -> bool:
        """True while stop() is under way."""
        return self._stopping.is_set()

    # ---- scripting ------------------------------------------------------------------------------

    def enqueue(self, *items: Reply | Fault) -> None:
        """Script the next asks, first in first out; a Fault counts `times` asks."""
        with self._lock:
            for item in items:
                if not isinstance(item, Reply | Fault):
                    raise TypeError(f"expected Reply or Fault, got {type(item).__name__}")
                self._script.append([item, item.times if isinstance(item, Fault) else 1])

    def fault_for(self, path: str, fault: Fault | None) -> None:
        """Make the next `fault.times` requests to `path` (any method) fail; None clears it."""
        with self._lock:
            if fault is None:
                self._path_faults.pop(path, None)
            else:
                self._path_faults[path] = [fault, fault.times]

    def reset(self) -> None:
        """Forget the script, recorded requests, counters, threads and uploads (the token stays).

        Streams still open from earlier requests are ended first, so `open_streams` (a live gauge,
        never zeroed by hand) is back to 0 for the next test.
        """
        with self._lock:
            self._epoch += 1
        self.wait_until(lambda: self.open_streams == 0, timeout=2)
        with self._lock:
            self._init_state()

    @property
    def asks(self) -> list[RecordedRequest]:
        """The recorded `POST /rest/sse/perplexity_ask` requests, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path == ASK_PATH]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
        """Poll `predicate` until it is true or `timeout` passes; return its last value."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return bool(predicate())
            time.sleep(interval)
        return True

    # ---- session tokens -------------------------------------------------------------------------

    @property
    def session_token(self) -> str:
        """The current valid session cookie value; setting it revokes every older one."""
        return self._tokens[-1]

    @session_token.setter
    def session_token(self, value: str) -> None:
        with self._lock:
            self._tokens = [value]

    def token_ok(self, token: str | None) -> bool:
        """Return whether `token` is the current or a previously rotated session token."""
        return token is not None and token in self._tokens

    def authenticated(self, token: str | None) -> bool:
        """Return whether a request with this cookie is logged in."""
        return self.session_valid and self.token_ok(token)

    def rotate_token(self) -> str:
        """Issue a new session token; older ones keep working (a rolling session)."""
        with self._lock:
            token = f"rotated-{uuid.uuid4().hex}"
            self._tokens.append(token)
            return token

    # ---- used by the request handlers -----------------------------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def take_script_item(self) -> Reply | Fault | None:
        """Take one use of the head of the script, or None when the script is empty."""
        with self._lock:
            if not self._script:
                return None
            entry = self._script[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._script.popleft()
            return entry[0]

    def give_back(self, item: Reply | Fault) -> None:
        """Undo `take_script_item` for a request that was refused before using its item."""
        with self._lock:
            if self._script and self._script[0][0] is item:
                self._script[0][1] += 1
            else:
                self._script.appendleft([item, 1])

    def take_path_fault(self, path: str) -> Fault | None:
        with self._lock:
            entry = self._path_faults.get(path)
            if entry is None:
                return None
            entry[1] -= 1
            if entry[1] <= 0:
                del self._path_faults[path]
            return entry[0]

    def track_connection(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def connection_opened(self) -> None:
        with self._lock:
            self.connections_opened += 1

    def h2_stream_opened(self) -> None:
        with self._lock:
            self.h2_streams += 1

    def flow_blocked(self, blocked: bool) -> None:
        with self._lock:
            self.flow_blocked_streams += 1 if blocked else -1

    def stream_opened(self) -> None:
        with self._lock:
            self.open_streams += 1
            self.streams_started += 1

    def stream_closed(self) -> None:
        with self._lock:
            self.open_streams -= 1

    def client_left(self) -> None:
        with self._lock:
            self.streams_closed_by_client += 1

    def cancel_check(self) -> Callable[[], bool]:
        """Return a predicate that turns true when the fake stops or is reset after this call."""
        epoch = self._epoch
        return lambda: self._stopping.is_set() or self._epoch != epoch

    def thread_of_entry(self, backend_uuid: str | None) -> ThreadRecord | None:
        """Return the thread holding entry `backend_uuid`, if any."""
        with self._lock:
            for thread in self.threads.values():
                if backend_uuid in thread.entries:
                    return thread
            return None

    def add_entry(self, thread: ThreadRecord, backend_uuid: str, final_frame: dict[str, Any] | None) -> None:
        with self._lock:
            self.threads[thread.context_uuid] = thread
            thread.entries.append(backend_uuid)
            if final_frame is not None:
                thread.final_frames[backend_uuid] = final_frame

    def delete_thread(self, context_uuid: str) -> None:
        with self._lock:
            self.threads.pop(context_uuid, None)
