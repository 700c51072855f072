"""StopScanner: cut streamed text at the first stop string, even when it spans chunks."""

from hypothesis import given, settings
from hypothesis import strategies as st

from api.core.stop import StopScanner


def stream(scanner, pieces):
    return "".join(scanner.feed(piece) for piece in pieces) + scanner.flush()


def reference(text, stops):
    hits = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(hits)] if hits else text


def test_text_without_stops_passes_through():
    scanner = StopScanner([])
    assert scanner.feed("hello ") == "hello "
    assert scanner.feed("world") == "world"
    assert scanner.flush() == ""
    assert not scanner.stopped


def test_empty_stop_strings_are_ignored():
    scanner = StopScanner(["", ""])
    assert stream(scanner, ["a", "b"]) == "ab"
    assert not scanner.stopped


def test_a_stop_inside_one_chunk_cuts_there_and_drops_the_rest():
    scanner = StopScanner(["END"])
    assert scanner.feed("one two END three") == "one two "
    assert scanner.stopped
    assert scanner.feed("more") == ""
    assert scanner.flush() == ""


def test_a_stop_string_spanning_chunks_is_found():
    scanner = StopScanner(["\n\nUser:"])
    assert scanner.feed("Answer.\n") == "Answer."
    assert scanner.feed("\nUs") == ""
    assert scanner.feed("er: hi") == ""
    assert scanner.stopped
    assert scanner.flush() == ""


def test_a_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    scanner = StopScanner(["STOP"])
    assert scanner.feed("go ST") == "go "
    assert scanner.feed("AY") == "STAY"
    assert scanner.feed("ing S") == "ing "
    assert scanner.flush() == "S"
    assert not scanner.stopped


def test_the_earliest_of_several_stops_wins():
    scanner = StopScanner(["world", "lo w", "o"])
    assert scanner.feed("hello world") == "hel"


def test_a_longer_stop_that_starts_earlier_wins_over_a_shorter_later_one():
    scanner = StopScanner(["abcd", "d"])
    assert scanner.feed("xab") == "x"
    assert scanner.feed("cd") == ""
    assert scanner.stopped


def test_stop_exactly_at_a_chunk_edge():
    scanner = StopScanner(["##"])
    assert scanner.feed("a#") == "a"
    assert scanner.feed("#b") == ""
    assert scanner.stopped


STOPS = st.lists(st.text(alphabet="ab\n", max_size=4), max_size=4)
TEXTS = st.text(alphabet="ab\nc", max_size=40)


@st.composite
def chunkings(draw):
    text = draw(TEXTS)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=10)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=500, deadline=None)
@given(case=chunkings(), stops=STOPS)
def test_any_chunking_emits_the_text_up_to_the_first_stop(case, stops):
    text, pieces = case
    scanner = StopScanner(stops)
    assert stream(scanner, pieces) == reference(text, stops)
    assert scanner.stopped == any(stop and stop in text for stop in stops)
