"""FakePerplexity: a scripted, loopback-only HTTP server that speaks Perplexity's web API."""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import EllipsisType
from typing import Any

from . import ask, endpoints, login  # noqa: F401  (importing them registers their routes)
from .accounts import DEFAULT_ACCOUNT, QUOTA_MODES, FakeAccount, make_user, retry_after_seconds
from .catalog import FAKE_USER
from .handler import ASK_PATH, FakeHandler
from .login import LoginMail, LoginState
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
    (trustme, h2). `session_token` logs in the "default" account; `accounts` ({label: token}) adds accounts
    that survive reset() (see the package docstring for accounts and their switches).
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
        accounts: Mapping[str, str] | None = None,
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
        # The account of `session_token` (label "default"); `accounts` (label -> token) adds accounts that,
        # unlike those of add_account(), survive reset().
        self._default = FakeAccount(DEFAULT_ACCOUNT, dict(FAKE_USER), [session_token])
        self._permanent = dict(accounts or {})
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
        self.logins = LoginState()  # email sign-in: the mails sent, TOTP secrets, knobs (see .login)
        self.user = dict(FAKE_USER)  # the default account's user (a property)
        self._init_accounts()

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

    def enqueue(self, *items: Reply | Fault, account: str | None = None) -> None:
        """Script the next asks, first in first out; a Fault counts `times` asks.

        With `account`, only asks of that account take these items (before any of the shared script).
        """
        with self._lock:
            script = self._script if account is None else self.account(account).script
            for item in items:
                if not isinstance(item, Reply | Fault):
                    raise TypeError(f"expected Reply or Fault, got {type(item).__name__}")
                script.append([item, item.times if isinstance(item, Fault) else 1])

    def fault_for(self, path: str, fault: Fault | None) -> None:
        """Make the next `fault.times` requests to `path` (any method) fail; None clears it."""
        with self._lock:
            if fault is None:
                self._path_faults.pop(path, None)
            else:
                self._path_faults[path] = [fault, fault.times]

    def reset(self) -> None:
        """Forget the script, recorded requests, counters, threads and uploads (the token stays).

        Accounts go back to the constructor's: those of add_account() are removed, the others lose their
        expiry, rate limit, quota, rotation settings and scripts; constructor `accounts` get their first
        token back, the default account keeps its current tokens. The clock offset returns to 0.

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
    def _tokens(self) -> list[str]:
        """The default account's tokens (the valid cookies before the fake had several accounts)."""
        return self._default.tokens

    @_tokens.setter
    def _tokens(self, value: list[str]) -> None:
        with self._lock:
            self._default.tokens = value
            self._default.retired.clear()
            self._default.grace_until.clear()

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
        """Return whether a request with this cookie is logged in (to any account that is not expired)."""
        if not self.session_valid or token is None:
            return False
        with self._lock:
            account = self.account_of(token)
            if account is None:
                return False
            if account is self._default and token not in account.tokens:  # a token only token_ok() knows
                return not account.expired and self.token_ok(token)
            return account.accepts(token, self.now())

    def rotate_token(self, label: str | None = None) -> str:
        """Issue a new session token for an account (default: the default one); older ones keep working
        for the account's rotation grace (`set_rotation`; by default for ever, a rolling session)."""
        with self._lock:
            return self.account(label).rotate(self.now())

    # ---- accounts -------------------------------------------------------------------------------

    def _init_accounts(self) -> None:
        """Back to the constructor's accounts, each with a clean state (the default one keeps its tokens)."""
        default = self._default
        self._default = FakeAccount(DEFAULT_ACCOUNT, self.user, default.tokens)
        self._default.retired = default.retired  # grace deadlines go: the replaced tokens work on
        self._accounts: dict[str, FakeAccount] = {DEFAULT_ACCOUNT: self._default}
        self._account_numbers = 1
        for label, token in self._permanent.items():
            self.add_account(token, label=label)
        # The fake's clock (monotonic seconds) for rate limits, quota resets and rotation grace;
        # `advance()` moves it on without sleeping, or replace `clock` with a callable of your own.
        self.clock: Callable[[], float] = time.monotonic
        self._clock_offset = 0.0

    @property
    def user(self) -> dict[str, Any]:
        """The default account's `/api/auth/session` user."""
        return self._default.user

    @user.setter
    def user(self, value: dict[str, Any]) -> None:
        self._default.user = value

    def add_account(
        self,
        token: str,
        *,
        label: str | None = None,
        tier: str = "pro",
        email: str | None = None,
        user_id: str | None = None,
    ) -> FakeAccount:
        """Add an account logged in by cookie `token`; its user gets a fresh id and email unless given."""
        with self._lock:
            self._account_numbers += 1
            label = label or f"account-{self._account_numbers}"
            if label in self._accounts:
                raise ValueError(f"the fake already has an account {label!r}")
            if not token or self.account_of(token) is not None:
                raise ValueError(f"account {label!r} needs a session token no other account uses")
            user = make_user(label, self._account_numbers, tier=tier, email=email, user_id=user_id)
            account = FakeAccount(label, user, [token])
            self._accounts[label] = account
            return account

    def account(self, label: str | None = None) -> FakeAccount:
        """The account called `label` (None: the default account); KeyError if there is none."""
        with self._lock:
            if label is None:
                return self._default
            try:
                return self._accounts[label]
            except KeyError:
                raise KeyError(f"the fake has no account {label!r}; it has {sorted(self._accounts)}") from None

    @property
    def accounts(self) -> dict[str, FakeAccount]:
        """label -> account, the default account first."""
        with self._lock:
            return dict(self._accounts)

    def account_of(self, token: str | None) -> FakeAccount | None:
        """The account a cookie value is (or was) a token of, valid or not; None for unknown or no cookie."""
        if not token:
            return None
        with self._lock:
            for account in self._accounts.values():
                if account is not self._default and account.owns(token):
                    return account
            if self._default.owns(token) or self.token_ok(token):
                return self._default
            return None

    def requests_of(self, label: str | None) -> list[RecordedRequest]:
        """The recorded requests whose cookie named account `label` (None: those with no known cookie)."""
        with self._lock:
            return [r for r in self.requests if r.account == label]

    def asks_of(self, label: str | None) -> list[RecordedRequest]:
        """The recorded asks whose cookie named account `label` (None: those with no known cookie)."""
        return [r for r in self.asks if r.account == label]

    def threads_of(self, label: str) -> list[ThreadRecord]:
        """The threads account `label` created, oldest first."""
        with self._lock:
            return [t for t in self.threads.values() if t.account == label]

    def expire(self, label: str | None = None) -> None:
        """End an account's session: its cookies stop logging in (session `{}`, asks 403, quotas all
        unavailable) until `revive`."""
        with self._lock:
            self.account(label).expired = True

    def revive(self, label: str | None = None) -> None:
        """Undo `expire`."""
        with self._lock:
            self.account(label).expired = False

    def rate_limit(self, label: str | None = None, retry_after: float | None = 30.0) -> None:
        """Answer every ask of the account 429 with Retry-After for `retry_after` seconds of the fake's
        clock, then normally again; None lifts the limit now."""
        with self._lock:
            account = self.account(label)
            account.rate_limited_until = None if retry_after is None else self.now() + retry_after

    def rate_limited_for(self, label: str | None) -> float | None:
        """The Retry-After (seconds, rounded up to a tenth) of an account's rate limit, or None."""
        with self._lock:
            left = self.account(label).rate_limited_for(self.now())
            return None if left is None else retry_after_seconds(left)

    def set_quota(
        self,
        label: str | None = None,
        *,
        pro_search: int | None | EllipsisType = ...,
        research: int | None | EllipsisType = ...,
        agentic_research: int | None | EllipsisType = ...,
        labs: int | None | EllipsisType = ...,
        reset: float | None | EllipsisType = ...,
        when_exhausted: Fault | None | EllipsisType = ...,
    ) -> None:
        """Set an account's `/rest/rate-limit/status` counts; modes left as `...` keep theirs.

        An int meters the mode: asks of it spend one, and at 0 they fail with `when_exhausted` (default: a
        200 stream whose first frame is FAILED with error_code RATE_LIMIT_EXCEEDED). None shows the mode as
        `not_provided` and stops metering it. `reset` (seconds of the fake's clock) refills the metered
        modes to the counts they had when set, every `reset` seconds; None: never.
        """
        counts = {
            "pro_search": pro_search,
            "research": research,
            "agentic_research": agentic_research,
            "labs": labs,
        }
        with self._lock:
            account = self.account(label)
            for mode in QUOTA_MODES:
                count = counts[mode]
                if count is ...:
                    continue
                if count is not None and (not isinstance(count, int) or count < 0):
                    raise ValueError(f"{mode} must be a count of 0 or more, or None")
                account.quota[mode] = count
                if count is None:
                    account.metered.pop(mode, None)
                else:
                    account.metered[mode] = count
            if reset is not ...:
                account.quota_period = reset
                account.quota_resets_at = None if reset is None else self.now() + reset
            if when_exhausted is not ...:
                account.when_exhausted = when_exhausted

    def quota_of(self, label: str | None) -> dict[str, int | None]:
        """mode -> remaining of an account now (None: not provided), as the status table reports it."""
        with self._lock:
            return self.account(label).remaining(self.now())

    def spend_quota(self, label: str | None, mode: str | None) -> bool | None:
        """Spend one query of `mode`: True if spent, False if exhausted, None if the mode is not metered."""
        with self._lock:
            return self.account(label).spend(mode, self.now())

    def refund_quota(self, label: str | None, mode: str | None) -> None:
        with self._lock:
            self.account(label).refund(mode)

    def set_rotation(
        self,
        label: str | None = None,
        *,
        on_session: bool = True,
        on_ask: bool = False,
        grace: float | None = None,
    ) -> None:
        """Rotate an account's token with `Set-Cookie` on each logged-in `/api/auth/session` answer and/or
        each ask stream; the replaced token keeps working for `grace` seconds of the fake's clock (None: for
        ever; 0: it stops at once). `set_rotation(label, on_session=False)` turns rotation off."""
        with self._lock:
            account = self.account(label)
            account.rotate_on_session, account.rotate_on_ask, account.rotation_grace = on_session, on_ask, grace

    def login_mail(self, email: str) -> LoginMail | None:
        """The latest sign-in email the fake "sent" to `email` (`.code`, `.link`), or None."""
        return self.logins.mail(email)

    def now(self) -> float:
        """The fake's clock: `clock()` plus what `advance()` added."""
        return self.clock() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock on (rate limits, quota resets and rotation grace see it; nothing sleeps)."""
        with self._lock:
            self._clock_offset += seconds

    # ---- used by the request handlers -----------------------------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def take_script_item(self, account: str | None = None) -> Reply | Fault | None:
        """Take one use of the head of the script, or None when the script is empty.

        With `account`, that account's own script goes first; see `take_scripted`.
        """
        return self.take_scripted(account)[0]

    def take_scripted(self, account: str | None) -> tuple[Reply | Fault | None, str | None]:
        """Take one use of the head of `account`'s own script, else of the shared one; return the item (None
        when both are empty) and the label of the script it came from (None: the shared script)."""
        with self._lock:
            own = self._accounts[account].script if account in self._accounts else None
            script, origin = (own, account) if own else (self._script, None)
            if not script:
                return None, None
            entry = script[0]
            entry[1] -= 1
            if entry[1] <= 0:
                script.popleft()
            return entry[0], origin

    def give_back(self, item: Reply | Fault, account: str | None = None) -> None:
        """Undo `take_script_item` for a request that was refused before using its item; `account` names
        the script it came from (None: the shared script)."""
        with self._lock:
            script = self._accounts[account].script if account in self._accounts else self._script
            if script and script[0][0] is item:
                script[0][1] += 1
            else:
                script.appendleft([item, 1])

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
