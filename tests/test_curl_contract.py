"""What perplexity/curl_hub.py relies on from curl_cffi and libcurl, pinned so a version bump fails here first.

The hub drives libcurl's multi interface with its own cffi callbacks: the function types, option and info ids,
callback signatures and the order in which libcurl calls back are all outside this repository. The recorded runs
use a small poll()-based driver (`Recorder`) with the hub's callback types against local servers, then check the
behaviours the hub is built on: pause and re-delivery, one HTTP/2 connection for two transfers, a removed
transfer that resets only its own stream. The last tests check that garbage collection never calls libcurl.
"""

from __future__ import annotations

import gc
import inspect
import json
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from curl_cffi import Curl, CurlHttpVersion, CurlInfo, CurlMOpt, CurlOpt, ffi, lib
from curl_cffi.requests.impersonate import resolve_latest_browser_type

from perplexity import curl_hub, curl_transport
from perplexity.curl_hub import (
    CURL_WRITEFUNC_PAUSE,
    CURLPAUSE_CONT,
    SOCKET_CALLBACK,
    TIMER_CALLBACK,
    multi_setopt_long,
)
from perplexity.curl_transport import CurlTransport

from .h2_upstream import H2Upstream

ROOT = Path(__file__).resolve().parents[1]
CHROME = resolve_latest_browser_type("chrome")
POLL_IN, POLL_OUT, POLL_INOUT, POLL_REMOVE = 1, 2, 3, 4


# --- the C surface -----------------------------------------------------------------------------------

LIB_TYPES = {
    "curl_multi_init": "void *(*)()",
    "curl_multi_cleanup": "int(*)(void *)",
    "curl_multi_setopt": "int(*)(void *, int, void *)",
    "curl_multi_add_handle": "int(*)(void *, void *)",
    "curl_multi_remove_handle": "int(*)(void *, void *)",
    "curl_multi_socket_action": "int(*)(void *, int, int, int *)",
    "curl_multi_info_read": "struct CURLMsg *(*)(void *, int *)",
    "curl_multi_perform": "int(*)(void *, int *)",
    "curl_multi_poll": "int(*)(void *, void *, unsigned int, int, int *)",
    "curl_easy_pause": "int(*)(void *, int)",
    "curl_easy_init": "void *(*)()",
    "curl_easy_strerror": "char *(*)(int)",
}


def test_the_libcurl_functions_used_keep_their_cffi_types():
    assert {name: ffi.typeof(getattr(lib, name)).cname for name in LIB_TYPES} == LIB_TYPES


def test_curlmsg_keeps_its_layout():
    message = ffi.typeof("struct CURLMsg")
    assert [(name, field.type.cname) for name, field in message.fields[:2]] == [
        ("msg", "int"),
        ("easy_handle", "void *"),
    ]
    data = message.fields[2][1].type
    assert ("result", "int") in [(name, field.type.cname) for name, field in data.fields]


def test_option_and_info_ids_are_libcurls():
    # The numbers are libcurl's ABI (curl/curl.h, curl/multi.h); curl_cffi only names them.
    pinned = [
        (CurlOpt.URL, 10002),
        (CurlOpt.POSTFIELDS, 10015),
        (CurlOpt.POSTFIELDSIZE, 60),
        (CurlOpt.NOBODY, 44),
        (CurlOpt.CUSTOMREQUEST, 10036),
        (CurlOpt.HTTPHEADER, 10023),
        (CurlOpt.NOSIGNAL, 99),
        (CurlOpt.CONNECTTIMEOUT_MS, 156),
        (CurlOpt.FOLLOWLOCATION, 52),
        (CurlOpt.PROXY, 10004),
        (CurlOpt.CAINFO, 10065),
        (CurlOpt.ACCEPT_ENCODING, 10102),
        (CurlOpt.BUFFERSIZE, 98),
        (CurlOpt.UPLOAD_BUFFERSIZE, 280),
        (CurlOpt.HTTP_VERSION, 84),
        (CurlOpt.PIPEWAIT, 237),
        (CurlOpt.WRITEFUNCTION, 20011),
        (CurlOpt.HEADERFUNCTION, 20079),
        (CurlInfo.REQUEST_SIZE, 0x200000 + 12),
        (CurlInfo.POSTTRANSFER_TIME_T, 0x600000 + 67),
        (CurlInfo.NUM_CONNECTS, 0x200000 + 26),
        (CurlInfo.LOCAL_PORT, 0x200000 + 42),
        (CurlInfo.CONN_ID, 0x600000 + 64),
        (CurlMOpt.PIPELINING, 3),
        (CurlMOpt.MAX_CONCURRENT_STREAMS, 16),
        (CurlMOpt.SOCKETFUNCTION, 20001),
        (CurlMOpt.TIMERFUNCTION, 20004),
        (CurlMOpt.MAX_TOTAL_CONNECTIONS, 13),
        (CurlHttpVersion.V1_1, 2),
    ]
    assert [(name, int(name)) for name, _ in pinned] == [(name, value) for name, value in pinned]


def test_the_callback_types_are_accepted_by_the_multi_handle():
    def on_socket(easy: Any, fd: int, what: int, clientp: Any, socketp: Any) -> int:
        return 0

    def on_timer(multi: Any, timeout_ms: int, clientp: Any) -> int:
        return 0

    socket_cb = ffi.callback(SOCKET_CALLBACK, on_socket)
    timer_cb = ffi.callback(TIMER_CALLBACK, on_timer)
    assert ffi.typeof(socket_cb).cname == "int(*)(void *, int, int, void *, void *)"
    assert ffi.typeof(timer_cb).cname == "int(*)(void *, long, void *)"
    multi = lib.curl_multi_init()
    try:
        assert lib.curl_multi_setopt(multi, CurlMOpt.SOCKETFUNCTION, socket_cb) == 0
        assert lib.curl_multi_setopt(multi, CurlMOpt.TIMERFUNCTION, timer_cb) == 0
        multi_setopt_long(multi, CurlMOpt.PIPELINING, curl_hub.CURLPIPE_MULTIPLEX)
        multi_setopt_long(multi, CurlMOpt.MAX_CONCURRENT_STREAMS, curl_hub.MAX_STREAMS_PER_CONNECTION)
    finally:
        lib.curl_multi_cleanup(multi)


def test_the_curl_wrapper_offers_what_the_transport_uses():
    assert "handle" in inspect.signature(Curl.__init__).parameters  # we hand it our own easy handle
    for method in ("setopt", "getinfo", "impersonate", "reset", "clean_handles_and_buffers", "close"):
        assert callable(getattr(Curl, method)), method
    assert CHROME.startswith("chrome") and CHROME != "chrome"  # the alias resolves to a versioned target


# --- recorded runs against local servers -------------------------------------------------------------


class Recorder:
    """A poll()-based driver on the hub's callback types that records every socket and timer callback."""

    def __init__(self) -> None:
        self.multi = lib.curl_multi_init()
        self.events: list[tuple[str, int]] = []
        self.sockets: dict[int, int] = {}
        self.timer: float | None = None
        self.done: dict[int, int] = {}
        self._running = ffi.new("int *")
        self._pending = ffi.new("int *")
        self._socket_cb = ffi.callback(SOCKET_CALLBACK, self._on_socket)
        self._timer_cb = ffi.callback(TIMER_CALLBACK, self._on_timer)
        assert lib.curl_multi_setopt(self.multi, CurlMOpt.SOCKETFUNCTION, self._socket_cb) == 0
        assert lib.curl_multi_setopt(self.multi, CurlMOpt.TIMERFUNCTION, self._timer_cb) == 0
        multi_setopt_long(self.multi, CurlMOpt.PIPELINING, curl_hub.CURLPIPE_MULTIPLEX)
        self.easies: list[tuple[Curl, Any]] = []

    def _on_socket(self, easy: Any, fd: int, what: int, clientp: Any, socketp: Any) -> int:
        self.events.append(("socket", what))
        if what == POLL_REMOVE:
            self.sockets.pop(fd, None)
        else:
            self.sockets[fd] = what
        return 0

    def _on_timer(self, multi: Any, timeout_ms: int, clientp: Any) -> int:
        self.events.append(("timer", timeout_ms if timeout_ms <= 0 else 1))  # 1: some positive delay
        self.timer = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        return 0

    def easy(self, url: str, ca: str, on_body: Callable[[bytes], int], *, pipewait: bool = True) -> Any:
        easy = lib.curl_easy_init()
        curl = Curl(handle=easy)
        curl.setopt(CurlOpt.URL, url.encode())
        curl.setopt(CurlOpt.CAINFO, ca.encode())
        assert curl.impersonate(CHROME) == 0
        if url.startswith("http:"):
            curl.setopt(CurlOpt.HTTP_VERSION, CurlHttpVersion.V1_1)
        elif pipewait:
            curl.setopt(CurlOpt.PIPEWAIT, 1)
        curl.setopt(CurlOpt.WRITEFUNCTION, on_body)
        self.easies.append((curl, easy))
        return easy

    def curl(self, easy: Any) -> Curl:
        return next(curl for curl, e in self.easies if e == easy)

    def step(self, wait: float = 0.05) -> None:
        poller = select.poll()
        for fd, what in self.sockets.items():
            poller.register(fd, (select.POLLIN if what & POLL_IN else 0) | (select.POLLOUT if what & POLL_OUT else 0))
        if self.timer is not None:
            wait = max(0.0, min(wait, self.timer - time.monotonic()))
        for fd, revents in poller.poll(wait * 1000):
            bits = (1 if revents & (select.POLLIN | select.POLLHUP | select.POLLERR) else 0) | (
                2 if revents & select.POLLOUT else 0
            )
            lib.curl_multi_socket_action(self.multi, fd, bits, self._running)
        if self.timer is not None and self.timer <= time.monotonic():
            self.timer = None
            lib.curl_multi_socket_action(self.multi, curl_hub.CURL_SOCKET_TIMEOUT, 0, self._running)
        while (message := lib.curl_multi_info_read(self.multi, self._pending)) != ffi.NULL:
            if message.msg == curl_hub.CURLMSG_DONE:
                self.done[_address(message.easy_handle)] = int(message.data.result)

    def run_until(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "the recorded transfer did not get there in time"
            self.step()

    def finished(self, easy: Any) -> Callable[[], bool]:
        return lambda: _address(easy) in self.done

    def close(self) -> None:
        for _, easy in self.easies:
            lib.curl_multi_remove_handle(self.multi, easy)
        for curl, _ in self.easies:
            curl.close()
        lib.curl_multi_cleanup(self.multi)


def _address(pointer: Any) -> int:
    return int(ffi.cast("uintptr_t", pointer))


@pytest.fixture(scope="module", params=["plain", "h2"])
def upstream(request: pytest.FixtureRequest) -> Iterator[H2Upstream]:
    with H2Upstream(request.param) as served:
        yield served


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    driver = Recorder()
    yield driver
    driver.close()


def _collector(into: list[bytes]) -> Callable[[bytes], int]:
    def on_body(data: bytes) -> int:
        into.append(data)
        return len(data)  # anything else: curl_cffi warns, and the warning (an error here) fails the transfer

    return on_body


def test_callbacks_of_one_transfer_on_a_fresh_connection(upstream, recorder):
    """libcurl asks for a 0 ms timer, watches the socket for writing (connecting), drops its timer, watches
    for reading, and unregisters the socket once done (an idle pooled connection is not watched)."""
    body: list[bytes] = []
    easy = recorder.easy(upstream.url("/sse?n=3&gap=0.02"), upstream.ca_path, _collector(body))
    assert lib.curl_multi_add_handle(recorder.multi, easy) == 0
    assert recorder.events == [("timer", 0)]  # added: "call me at once", from inside curl_multi_add_handle
    recorder.run_until(recorder.finished(easy))
    assert recorder.done[_address(easy)] == 0
    events = [event for event in recorder.events if event != ("timer", 1)]  # positive delays vary with timing
    assert events == [("timer", 0), ("socket", POLL_OUT), ("timer", -1), ("socket", POLL_IN), ("socket", POLL_REMOVE)]
    assert {what for kind, what in recorder.events if kind == "socket"} <= {POLL_IN, POLL_OUT, POLL_INOUT, POLL_REMOVE}
    assert b"".join(body).count(b"event: message") == 3


def test_a_paused_write_callback_gets_its_data_again_after_unpause(upstream, recorder):
    calls: list[bytes] = []

    def on_body(data: bytes) -> int:
        calls.append(data)
        return CURL_WRITEFUNC_PAUSE if len(calls) == 1 else len(data)

    easy = recorder.easy(upstream.url("/sse?n=3&gap=0.02"), upstream.ca_path, on_body)
    lib.curl_multi_add_handle(recorder.multi, easy)
    recorder.run_until(lambda: bool(calls))
    for _ in range(10):
        recorder.step(0.02)
    assert len(calls) == 1  # paused: no more write callbacks, however long it runs
    recorder.events.clear()
    assert lib.curl_easy_pause(easy, CURLPAUSE_CONT) == 0
    assert calls[1] == calls[0]  # the refused data, delivered again (here before curl_easy_pause returned)
    assert ("timer", 0) in recorder.events  # and libcurl asks to be run again to read on
    recorder.run_until(recorder.finished(easy))
    assert recorder.done[_address(easy)] == 0
    assert b"".join(calls[1:]).count(b"event: message") == 3


def test_a_long_multi_option_is_passed_as_the_pointer_sized_value(recorder):
    # curl_cffi declares curl_multi_setopt's variadic argument as void *: a long must travel as one. With
    # MAX_TOTAL_CONNECTIONS=1 two concurrent transfers then share one connection, one after the other.
    with H2Upstream("plain") as plain:
        multi_setopt_long(recorder.multi, CurlMOpt.MAX_TOTAL_CONNECTIONS, 1)
        first = recorder.easy(plain.url("/sse?n=2&gap=0.05"), plain.ca_path, len)
        second = recorder.easy(plain.url("/sse?n=2&gap=0.05"), plain.ca_path, len)
        lib.curl_multi_add_handle(recorder.multi, first)
        lib.curl_multi_add_handle(recorder.multi, second)
        recorder.run_until(lambda: recorder.finished(first)() and recorder.finished(second)())
        ports = {recorder.curl(easy).getinfo(CurlInfo.LOCAL_PORT) for easy in (first, second)}
        assert len(ports) == 1 and plain.connections == 1


def test_two_h2_transfers_share_one_connection_and_removing_one_resets_only_its_stream(recorder):
    with H2Upstream("h2") as h2:
        sibling_body: list[bytes] = []
        left_body: list[bytes] = []
        sibling = recorder.easy(h2.url("/sse?n=6&gap=0.05"), h2.ca_path, _collector(sibling_body))
        leaving = recorder.easy(h2.url("/stall?n=1&tag=removed"), h2.ca_path, _collector(left_body))
        lib.curl_multi_add_handle(recorder.multi, sibling)
        lib.curl_multi_add_handle(recorder.multi, leaving)
        recorder.run_until(lambda: bool(sibling_body and left_body))
        curls = [recorder.curl(easy) for easy in (sibling, leaving)]
        assert len({curl.getinfo(CurlInfo.CONN_ID) for curl in curls}) == 1
        assert len({curl.getinfo(CurlInfo.LOCAL_PORT) for curl in curls}) == 1
        assert sum(curl.getinfo(CurlInfo.NUM_CONNECTS) for curl in curls) == 1  # the second one waited (PIPEWAIT)
        assert lib.curl_multi_remove_handle(recorder.multi, leaving) == 0
        assert h2.gone("removed").wait(5)  # RST_STREAM went out from inside the removal
        recorder.run_until(recorder.finished(sibling))
        assert recorder.done[_address(sibling)] == 0
        assert b"".join(sibling_body).count(b"event: message") == 6
        assert h2.connections == 1


# --- no libcurl call from garbage collection ---------------------------------------------------------


class _Recording:
    """Stands in for curl_cffi's `lib`, noting each function looked up."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self._real, name)


@pytest.fixture
def libcurl_calls(monkeypatch: pytest.MonkeyPatch) -> _Recording:
    import curl_cffi.curl

    recording = _Recording(lib)
    for module in (curl_hub, curl_transport, curl_cffi.curl):
        monkeypatch.setattr(module, "lib", recording)
    return recording


@pytest.mark.parametrize("mode", ["plain", "h2"])
def test_a_dropped_response_is_reaped_later_and_releases_its_stream(mode, libcurl_calls):
    with H2Upstream(mode) as served:
        transport = CurlTransport(impersonate="chrome", ca_bundle=served.ca_path)
        try:
            response = transport.request("GET", served.url("/stall?n=1&tag=dropped"), headers={}, stream=True,
                                         timeout=(2, 5))  # fmt: skip
            next(response.iter_bytes())
            hub = response._transfer.hub
            gc.disable()  # collect exactly here
            try:
                libcurl_calls.calls.clear()
                del response
                gc.collect()
                assert libcurl_calls.calls == []  # dropping it ran no libcurl function
            finally:
                gc.enable()
            assert len(hub.transfers) == 1  # still attached until a safe point
            assert "__del__" not in vars(CurlTransport)
            assert transport.request("GET", served.url("/peer"), headers={}, timeout=(2, 5)).status_code == 200
            assert not hub.transfers  # the next request reaped it
            assert served.gone("dropped").wait(5)  # h1: its connection closed; h2: its stream reset
        finally:
            transport.close()


def test_a_close_inside_a_libcurl_call_is_deferred(libcurl_calls):
    """What a close from garbage collection inside a callback would do: nothing but queue the transfer."""
    with H2Upstream("h2") as served:
        transport = CurlTransport(impersonate="chrome", ca_bundle=served.ca_path)
        try:
            response = transport.request("GET", served.url("/stall?n=1&tag=deferred"), headers={}, stream=True,
                                         timeout=(2, 5))  # fmt: skip
            next(response.iter_bytes())
            hub = response._transfer.hub
            hub._in_curl += 1  # as inside curl_multi_perform
            libcurl_calls.calls.clear()
            response.close()
            assert libcurl_calls.calls == [] and len(hub.transfers) == 1
            hub._in_curl -= 1
            transport.request("GET", served.url("/peer"), headers={}, timeout=(2, 5)).close()
            assert not hub.transfers and served.gone("deferred").wait(5)
        finally:
            transport.close()


GEVENT_DROP = r"""
from gevent import monkey

monkey.patch_all()

import gc
import json
import sys

import gevent

from perplexity.transport import CurlTransport

url, ca = sys.argv[1], sys.argv[2]
transport = CurlTransport(impersonate="chrome", ca_bundle=ca)
response = transport.request("GET", url + "/stall?n=1&tag=gevent-dropped", headers={}, stream=True, timeout=(2, 5))
next(response.iter_bytes())
hub = response._transfer.hub
del response
gc.collect()
attached_after_gc = len(hub.transfers)
gevent.sleep(0.2)  # the driver, woken by the drop, reaps at its next turn: no request needed
print(json.dumps({"attached_after_gc": attached_after_gc, "attached_later": len(hub.transfers)}))
transport.close()
"""


def test_under_gevent_the_driver_reaps_a_dropped_response_by_itself():
    with H2Upstream("h2") as served:
        result = subprocess.run(
            [sys.executable, "-W", "error", "-c", GEVENT_DROP, served.url(""), served.ca_path],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report == {"attached_after_gc": 1, "attached_later": 0}, report
        assert served.gone("gevent-dropped").wait(5)
