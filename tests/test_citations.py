"""CitationRenderer: the three citation modes, url_citation spans, and identical results for any chunking."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.core.citations import CitationRenderer
from perplexity.types import Source
from tests.openapi import validate

SOURCES = (
    Source(title="Sky", url="https://sky.example/blue"),
    Source(title="", url="https://grass.example/(green)"),
    Source(title="Water", url="https://water.example/"),
)
TEXT = "The sky is blue [1]. Grass is green[1][2]! Oceans are large [3].\nSee [4] too"


def spans(renderer, content):
    return [
        (content[a["url_citation"]["start_index"] : a["url_citation"]["end_index"]], a["url_citation"]["url"])
        for a in renderer.annotations
    ]


def stream(renderer, pieces):
    return "".join(renderer.feed(piece) for piece in pieces) + renderer.flush()


def test_default_mode_keeps_markers_and_annotates_each_one():
    renderer = CitationRenderer("default", SOURCES)
    content = renderer.render(TEXT)
    assert content == TEXT
    assert spans(renderer, content) == [
        ("[1]", "https://sky.example/blue"),
        ("[1]", "https://sky.example/blue"),
        ("[2]", "https://grass.example/(green)"),
        ("[3]", "https://water.example/"),
    ]


def test_markdown_mode_links_known_markers():
    renderer = CitationRenderer("markdown", SOURCES)
    content = renderer.render(TEXT)
    assert content == (
        "The sky is blue [1](https://sky.example/blue). Grass is green[1](https://sky.example/blue)"
        "[2](https://grass.example/%28green%29)! Oceans are large [3](https://water.example/).\nSee [4] too"
    )
    assert [text for text, _ in spans(renderer, content)] == [
        "[1](https://sky.example/blue)",
        "[1](https://sky.example/blue)",
        "[2](https://grass.example/%28green%29)",
        "[3](https://water.example/)",
    ]
    # The annotation carries the real URL even where the link target had to be escaped.
    assert renderer.annotations[2]["url_citation"]["url"] == "https://grass.example/(green)"


def test_clean_mode_removes_markers_and_cites_the_sentence_fragment():
    renderer = CitationRenderer("clean", SOURCES)
    content = renderer.render(TEXT)
    assert content == "The sky is blue. Grass is green! Oceans are large.\nSee [4] too"
    assert spans(renderer, content) == [
        ("The sky is blue", "https://sky.example/blue"),
        ("Grass is green", "https://sky.example/blue"),
        ("Grass is green", "https://grass.example/(green)"),
        ("Oceans are large", "https://water.example/"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("large [2].", "large."),
        ("large [2]", "large"),
        ("large [1] [2].", "large."),
        ("the sky [1] is blue", "the sky is blue"),
        ("word [1]next", "word next"),
        ("tight[1].", "tight."),
        ("A [1] B [2].", "A B."),
    ],
)
def test_clean_mode_keeps_text_readable(text, expected):
    assert CitationRenderer("clean", SOURCES).render(text) == expected


def test_clean_fragments_start_after_sentence_ends_newlines_and_markers():
    renderer = CitationRenderer("clean", SOURCES)
    content = renderer.render("Intro. Pi is 3.14 here [1] and more [2]\n- item [3]")
    assert content == "Intro. Pi is 3.14 here and more\n- item"
    assert [text for text, _ in spans(renderer, content)] == ["Pi is 3.14 here", "and more", "- item"]


def test_annotation_titles_fall_back_to_the_url():
    renderer = CitationRenderer("default", SOURCES)
    renderer.render("a [1] b [2]")
    assert [a["url_citation"]["title"] for a in renderer.annotations] == ["Sky", "https://grass.example/(green)"]


@pytest.mark.parametrize("mode", ["default", "markdown", "clean", "footnotes"])
def test_out_of_range_markers_are_untouched_and_not_annotated(mode):
    renderer = CitationRenderer(mode, SOURCES)
    text = "zero [0], four [4], big [999], long [1234]."
    assert renderer.render(text) == text
    assert renderer.annotations == []


@pytest.mark.parametrize("mode", ["default", "markdown", "clean", "footnotes"])
def test_existing_links_code_and_reference_definitions_are_not_markers(mode):
    text = "See [1](https://x.example) and `a[1]` and\n```py\nx = y[2]\n```\n[3]: https://ref.example\n"
    renderer = CitationRenderer(mode, SOURCES)
    assert stream(renderer, list(text)) == text
    assert renderer.annotations == []


def test_an_existing_link_split_at_the_bracket_is_not_relinked():
    renderer = CitationRenderer("markdown", SOURCES)
    assert renderer.feed("see [1]") == "see "
    assert renderer.feed("(https://x.example) ok") == "[1](https://x.example) ok"
    assert renderer.flush() == ""
    assert renderer.annotations == []


def test_partial_markers_are_held_until_the_next_chunk_decides():
    renderer = CitationRenderer("markdown", SOURCES)
    assert renderer.feed("blue [") == "blue "
    assert renderer.feed("1") == ""
    assert renderer.feed("]") == ""
    assert renderer.feed(".") == "[1](https://sky.example/blue)."
    assert renderer.feed(" [12") == " "
    assert renderer.feed("34]") == "[1234]"
    assert renderer.flush() == ""


def test_flush_releases_a_trailing_marker():
    renderer = CitationRenderer("clean", SOURCES)
    assert renderer.feed("The end [3]") == "The end"
    assert renderer.flush() == ""
    assert spans(renderer, "The end") == [("The end", "https://water.example/")]


def test_sources_arriving_while_a_marker_is_held_are_used():
    renderer = CitationRenderer("markdown")
    assert renderer.feed("Sky [1") == "Sky "
    renderer.set_sources(SOURCES)
    content = "Sky " + renderer.feed("].") + renderer.flush()
    assert content == "Sky [1](https://sky.example/blue)."
    assert spans(renderer, content) == [("[1](https://sky.example/blue)", "https://sky.example/blue")]


def test_literal_markers_are_annotated_once_sources_arrive():
    renderer = CitationRenderer("default")
    content = renderer.render("Sky [1].")
    assert renderer.annotations == []
    renderer.set_sources(SOURCES)
    assert spans(renderer, content) == [("[1]", "https://sky.example/blue")]


def test_rendered_links_keep_the_source_they_were_rendered_with():
    renderer = CitationRenderer("markdown", SOURCES)
    content = renderer.render("Sky [1].")
    renderer.set_sources([Source(title="Other", url="https://other.example/")])
    assert spans(renderer, content) == [("[1](https://sky.example/blue)", "https://sky.example/blue")]


@pytest.mark.parametrize("mode", ["default", "markdown"])
def test_indices_count_code_points_past_non_bmp_text(mode):
    renderer = CitationRenderer(mode, SOURCES)
    content = renderer.render("🌍🌊 Earth 𝔸 [1] and 👍🏽 [2]")
    first, second = (a["url_citation"] for a in renderer.annotations)
    # 11 code points precede "[1]" (a UTF-16 client would count 14: three astral characters).
    assert first["start_index"] == 11
    assert content[first["start_index"] : first["end_index"]].startswith("[1]")
    assert content[second["start_index"] : second["end_index"]].startswith("[2]")


def test_clean_indices_count_code_points_past_non_bmp_text():
    renderer = CitationRenderer("clean", SOURCES)
    content = renderer.render("Hi. 🌍 is home 👍🏽 [1].")
    assert content == "Hi. 🌍 is home 👍🏽."
    assert spans(renderer, content) == [("🌍 is home 👍🏽", "https://sky.example/blue")]
    assert renderer.annotations[0]["url_citation"]["start_index"] == 4


def test_annotations_fit_the_openai_chat_completion_schema():
    renderer = CitationRenderer("markdown", SOURCES)
    content = renderer.render(TEXT)
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": renderer.annotations}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "sonar", "choices": [choice]}
    validate(body, "CreateChatCompletionResponse")


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="citation mode"):
        CitationRenderer("endnotes")


# ---- chunking invariance ----------------------------------------------------------------------

# Characters that exercise every rule: markers and their digits, links, code, sentence ends, spaces, astral emoji.
ALPHABET = st.sampled_from(list("[]()`0123 .!?:\nab") + ["[1]", "[2]", "[4]", "```", "😀", "(http://x)"])
TEXTS = st.lists(ALPHABET, max_size=40).map("".join)


@st.composite
def chunkings(draw):
    text = draw(TEXTS)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(case=chunkings(), mode=st.sampled_from(["default", "markdown", "clean", "footnotes"]))
def test_any_chunking_gives_the_same_output_and_annotations(case, mode):
    text, pieces = case
    whole = CitationRenderer(mode, SOURCES[:2])
    expected = whole.render(text)
    chunked = CitationRenderer(mode, SOURCES[:2])
    assert stream(chunked, pieces) == expected
    assert chunked.annotations == whole.annotations


@settings(max_examples=200, deadline=None)
@given(text=TEXTS, mode=st.sampled_from(["default", "markdown"]))
def test_marker_spans_slice_the_content_to_the_marker(text, mode):
    renderer = CitationRenderer(mode, SOURCES[:2])
    content = stream(renderer, list(text))
    for annotation in renderer.annotations:
        citation = annotation["url_citation"]
        cited = content[citation["start_index"] : citation["end_index"]]
        assert cited.startswith("[") and cited.split("]")[0][1:].isdigit()
        assert mode == "default" or cited.endswith(f"]({citation['url'].replace('(', '%28').replace(')', '%29')})")


@settings(max_examples=200, deadline=None)
@given(text=TEXTS)
def test_default_mode_never_changes_the_text(text):
    assert stream(CitationRenderer("default", SOURCES), list(text)) == text


# ---- default mode's scan (the text is never rewritten) against the general path ---------------------

RICH_ALPHABET = st.sampled_from(
    list("[]()`0123 .!?:\nab\t") + ["[1]", "[2]", "[3]", "[12", "[999]", "```", "``", "\n  \n", "\n[1]: ", "😀", "(u)"]
)


@st.composite
def rich_chunkings(draw):
    text = draw(st.lists(RICH_ALPHABET, max_size=60).map("".join))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=10)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def general(renderer):
    renderer._fast = False
    return renderer


@settings(max_examples=500, deadline=None)
@given(case=rich_chunkings(), count=st.integers(0, 3))
def test_default_scan_matches_the_general_path(case, count):
    text, pieces = case
    fast, slow = CitationRenderer("default", SOURCES[:count]), general(CitationRenderer("default", SOURCES[:count]))
    assert [fast.feed(p) for p in pieces] + [fast.flush()] == [slow.feed(p) for p in pieces] + [slow.flush()]
    assert fast.annotations == slow.annotations
    assert (fast._fence, fast._inline, fast._line_blank, fast._length) == (
        slow._fence,
        slow._inline,
        slow._line_blank,
        slow._length,
    )


@pytest.mark.parametrize("text", [TEXT, "See [1](https://x.example) and `a[1]` and\n```py\nx = y[2]\n```\n[3]: r\n"])
def test_default_scan_matches_the_general_path_on_the_examples(text):
    for pieces in ([text], list(text)):
        fast, slow = CitationRenderer("default", SOURCES), general(CitationRenderer("default", SOURCES))
        assert stream(fast, pieces) == stream(slow, pieces) == text
        assert fast.annotations == slow.annotations


def test_default_mode_takes_the_scan():
    renderer = CitationRenderer("default", SOURCES)
    renderer._emit = lambda out, text: pytest.fail("the general path ran")  # type: ignore[method-assign]
    assert stream(renderer, [TEXT[:20], TEXT[20:]]) == TEXT
    assert len(renderer.annotations) == 4


def test_cited_from_reads_only_new_markers_within_what_was_sent():
    renderer = CitationRenderer("default", SOURCES)
    first = renderer.feed("The sky is blue [1]. Grass is green[1][2]! ")
    index, sources = renderer.cited_from(0, len(first))
    assert [s.title for s in sources] == ["Sky", "Sky", ""] and index == 3
    rest = renderer.feed("Oceans are large [3].\nSee [4] too") + renderer.flush()
    total = len(first) + len(rest)
    assert renderer.cited_from(index, len(first)) == (3, [])  # nothing new within the first part
    index, sources = renderer.cited_from(index, total)
    assert [s.title for s in sources] == ["Water"] and index == 5  # [4] has no source: passed over
