"""Perplexity's `[n]` citation markers: render them per citation mode and report them as url_citation annotations."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

__all__ = ["FOOTNOTES_HEADING", "MODES", "CitationRenderer", "CitedSource", "footnotes"]

MODES = ("default", "markdown", "clean", "footnotes")
# Modes that leave the markers as Perplexity wrote them (footnotes only adds a list after the answer).
_KEEP_MARKERS = ("default", "footnotes")
FOOTNOTES_HEADING = "Sources:"

# A backtick run (code spans/fences switch marker detection off), or a marker. The one space before a marker
# is checked by hand: a leading optional group made the regex try every position.
_TOKEN = re.compile(r"(?P<ticks>`+)|\[(?P<number>\d{1,3})\]")
# What a chunk may end with that the next chunk can still change: a backtick run that may grow, a partial
# marker ("[", "[1", "[12", "[123"), or a whole marker whose next character (a "(" makes it a link) is unknown.
_TAIL = re.compile(r"(?:\[\d{0,3}\]?|`*)\Z")
# Clean mode also holds one space, which is dropped if a removed marker follows ("large [2]." -> "large.").
_CLEAN_TAIL = re.compile(r" ?(?:\[\d{0,3}\]?|`*)\Z")
_SENTENCE_END = ".!?"
_TAIL_CHARS = "[]`0123456789"  # a str: `last in _TAIL_CHARS` is one memchr, and "" (empty buffer) is in it


class CitedSource(Protocol):
    """What a renderer needs of a source (`perplexity.types.Source` fits; api/ does not import perplexity)."""

    @property
    def title(self) -> str: ...

    @property
    def url(self) -> str: ...


# Not frozen: one is built per marker, and a frozen __init__ costs about twice as much.
@dataclass(slots=True)
class _Mark:
    number: int
    start: int
    end: int
    # The source a rendered marker was resolved against; None for a marker left as literal text, which is
    # looked up again when annotations are read (its text does not depend on the source list).
    source: CitedSource | None


class CitationRenderer:
    """Rewrite an answer's `[n]` markers as it streams and collect url_citation annotations for it.

    Modes: `default` keeps markers, `markdown` turns `[n]` into `[n](url)`, `clean` removes them, `footnotes` keeps
    them as `default` does (its list of sources is `footnotes()`, appended by the turn once the answer is over). A
    marker whose `n` has no source is left as it is in every mode. Markers inside code spans and fenced code are not
    markers. Feeding a text in any chunking gives the same output and annotations as feeding it whole.
    """

    def __init__(self, mode: str = "default", sources: Sequence[CitedSource] = ()) -> None:
        if mode not in MODES:
            raise ValueError(f"citation mode must be one of {', '.join(MODES)}, not {mode!r}")
        self._mode = mode
        self._keeps = mode in _KEEP_MARKERS
        self._sources: tuple[CitedSource, ...] = tuple(sources)
        self._tail = _CLEAN_TAIL if mode == "clean" else _TAIL
        # The last characters a held tail can end with; "" is an empty buffer.
        self._tail_chars = _TAIL_CHARS + " " if mode == "clean" else _TAIL_CHARS
        self._held = ""
        self._length = 0  # code points emitted so far; annotation indices count these
        self._marks: list[_Mark] = []
        # Code context: the open fence's backtick count and the open inline span's backtick count (0 = none).
        self._fence = 0
        self._inline = 0
        self._line_blank = True
        # Clean mode: the sentence fragment a removed marker cites, as [start, end) of the output.
        self._fragment_start: int | None = None
        self._fragment_end = 0
        self._after_stop = False
        self._after_marker = False
        # The space before a dropped marker that another marker followed ("fact [3][2]" -> "fact [2]").
        self._carry = ""
        # Set when some sources were filtered out: original marker number -> its number among the kept sources,
        # None for a dropped source (its markers are removed in every mode).
        self._renumber: dict[int, int | None] | None = None

    def set_sources(self, sources: Sequence[CitedSource], numbers: dict[int, int | None] | None = None) -> None:
        """Replace the source list; later markers (and literal markers' annotations) use the new one.

        `numbers` renumbers later markers (see `_renumber`) when `sources` is a filtered list."""
        self._sources = tuple(sources)
        if numbers is not None:
            self._renumber = numbers
            # A removed marker must take its space along ("large [2]." -> "large."): hold a trailing space as clean
            # mode does, in every mode.
            self._tail, self._tail_chars = _CLEAN_TAIL, _TAIL_CHARS + " "

    def feed(self, text: str) -> str:
        """Take the next piece of answer text; return what can be emitted now."""
        buffer = self._held + text if self._held else text
        if buffer[-1:] not in self._tail_chars:
            # Nothing at the end can change with the next chunk (most chunks end in a letter or a space).
            self._held = ""
            return self._process(buffer, None) if buffer else ""
        # Only the last few characters (and a trailing backtick run) can be a held tail; searching the whole
        # buffer for a \Z-anchored pattern would try every position.
        ticks = len(buffer) - len(buffer.rstrip("`"))
        tail = self._tail.search(buffer, max(0, len(buffer) - ticks - 6))
        cut = tail.start() if tail else len(buffer)
        self._held = buffer[cut:]
        return self._process(buffer[:cut], self._held[:1] or None)

    def flush(self) -> str:
        """End of the answer: release and render anything held back."""
        text, self._held = self._held, ""
        return self._process(text, None)

    def render(self, text: str) -> str:
        """Render a whole text (use a fresh renderer: this is feed + flush)."""
        return self.feed(text) + self.flush()

    @property
    def annotations(self) -> list[dict[str, Any]]:
        """OpenAI chat `url_citation` annotations for every cited marker emitted so far, in order."""
        result = []
        for mark in self._marks:
            source = mark.source or self._lookup(mark.number)
            if source is not None:
                result.append(_annotation(mark.start, mark.end, source))
        return result

    def cited_from(self, start: int, size: int) -> tuple[int, list[CitedSource]]:
        """The sources cited by the markers from the `start`-th on that end within the first `size` characters
        emitted, and where to start next time: a stream reads only what is new (the `annotations` list is
        rebuilt whole on each read). A marker with no source yet is passed over."""
        found = []
        index = start
        for mark in self._marks[start:]:
            if mark.end > size:
                break
            index += 1
            source = mark.source or self._lookup(mark.number)
            if source is not None:
                found.append(source)
        return index, found

    def cited(self, size: int) -> list[tuple[int, CitedSource]]:
        """(number, source) for each marker number cited within the first `size` characters emitted, once each,
        by number: what footnotes mode lists. A marker with no source is not listed."""
        found: dict[int, CitedSource] = {}
        for mark in self._marks:
            if mark.end <= size and mark.number not in found:
                source = mark.source or self._lookup(mark.number)
                if source is not None:
                    found[mark.number] = source
        return sorted(found.items(), key=lambda item: item[0])

    # ---- scanning -------------------------------------------------------------------------------

    # Default mode never changes the text, so `_scan` only records marks and code/line state; tests compare it
    # with the general `_process` (set False on an instance) on every input they have.
    _fast = True

    def _process(self, text: str, lookahead: str | None) -> str:
        # `lookahead` is the character after `text` (None at the end of the answer).
        if self._fast and self._keeps and self._renumber is None:
            return self._scan(text, lookahead)
        if "[" not in text and "`" not in text and not self._carry:  # most chunks: nothing to rewrite
            out: list[str] = []
            self._emit(out, text)
            return text
        out = []
        position = 0
        for match in _TOKEN.finditer(text):
            start = match.start()
            space = ""
            carry, self._carry = self._carry, ""
            if match["number"] is not None and start - 1 >= position and text[start - 1] == " ":
                start, space = start - 1, " "
            elif match["number"] is not None and start == position:
                space, carry = carry, ""  # right after a dropped marker: its space goes to this one
            self._emit(out, carry + text[position:start])
            if match["ticks"]:
                self._backticks(out, match["ticks"])
            else:
                after = text[match.end()] if match.end() < len(text) else lookahead
                self._marker(out, match, space, after)
            position = match.end()
        if position < len(text):
            carry, self._carry = self._carry, ""
            self._emit(out, carry + text[position:])
        return "".join(out)

    def _scan(self, text: str, lookahead: str | None) -> str:
        """`_process` for default mode: the text comes back as it is; marks and state as `_emit` would set them."""
        base = self._length
        self._length = base + len(text)
        if "[" not in text and "`" not in text:
            if text:
                self._track_line(text, 0, len(text))
            return text
        position = 0
        # Without a newline in the chunk, text between tokens can only change a blank line's state.
        lines = "\n" in text
        for match in _TOKEN.finditer(text):
            start, end = match.span()
            if start > position and (lines or self._line_blank):
                self._track_line(text, position, start)
            ticks = match["ticks"]
            if ticks:
                self._code_run(len(ticks))
            else:
                after = text[end] if end < len(text) else lookahead
                if not (self._fence or self._inline or after == "(" or (after == ":" and self._line_blank)):
                    self._marks.append(_Mark(int(match["number"]), base + start, base + end, None))
            self._line_blank = False  # a backtick run or a marker is on the line now
            position = end
        if position < len(text):
            self._track_line(text, position, len(text))
        return text

    def _track_line(self, text: str, start: int, end: int) -> None:
        # Line state after text[start:end] (not empty): a newline ends an inline code span, and the line is
        # blank while it holds only whitespace. Takes bounds so `_scan` need not copy the text between tokens.
        newline = text.rfind("\n", start, end)
        if newline >= 0:
            self._inline = 0
            self._line_blank = newline + 1 == end or text[newline + 1 : end].isspace()
        elif self._line_blank and not text[start:end].isspace():
            self._line_blank = False

    def _backticks(self, out: list[str], run: str) -> None:
        self._code_run(len(run))
        self._emit(out, run)

    def _code_run(self, count: int) -> None:
        # A simplified CommonMark: a run of 3+ at the start of a line opens or closes a fence; other runs open
        # an inline span that the next run of the same length closes. An unclosed span ends at the newline.
        if self._fence:
            if count >= self._fence and self._line_blank:
                self._fence = 0
        elif self._inline:
            if count == self._inline:
                self._inline = 0
        elif count >= 3 and self._line_blank:
            self._fence = count
        else:
            self._inline = count

    def _marker(self, out: list[str], match: re.Match[str], space: str, after: str | None) -> None:
        number = int(match["number"])
        # "[1](url)" is already a link; "[1]: url" at a line start is a link reference definition.
        if self._fence or self._inline or after == "(" or (after == ":" and self._line_blank):
            self._emit(out, space + match[0])
            return
        label = match["number"]
        if self._renumber is not None and number in self._renumber:
            renumbered = self._renumber[number]
            if renumbered is None:  # its source was filtered out: the marker goes, in every mode
                if space and after is not None and after.isalnum():
                    self._emit(out, space)
                elif space and after == "[":
                    self._carry = space
                self._after_marker = True
                return
            number, label = renumbered, str(renumbered)
        source = self._lookup(number)
        if source is None or self._keeps:
            self._emit(out, space)
            self._emit_marker(out, f"[{label}]", number, None)
        elif self._mode == "markdown":
            self._emit(out, space)
            self._emit_marker(out, f"[{label}]({_link_target(source.url)})", number, source)
        else:
            self._remove_marker(out, space, number, source, after)

    def _emit_marker(self, out: list[str], text: str, number: int, source: CitedSource | None) -> None:
        start = self._length
        self._emit(out, text)
        self._marks.append(_Mark(number, start, self._length, source))

    def _remove_marker(self, out: list[str], space: str, number: int, source: CitedSource, after: str | None) -> None:
        # The cited span is the sentence fragment before the marker; adjacent markers ("[1][2]") share it.
        start = self._fragment_start if self._fragment_start is not None else self._length
        end = max(start, self._fragment_end) if self._fragment_start is not None else start
        self._marks.append(_Mark(number, start, end, source))
        # Keep the space only when a word follows directly ("foo [1]bar" -> "foo bar"); before punctuation,
        # whitespace or the end it would leave "large ." behind.
        if space and after is not None and after.isalnum():
            self._emit(out, space)
        self._after_marker = True

    def _lookup(self, number: int) -> CitedSource | None:
        if 1 <= number <= len(self._sources) and self._sources[number - 1].url:
            return self._sources[number - 1]
        return None

    # ---- output bookkeeping ---------------------------------------------------------------------

    def _emit(self, out: list[str], text: str) -> None:
        if not text:
            return
        if self._mode == "clean":
            self._track_fragment(text)
        self._track_line(text, 0, len(text))
        out.append(text)
        self._length += len(text)

    def _track_fragment(self, text: str) -> None:
        # A fragment starts at the first non-space character after a sentence end (".!?" then whitespace),
        # a newline or a removed marker; it ends after its last non-space character.
        position = self._length
        for char in text:
            if self._after_marker:
                self._fragment_start, self._after_stop, self._after_marker = None, False, False
            if char == "\n" or (self._after_stop and char.isspace()):
                self._fragment_start, self._after_stop = None, False
            elif not char.isspace():
                if self._fragment_start is None:
                    self._fragment_start = position
                self._fragment_end = position + 1
                self._after_stop = char in _SENTENCE_END
            position += 1


def footnotes(answer: str, cited: Sequence[tuple[int, CitedSource]]) -> str:
    """The text footnotes mode appends to `answer`: a blank line, `Sources:`, then `- [n] [title](url)` for each
    cited source (`CitationRenderer.cited`); empty when nothing is cited.

    A bullet list, not `1.`: Markdown renumbers an ordered list from its first item, and a marker's number must
    stay its entry's number when some numbers are never cited. An answer cut inside a code fence (a length
    limit) has the fence closed first, so the list is not shown as code."""
    if not cited:
        return ""
    fence = _open_fence(answer)
    if fence:
        lead = ("" if answer.endswith("\n") else "\n") + fence + "\n\n"
    else:
        lead = "\n" * max(0, 2 - (len(answer) - len(answer.rstrip("\n")))) if answer else ""
    lines = [f"- [{number}] [{_link_text(_label(source))}]({_link_target(source.url)})" for number, source in cited]
    return lead + FOOTNOTES_HEADING + "\n" + "\n".join(lines)


def _label(source: CitedSource) -> str:
    # Perplexity gives a source without a title its URL as title: the host reads better.
    title = " ".join(source.title.split())
    if title and title != source.url:
        return title
    return urlsplit(source.url).hostname or source.url


# What could end or take over a link's text: brackets, a backtick (a code span binds tighter than a link), an
# angle bracket (an autolink or HTML tag), and the backslash that escapes them.
_TEXT_UNSAFE = re.compile(r"([\\`\[\]<>])")
# What would end a link destination early or be read otherwise: whitespace, controls, parentheses, angle
# brackets, a backslash.
_URL_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f()<>\\]")
# A fenced code block's opening or closing line (CommonMark: up to three spaces, then 3+ backticks or tildes).
_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.MULTILINE)


def _link_text(text: str) -> str:
    return _TEXT_UNSAFE.sub(r"\\\1", text)


def _link_target(url: str) -> str:
    # Percent-encoded, a space or an unbalanced parenthesis can no longer end the Markdown link destination early.
    return _URL_UNSAFE.sub(lambda match: quote(match.group(), safe=""), url)


def _open_fence(text: str) -> str:
    """The fence (its backtick or tilde run) a Markdown text ends inside, or ""."""
    fence = ""
    for match in _FENCE_LINE.finditer(text):
        run, rest = match.groups()
        if not fence:
            if not (run[0] == "`" and "`" in rest):  # a backtick in the info string: not a fence
                fence = run
        elif run[0] == fence[0] and len(run) >= len(fence) and not rest.strip():
            fence = ""
    return fence


def _annotation(start: int, end: int, source: CitedSource) -> dict[str, Any]:
    citation = {"start_index": start, "end_index": end, "url": source.url, "title": source.title or source.url}
    return {"type": "url_citation", "url_citation": citation}
