"""One libcurl multi handle per gevent hub (per thread without gevent), shared by every transfer made there.

Sharing the multi handle shares what libcurl keeps in it: the connection pool (HTTP/2 streams to one origin are
multiplexed over one connection, as a browser does), the TLS session cache and the transfer buffers. This module
knows libcurl's multi interface and nothing of HTTP; `curl_transport` builds the requests and reads the answers.

Who runs libcurl:

- Under gevent (`GeventHub`), the hub itself. libcurl says which sockets to watch through our own
  CURLMOPT_SOCKETFUNCTION callback (each becomes a gevent io watcher on the hub's loop) and when to call back
  anyway through CURLMOPT_TIMERFUNCTION. A watcher that fires runs `curl_multi_socket_action` right in its
  callback, reads finished transfers from `curl_multi_info_read`, and the write callbacks wake the transfers'
  readers (one gevent Event each). One driver greenlet per hub handles the rest: libcurl's timer, and the
  wake-ups from readers (start, resume, detach), other threads and garbage collection. No greenlet per transfer
  besides the reader's own, and no curl call ever blocks the hub.
- Without gevent (`ThreadHub`), the reader drives the multi itself (`curl_multi_perform`, then `curl_multi_poll`
  bounded by its own deadline or tick), holding the hub's lock; data that arrives for other transfers of the same
  multi waits in their buffers.

Rules that keep this safe: no libcurl call from inside a libcurl callback of the same multi (`_in_curl` counts
the calls in progress; a close that arrives then, e.g. from garbage collection, is deferred), and none from
garbage collection at all: a response dropped without close() only puts its transfer on `_dropped`, which the
driver (or the next reader) reaps at a safe point.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from curl_cffi import CurlMOpt, ffi, lib

from perplexity.errors import ConfigurationError, TransportError

__all__ = [
    "CURLPAUSE_CONT",
    "CURL_WRITEFUNC_PAUSE",
    "SOCKET_CALLBACK",
    "TIMER_CALLBACK",
    "CurlHub",
    "GeventHub",
    "ThreadHub",
    "Transfer",
]

log = logging.getLogger(__name__)

# libcurl ABI constants (curl/curl.h, curl/multi.h).
CURL_POLL_IN, CURL_POLL_OUT, CURL_POLL_INOUT, CURL_POLL_REMOVE = 1, 2, 3, 4
CURL_CSELECT_IN, CURL_CSELECT_OUT = 0x01, 0x02
CURL_SOCKET_TIMEOUT = -1
CURLMSG_DONE = 1
CURLPIPE_MULTIPLEX = 2
CURLPAUSE_CONT = 0
CURL_WRITEFUNC_PAUSE = 0x10000001
# The C types of our callbacks: socket (easy, fd, what, clientp, socketp) and timer (multi, timeout_ms, clientp).
SOCKET_CALLBACK = "int(void *, int, int, void *, void *)"
TIMER_CALLBACK = "int(void *, long, void *)"
_MAX_POLL_MS = 1000
MAX_STREAMS_PER_CONNECTION = 100  # HTTP/2's recommended minimum for SETTINGS_MAX_CONCURRENT_STREAMS
# libev's READ/WRITE bits are libcurl's CSELECT_IN/OUT bits (and POLL_IN/OUT), so they pass through unchanged.
_IO_BITS = CURL_CSELECT_IN | CURL_CSELECT_OUT


def native_thread_id() -> int:
    """The OS thread's id, even when gevent has patched `_thread.get_ident` to name greenlets."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("thread"):
        return monkey.get_original("_thread", "get_ident")()
    return threading.get_ident()


def multi_setopt_long(multi: Any, option: int, value: int) -> None:
    """Set a long multi option: curl_cffi declares the variadic argument as `void *`, so the value goes as one."""
    if lib.curl_multi_setopt(multi, option, ffi.cast("void *", value)) != 0:
        raise ConfigurationError(f"this libcurl refused multi option {option}")


class Transfer:
    """One easy handle's run on a hub: libcurl's callbacks fill it, its reader drains it.

    Subclasses say whether the reader has something to take (`ready`), what the end means (`finish`, called once
    the handle has left the multi) and how to give the handle back (`discard`, idempotent).
    """

    __slots__ = ("easy", "attached", "event")

    def __init__(self, easy: Any) -> None:
        self.easy = easy
        self.attached = False
        self.event: Any = None  # under gevent: set when the reader should look again

    def ready(self) -> bool:
        raise NotImplementedError

    def finish(self, code: int) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """Tell the reader to look again (called from callbacks: no libcurl call, no switch)."""
        event = self.event
        if event is not None:
            event.set()


class CurlHub:
    """A multi handle and the transfers attached to it; see the module docstring for who runs it."""

    def __init__(self) -> None:
        self.multi = lib.curl_multi_init()
        self.thread_id = native_thread_id()
        self.transfers: dict[Any, Transfer] = {}  # easy handle -> transfer, while attached
        self.closed = False
        self._closing = False
        self._dropped: deque[Transfer] = deque()  # appended from anywhere (GC included); reaped at a safe point
        self._in_curl = 0
        self._running = ffi.new("int *")
        self._pending = ffi.new("int *")
        # Multiplex HTTP/2 streams over one connection (libcurl's default since 7.62, pinned here on purpose).
        multi_setopt_long(self.multi, CurlMOpt.PIPELINING, CURLPIPE_MULTIPLEX)
        # Transfers waiting for a new connection (CURLOPT_PIPEWAIT) all join it once it is up, before the server's
        # SETTINGS say how many streams it takes; past that, nghttp2 holds the extra streams back until others end.
        # So assume what a browser assumes until then (and never go past it): then a burst opens more connections.
        multi_setopt_long(self.multi, CurlMOpt.MAX_CONCURRENT_STREAMS, MAX_STREAMS_PER_CONNECTION)

    # -- the reader's side --

    def start(self, transfer: Transfer) -> None:
        """Attach a configured easy handle; its callbacks fire from then on."""
        raise NotImplementedError

    def wait(self, transfer: Transfer, seconds: float) -> None:
        """Return once `transfer.ready()`, or after `seconds` (the caller re-checks its deadline)."""
        raise NotImplementedError

    def resume(self, transfer: Transfer) -> None:
        """Unpause a transfer whose write callback paused it (its reader drained the buffer)."""
        raise NotImplementedError

    def detach(self, transfer: Transfer) -> bool:
        """Remove a transfer from the multi now (h1: its connection closes; h2: its stream is reset).

        Returns False when that is not safe here (inside a libcurl call of this hub, or another thread): the
        caller then hands the transfer to `retire`, which defers it.
        """
        raise NotImplementedError

    def restart(self, transfer: Transfer, reconfigure: Callable[[], None]) -> None:
        """Take an attached transfer out, let `reconfigure()` change its options, and attach it again.

        Only for a transfer that sent nothing yet, from a safe point (a reader, not a callback).
        """
        self._remove(transfer)
        reconfigure()
        self._add(transfer)

    def retire(self, transfer: Transfer) -> None:
        """The reader is done with `transfer`: detach it if still attached and give its handle back."""
        if not transfer.attached:
            transfer.discard()
        elif self.detach(transfer):
            transfer.discard()
        else:
            self.drop(transfer)

    def drop(self, transfer: Transfer) -> None:
        """Retire `transfer` later, at a safe point. Safe from garbage collection and from any thread."""
        self._dropped.append(transfer)
        self._nudge()

    def close(self) -> None:
        """Clean the multi up once its last transfer is gone (now, if none is attached and it is safe here)."""
        self._closing = True
        self._nudge()
        if self._safe_here():
            self._reap()
            self._cleanup_if_idle()

    # -- shared internals --

    def _nudge(self) -> None:
        """Make the party that runs this multi look at `_dropped` and `_closing` soon (safe from anywhere)."""

    def _safe_here(self) -> bool:
        return not self._in_curl and native_thread_id() == self.thread_id

    def _add(self, transfer: Transfer) -> None:
        self._reap()
        if self.closed or self._closing:
            raise TransportError("the transport is closed")
        self._in_curl += 1
        try:
            code = lib.curl_multi_add_handle(self.multi, transfer.easy)
        finally:
            self._in_curl -= 1
        if code != 0:
            raise TransportError(f"libcurl could not start the transfer (multi code {code})")
        self.transfers[transfer.easy] = transfer
        transfer.attached = True

    def _remove(self, transfer: Transfer) -> None:
        if not transfer.attached:
            return
        self.transfers.pop(transfer.easy, None)
        transfer.attached = False
        self._in_curl += 1
        try:
            lib.curl_multi_remove_handle(self.multi, transfer.easy)
        finally:
            self._in_curl -= 1

    def _unpause(self, transfer: Transfer) -> None:
        if not transfer.attached:
            return
        self._in_curl += 1
        try:
            # May call the write callback right away with the data it refused (it is delivered again).
            lib.curl_easy_pause(transfer.easy, CURLPAUSE_CONT)
        finally:
            self._in_curl -= 1

    def _collect(self) -> None:
        """Hand each finished transfer its result, once its handle has left the multi."""
        while True:
            message = lib.curl_multi_info_read(self.multi, self._pending)
            if message == ffi.NULL:
                return
            if message.msg != CURLMSG_DONE:
                continue
            easy, code = message.easy_handle, int(message.data.result)  # the message dies with the removal
            transfer = self.transfers.get(easy)
            if transfer is None:  # not ours (cannot happen): still free the connection it holds
                self._in_curl += 1
                try:
                    lib.curl_multi_remove_handle(self.multi, easy)
                finally:
                    self._in_curl -= 1
                continue
            self._remove(transfer)
            transfer.finish(code)

    def _reap(self) -> None:
        """Retire the transfers dropped since the last call (we are at a safe point)."""
        dropped = self._dropped
        while dropped:
            transfer = dropped.popleft()
            self._remove(transfer)
            transfer.discard()
        self._cleanup_if_idle()

    def _cleanup_if_idle(self) -> None:
        if self._closing and not self.closed and not self.transfers and not self._dropped:
            self._cleanup()

    def _cleanup(self) -> None:
        self.closed = True
        lib.curl_multi_cleanup(self.multi)
        self.multi = ffi.NULL


class ThreadHub(CurlHub):
    """Without gevent: whoever waits drives the multi, holding `_lock` (normally the thread that made it)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def start(self, transfer: Transfer) -> None:
        with self._lock:
            self._add(transfer)

    def restart(self, transfer: Transfer, reconfigure: Callable[[], None]) -> None:
        with self._lock:
            super().restart(transfer, reconfigure)

    def wait(self, transfer: Transfer, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        if not self._lock.acquire(timeout=max(seconds, 0)):
            return
        try:
            while True:
                self._reap()
                self._perform()
                left = deadline - time.monotonic()
                if transfer.ready() or left <= 0 or self.closed:
                    return
                self._in_curl += 1
                try:
                    lib.curl_multi_poll(self.multi, ffi.NULL, 0, min(_MAX_POLL_MS, int(left * 1000) + 1), ffi.NULL)
                finally:
                    self._in_curl -= 1
        finally:
            self._lock.release()

    def resume(self, transfer: Transfer) -> None:
        with self._lock:
            self._unpause(transfer)

    def detach(self, transfer: Transfer) -> bool:
        # Never block here: this may run from garbage collection inside a libcurl call holding the lock.
        if self._in_curl or not self._lock.acquire(blocking=False):
            return False
        try:
            self._remove(transfer)
            # Send what the removal queued (an HTTP/2 RST_STREAM, a TLS close) now, not at the next wait.
            self._perform()
            self._cleanup_if_idle()
        finally:
            self._lock.release()
        return True

    def close(self) -> None:
        self._closing = True
        if self._in_curl or not self._lock.acquire(blocking=False):
            return  # the current driver cleans up when its wait ends
        try:
            self._reap()
        finally:
            self._lock.release()

    def _safe_here(self) -> bool:
        return not self._in_curl

    def _perform(self) -> None:
        if self.closed:
            return
        self._in_curl += 1
        try:
            lib.curl_multi_perform(self.multi, self._running)
        finally:
            self._in_curl -= 1
        self._collect()
        self._cleanup_if_idle()


class GeventHub(CurlHub):
    """Under gevent: libcurl runs on the hub (watcher callbacks, and a driver greenlet for its timer and wake-ups);
    readers wait on their transfer's Event."""

    def __init__(self, hub: Any) -> None:
        super().__init__()
        import gevent
        from gevent.event import Event

        self._gevent = gevent
        self._event_type = Event
        self._loop = hub.loop
        self._watchers: dict[int, Any] = {}  # fd -> io watcher for what libcurl asked
        self._resting: set[int] = set()  # fds whose watcher fired and rests until the driver ran libcurl
        self._ready: dict[int, int] = {}  # fd -> CSELECT bits seen since the driver last ran
        self._timer_at: float | None = None  # libcurl's timer (monotonic), None when it has none
        self._in_driver = False
        self._driver_until = _AWAKE  # when the parked driver wakes by itself (monotonic); _AWAKE while it runs
        self._wake = Event()
        # Wakes the driver from another thread or from garbage collection (ev_async_send is safe from both).
        self._async = self._loop.async_()
        self._async.ref = False
        self._async.start(self._wake.set)
        # Ours, not curl_cffi's: the callback objects live as long as the multi handle (see _cleanup).
        self._socket_callback = ffi.callback(SOCKET_CALLBACK, self._on_socket, onerror=_callback_failed)
        self._timer_callback = ffi.callback(TIMER_CALLBACK, self._on_timer, onerror=_callback_failed)
        for option, callback in (
            (CurlMOpt.SOCKETFUNCTION, self._socket_callback),
            (CurlMOpt.TIMERFUNCTION, self._timer_callback),
        ):
            if lib.curl_multi_setopt(self.multi, option, callback) != 0:
                raise ConfigurationError("this libcurl cannot drive transfers from the gevent hub")
        self._driver = gevent.spawn(self._drive)

    # -- the reader's side --

    def start(self, transfer: Transfer) -> None:
        transfer.event = self._event_type()
        self._add(transfer)  # libcurl sets a 0 ms timer: the driver starts the transfer on its next turn
        self._wake.set()

    def restart(self, transfer: Transfer, reconfigure: Callable[[], None]) -> None:
        super().restart(transfer, reconfigure)
        self._wake.set()

    def wait(self, transfer: Transfer, seconds: float) -> None:
        event = transfer.event
        event.clear()
        if not transfer.ready():
            event.wait(seconds)

    def resume(self, transfer: Transfer) -> None:
        self._unpause(transfer)  # the timer callback then wakes the driver to read on
        self._wake.set()

    def detach(self, transfer: Transfer) -> bool:
        if not self._safe_here():
            return False
        self._remove(transfer)
        self._wake.set()  # the driver sends what the removal queued (RST_STREAM, TLS close)
        self._cleanup_if_idle()
        return True

    # -- libcurl's callbacks (inside libcurl calls: no libcurl call and no greenlet switch here) --

    def _on_socket(self, _easy: Any, fd: int, what: int, _clientp: Any, _socketp: Any) -> int:
        watcher = self._watchers.get(fd)
        events = what & _IO_BITS
        if what == CURL_POLL_REMOVE or not events:
            if watcher is not None:
                self._unwatch(fd, watcher)
            return 0
        if watcher is not None:
            if watcher.events & _IO_BITS == events:
                return 0
            self._unwatch(fd, watcher)
        watcher = self._loop.io(fd, events)
        self._watchers[fd] = watcher
        watcher.start(self._on_io, fd, pass_events=True)
        return 0

    def _on_timer(self, _multi: Any, timeout_ms: int, _clientp: Any) -> int:
        self._timer_at = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        if not self._in_driver:
            self._wake.set()  # a timer set from a reader's call (add, pause, remove): the driver must see it
        return 0

    # -- the driver --

    def _on_io(self, revents: int, fd: int) -> None:
        """A watched socket is ready (in the hub): note it, rest the watcher (no busy loop), and run libcurl
        right here. libcurl never blocks and its callbacks only buffer and set Events, so the hub can run it;
        handing each wake-up to the driver greenlet cost two greenlet switches per chunk."""
        self._ready[fd] = self._ready.get(fd, 0) | (revents & _IO_BITS)
        watcher = self._watchers.get(fd)
        if watcher is not None:
            watcher.stop()
            self._resting.add(fd)
        if self._in_curl:  # not expected in a hub callback; keep the rule all the same
            self._wake.set()
            return
        try:
            self._step()
        except Exception:  # a bug: say so, and let the driver carry on
            log.exception("curl hub step failed; carrying on")
            self._wake.set()
            return
        when = self._timer_at
        # The driver sleeps until libcurl's timer as it was; wake it only when the timer moved earlier.
        if self.closed or (when is not None and when < self._driver_until):
            self._wake.set()

    def _step(self) -> None:
        """Reap dropped transfers, run libcurl on what is ready, hand out finished transfers, watch again."""
        self._reap()
        if self.closed:
            return
        self._run_curl()
        self._collect()
        self._cleanup_if_idle()
        if not self.closed:
            self._rearm()

    def _drive(self) -> None:
        while not self.closed:
            self._wake.clear()
            try:
                self._step()
            except Exception:  # a bug: say so, and keep the other transfers running
                log.exception("curl hub driver failed; carrying on")
                self._gevent.sleep(0.05)  # no hot loop if it fails again
            if self.closed:
                return
            self._sleep()

    def _run_curl(self) -> None:
        ready, self._ready = self._ready, {}
        action, multi, running = lib.curl_multi_socket_action, self.multi, self._running
        self._in_driver = True
        self._in_curl += 1
        try:
            for fd, bits in ready.items():
                action(multi, fd, bits, running)
            when = self._timer_at
            if when is not None and when <= time.monotonic():
                self._timer_at = None
                action(multi, CURL_SOCKET_TIMEOUT, 0, running)
        finally:
            self._in_curl -= 1
            self._in_driver = False

    def _sleep(self) -> None:
        if self._ready or self.closed:
            return
        when = self._timer_at
        if when is None:
            self._driver_until = _FOREVER
            self._wake.wait()
            self._driver_until = _AWAKE
            return
        left = when - time.monotonic()
        if left > 0:
            self._driver_until = when
            self._wake.wait(left)
            self._driver_until = _AWAKE
        else:
            self._gevent.sleep(0)  # due now: let the other greenlets run first, then act

    def _rearm(self) -> None:
        """Watch again the sockets whose watcher fired (libcurl has read what was there)."""
        resting, self._resting = self._resting, set()
        for fd in resting:
            watcher = self._watchers.get(fd)
            if watcher is not None and not watcher.active:
                watcher.start(self._on_io, fd, pass_events=True)

    def _unwatch(self, fd: int, watcher: Any) -> None:
        del self._watchers[fd]
        watcher.stop()
        watcher.close()
        self._ready.pop(fd, None)
        self._resting.discard(fd)

    def _nudge(self) -> None:
        if not self.closed:
            self._async.send()

    def _cleanup(self) -> None:
        # Stop watching first: libcurl closes the sockets during the cleanup (and may call back meanwhile).
        for fd, watcher in list(self._watchers.items()):
            self._unwatch(fd, watcher)
        super()._cleanup()
        self._watchers.clear()
        self._timer_at = None
        self._async.stop()
        self._async.close()
        self._wake.set()  # the driver sees `closed` and ends


_FOREVER = float("inf")
_AWAKE = float("-inf")


def _callback_failed(exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> int:
    # A bug in a callback: libcurl then fails the transfers of this multi (-1) instead of hanging them.
    log.error("curl hub callback failed", exc_info=(exc_type, exc, tb) if exc_type and exc else None)
    return -1
