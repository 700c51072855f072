"""Tests for the byte-level SSE decoder: WHATWG examples, Perplexity framing and chunking invariance."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perplexity.errors import MalformedFrameError
from perplexity.sse import ServerSentEvent, SSEDecoder, iter_events


def decode_whole(body: bytes) -> list[ServerSentEvent]:
    return list(iter_events([body]))


def decode_split(body: bytes, cuts: list[int]) -> list[ServerSentEvent]:
    bounds = [0, *sorted(set(cuts)), len(body)]
    return list(iter_events(body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)))


def decode_bytewise(body: bytes) -> list[ServerSentEvent]:
    return list(iter_events(body[i : i + 1] for i in range(len(body))))


# --- WHATWG HTML spec, section 9.2.6 "Interpreting an event stream" examples -----------------------


def test_spec_example_multiline_data():
    body = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert decode_whole(body) == [ServerSentEvent(data="YHOO\n+2\n10")]


def test_spec_example_comment_id_and_unterminated_last_block():
    body = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n"
    assert decode_whole(body) == [
        ServerSentEvent(data="first event", id="1"),
        ServerSentEvent(data="second event", id=""),
    ]
    # With the closing blank line the third block fires, keeping one of its two leading spaces.
    assert decode_whole(body + b"\n")[-1] == ServerSentEvent(data=" third event", id="")


def test_spec_example_empty_data_fields():
    body = b"data\n\ndata\ndata\n\ndata:"
    assert decode_whole(body) == [ServerSentEvent(data=""), ServerSentEvent(data="\n")]


def test_spec_example_space_after_colon_is_optional():
    body = b"data:test\n\ndata: test\n\n"
    assert decode_whole(body) == [ServerSentEvent(data="test")] * 2


# --- Perplexity framing -------------------------------------------------------------------------------

PPLX_BODY = (
    b'event: message\r\ndata: {"status":"PENDING","text":"caf\xc3\xa9"}\r\n\r\n'
    b": heartbeat\r\n\r\n"
    b'event: message\r\ndata: {"status":"COMPLETED","final_sse_message":true}\r\n\r\n'
    b"event: end_of_stream\r\ndata: {}\r\n\r\n"
)
PPLX_EVENTS = [
    ServerSentEvent("message", '{"status":"PENDING","text":"café"}'),
    ServerSentEvent("message", '{"status":"COMPLETED","final_sse_message":true}'),
    ServerSentEvent("end_of_stream", "{}"),
]


def test_perplexity_crlf_framing_with_heartbeat_and_end_of_stream():
    assert decode_whole(PPLX_BODY) == PPLX_EVENTS


def test_perplexity_framing_every_split_point():
    for cut in range(len(PPLX_BODY) + 1):
        assert decode_split(PPLX_BODY, [cut]) == PPLX_EVENTS, cut
    assert decode_bytewise(PPLX_BODY) == PPLX_EVENTS


def test_feed_returns_events_as_soon_as_their_blank_line_arrives():
    decoder = SSEDecoder()
    assert decoder.feed(b"event: message\r\ndata: {}\r\n") == []
    assert decoder.feed(b"\r") == [ServerSentEvent("message", "{}")]  # a CR at a chunk end is a line end
    assert decoder.feed(b"\n") == []  # ... and this LF belongs to it: no second blank line
    assert decoder.feed(b": ping\r\n\r\n") == []
    assert decoder.close() == []


def test_heartbeats_only_dispatch_nothing():
    assert decode_whole(b":\n\n: keep-alive\r\n\r\n:\r\r") == []


# --- line endings, BOM, UTF-8 ------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r"])
def test_each_line_ending(eol):
    body = eol.join([b"event: a", b"data: 1", b"data: 2", b"", b"data: 3", b"", b""])
    expected = [ServerSentEvent("a", "1\n2"), ServerSentEvent("message", "3")]
    assert decode_whole(body) == expected
    assert decode_bytewise(body) == expected


def test_mixed_line_endings_and_cr_cr_lf():
    # CR, then CRLF: two line ends, so the second is the blank line that dispatches.
    assert decode_whole(b"data: a\r\r\ndata: b\n\r") == [ServerSentEvent(data="a"), ServerSentEvent(data="b")]


def test_bom_is_stripped_once_at_stream_start():
    body = b"\xef\xbb\xbfdata: x\n\n"
    assert decode_whole(body) == [ServerSentEvent(data="x")]
    assert decode_bytewise(body) == [ServerSentEvent(data="x")]
    # A second BOM is part of the field name, which is then unknown and ignored.
    assert decode_whole(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_bom_prefix_without_bom_is_content():
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb") == []
    assert decoder.feed(b"Xdata: y\n\ndata: z\n\n") == [ServerSentEvent(data="z")]


def test_utf8_character_split_across_chunks():
    body = "data: 🦊 café\n\n".encode()
    fox = body.index(b"\xf0")
    for cut in range(fox, fox + 5):
        assert decode_split(body, [cut]) == [ServerSentEvent(data="🦊 café")]


def test_invalid_utf8_is_replaced_not_raised():
    assert decode_whole(b"data: a\xffb\n\n") == [ServerSentEvent(data="a\ufffdb")]


def test_unicode_line_separators_are_not_line_ends():
    text = "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg"
    assert decode_whole(f"data: {text}\n\n".encode()) == [ServerSentEvent(data=text)]


# --- fields ------------------------------------------------------------------------------------------


def test_id_persists_and_nul_ids_are_ignored():
    body = b"id: 7\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n"
    assert [e.id for e in decode_whole(body)] == ["7", "7", "7", ""]


def test_retry_needs_ascii_digits_and_belongs_to_its_event():
    body = b"retry: 1500\ndata: a\n\ndata: b\n\nretry: 12a\ndata: c\n\nretry: -1\nretry:\ndata: d\n\n"
    assert [e.retry for e in decode_whole(body)] == [1500, None, None, None]


def test_event_name_resets_after_dispatch_and_empty_name_means_message():
    body = b"event: x\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n"
    assert [e.event for e in decode_whole(body)] == ["x", "message", "message"]


def test_block_without_data_is_not_dispatched_and_does_not_leak_its_event_name():
    body = b"event: x\n\ndata: 1\n\n"
    assert decode_whole(body) == [ServerSentEvent("message", "1")]


def test_unknown_fields_and_no_colon_fields():
    body = b"foo: bar\nDATA: no\ndata\nevent\n\n"
    assert decode_whole(body) == [ServerSentEvent("message", "")]


def test_only_one_leading_space_is_removed_and_colons_in_value_are_kept():
    assert decode_whole(b'data:   {"a": "b:c"}\n\n') == [ServerSentEvent(data='  {"a": "b:c"}')]


def test_close_drops_unterminated_event_and_is_idempotent():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [ServerSentEvent(data="a")]
    assert decoder.close() == []
    assert decoder.close() == []


# --- line length cap ---------------------------------------------------------------------------------


def test_line_cap_in_one_chunk():
    with pytest.raises(MalformedFrameError):
        SSEDecoder(max_line_bytes=10).feed(b"data: 0123456789\n\n")


def test_line_cap_across_many_chunks_without_terminator():
    decoder = SSEDecoder(max_line_bytes=100)
    with pytest.raises(MalformedFrameError, match="longer than 100 bytes"):
        for _ in range(30):
            decoder.feed(b"data: 0123")


def test_line_at_the_cap_is_fine():
    line = b"data: " + b"x" * 94
    assert SSEDecoder(max_line_bytes=100).feed(line + b"\n\n") == [ServerSentEvent(data="x" * 94)]


def test_long_line_in_small_chunks_is_not_quadratic():
    body = b"data: " + b"z" * 2_000_000 + b"\n\n"
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(body), 64):
        events += decoder.feed(body[i : i + 64])
    assert len(events) == 1 and len(events[0].data) == 2_000_000


def test_accepts_bytearray_and_memoryview_chunks():
    decoder = SSEDecoder()
    assert decoder.feed(bytearray(b"data: a\n")) == []
    assert decoder.feed(memoryview(b"\ndata: b\n\n")) == [ServerSentEvent(data="a"), ServerSentEvent(data="b")]


# --- property: any chunking gives the same events as the whole body ----------------------------------

FIELD_TEXT = st.text(alphabet=st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)), max_size=12)
EVENTS = st.lists(
    st.fixed_dictionaries(
        {
            "event": st.one_of(st.none(), FIELD_TEXT),
            "data": st.lists(FIELD_TEXT, min_size=1, max_size=3),
            "id": st.one_of(st.none(), FIELD_TEXT.filter(lambda s: "\x00" not in s)),
            "retry": st.one_of(st.none(), st.integers(0, 10**6)),
            "comment": st.one_of(st.none(), FIELD_TEXT),
        }
    ),
    max_size=6,
)


def serialize(events: list[dict], endings: list[bytes], bom: bool) -> bytes:
    lines: list[str] = []
    for ev in events:
        if ev["comment"] is not None:
            lines.append(":" + ev["comment"])
        if ev["event"] is not None:
            lines.append("event: " + ev["event"])
        if ev["id"] is not None:
            lines.append("id: " + ev["id"])
        if ev["retry"] is not None:
            lines.append(f"retry: {ev['retry']}")
        lines.extend("data: " + d for d in ev["data"])
        lines.append("")
    out = [b"\xef\xbb\xbf"] if bom else []
    previous = b""
    for i, line in enumerate(lines):
        eol = endings[i % len(endings)]
        if previous == b"\r" and not line and eol == b"\n":
            eol = b"\r\n"  # CR then a lone LF would read as one CRLF: keep the blank line a blank line
        out += [line.encode(), eol]
        previous = eol
    return b"".join(out)


def expected_events(events: list[dict]) -> list[ServerSentEvent]:
    result, last_id = [], None
    for ev in events:
        last_id = ev["id"] if ev["id"] is not None else last_id
        result.append(ServerSentEvent(ev["event"] or "message", "\n".join(ev["data"]), last_id, ev["retry"]))
    return result


@settings(max_examples=200, deadline=None)
@given(
    events=EVENTS,
    endings=st.lists(st.sampled_from([b"\r\n", b"\n", b"\r"]), min_size=1, max_size=5),
    bom=st.booleans(),
    data=st.data(),
)
def test_chunking_never_changes_the_events(events, endings, bom, data):
    body = serialize(events, endings, bom)
    whole = decode_whole(body)
    assert whole == expected_events(events)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    assert decode_split(body, cuts) == whole
    assert decode_bytewise(body) == whole


# --- property: the one-event-per-chunk fast path agrees with the general line scanner ----------------

# Pieces that build chunks close to Perplexity's framing, and the near misses the fast path must refuse.
FRAME_PIECES = st.sampled_from(
    [b"event: ", b"message", b"end_of_stream", b"data: ", b"data:", b"{", b"}", b"x", b"\xc3\xa9", b"\xff", b" "]
    + [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b":", b"id: 7", b"event:"]
)


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(FRAME_PIECES, max_size=12), ending=st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n\n", b""]))
def test_fast_path_agrees_with_the_line_scanner(pieces, ending):
    chunk = b"".join(pieces) + ending
    decoder = SSEDecoder()
    first = decoder.feed(chunk)  # one whole chunk into a fresh decoder: the fast path's case
    assert first + decoder.close() == decode_bytewise(chunk)


def test_fast_path_takes_perplexity_frames():
    body = b'event: message\r\ndata: {"a": "\xc3\xa9"}\r\n\r\n'
    assert SSEDecoder()._single_event(body) == ServerSentEvent("message", '{"a": "\u00e9"}')
    assert SSEDecoder()._single_event(b"event: end_of_stream\r\ndata: {}\r\n\r\n").event == "end_of_stream"
    assert SSEDecoder()._single_event(b"data: 1\n\n") == ServerSentEvent("message", "1")
    # Near misses go to the general path (None), never to a wrong event.
    near_misses = (
        b"event: a\rb\r\ndata: 1\r\n\r\n",
        b"event: a\nb\n\ndata: 1\n\n",
        b"data: 1\r2\r\n\r\n",
        b"data: 1\n2\r\n\r\n",
        b"data: 1\r\n\n",
        b"data: 1\ndata: 2\n\n",
        b"data: \n\n",
        b"event: message\r\nid: 1\r\n\r\n",
    )
    for near in near_misses:
        assert SSEDecoder()._single_event(near) is None
