"""One answer turn: Perplexity events in; rendered content, reasoning and sources out, with stop and length limits."""

from __future__ import annotations

import math
from dataclasses import dataclass

from perplexity.types import (
    AnswerDelta,
    AskEvent,
    Completed,
    MediaItem,
    MediaUpdate,
    ModelUpdate,
    ReasoningDelta,
    RelatedQuestions,
    Source,
    SourcesUpdate,
    ThreadIds,
    ThreadUpdate,
    TitleUpdate,
)

from .citations import CitationRenderer, footnotes
from .sonar import SourceFilter
from .stop import StopScanner

__all__ = ["ChatTurn", "Piece", "TurnLimits", "count_tokens"]

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English; the README says so


def count_tokens(text: str) -> int:
    """Estimated tokens: one per four characters, rounded up (Perplexity reports no counts)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class TurnLimits:
    """What the request asked for the output."""

    citation_mode: str = "default"
    stops: tuple[str, ...] = ()
    max_tokens: int | None = None
    # Sources the request lets through (Sonar's domain and date filters); None keeps every source.
    sources: SourceFilter | None = None


# Not frozen: one is built per streamed chunk, and a frozen __init__ costs about twice as much.
@dataclass(slots=True)
class Piece:
    """One output step: kind is content, reasoning, sources or finish."""

    kind: str
    text: str = ""


class ChatTurn:
    """Feed AskEvents; get Pieces. Content is append-only, already rendered and limited."""

    def __init__(self, limits: TurnLimits) -> None:
        self.limits = limits
        self._renderer = CitationRenderer(limits.citation_mode)
        self._stopper = StopScanner(limits.stops)
        self._budget = limits.max_tokens * CHARS_PER_TOKEN if limits.max_tokens else None
        self._parts: list[str] = []  # content pieces; joined on demand (+= would copy the answer per chunk)
        self._length = 0
        self.reasoning = ""
        self.sources: tuple[Source, ...] = ()
        self.media: tuple[MediaItem, ...] = ()
        self.related: tuple[str, ...] = ()
        self.title: str | None = None
        self.thread: ThreadIds | None = None
        self.model: str | None = None  # the upstream model Perplexity says answers (from its first frame on)
        self.completed: Completed | None = None
        self.finish_reason: str | None = None
        self._numbers: dict[int, int | None] | None = None  # marker renumbering after filtering, see set_sources
        self._answer_end: int | None = None  # footnotes mode: where the answer ends and its list of sources starts

    @property
    def content(self) -> str:
        """The content handed out so far."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def answer(self) -> str:
        """The content without the list of sources footnotes mode appended (what the agent readers read)."""
        content = self.content
        return content if self._answer_end is None else content[: self._answer_end]

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended the answer, if one did."""
        return self._stopper.matched if self._stopper.stopped else None

    @property
    def annotations(self) -> list[dict[str, object]]:
        """url_citation annotations inside the content handed out."""
        size = self._length
        return [a for a in self._renderer.annotations if a["url_citation"]["end_index"] <= size]  # type: ignore[index]

    def cited_from(self, start: int) -> tuple[int, list[Source]]:
        """The sources the content handed out cites from its `start`-th marker on, and the next start (see
        `CitationRenderer.cited_from`): what a stream adds to the citations it sent, without rereading them all."""
        index, sources = self._renderer.cited_from(start, self._length)
        return index, sources  # type: ignore[return-value]

    def feed(self, event: AskEvent) -> list[Piece]:
        """Apply one event; returns what to send now."""
        if self.finish_reason is not None:
            return []
        if isinstance(event, AnswerDelta):
            return self._content(self._renderer.feed(event.text))
        if isinstance(event, ReasoningDelta):
            self.reasoning += event.text
            return [Piece("reasoning", event.text)]
        if isinstance(event, SourcesUpdate):
            self.sources = self._filter(event.sources)
            self._renderer.set_sources(self.sources, self._numbers)
            return [Piece("sources")]
        if isinstance(event, ThreadUpdate):
            self.thread = event.thread
        elif isinstance(event, ModelUpdate):
            self.model = event.model
        elif isinstance(event, MediaUpdate):
            self.media = self._images(event.items)
        elif isinstance(event, RelatedQuestions):
            self.related = event.questions
        elif isinstance(event, TitleUpdate):
            self.title = event.title
        elif isinstance(event, Completed):
            return self._complete(event)
        return []

    def rerender(self, answer: str) -> None:
        """Start the content over from `answer` (non-streamed turns use Perplexity's final text)."""
        self._renderer = CitationRenderer(self.limits.citation_mode)
        self._renderer.set_sources(self.sources, self._numbers)
        self._stopper = StopScanner(self.limits.stops)
        self._parts, self._length, self.finish_reason, self._answer_end = [], 0, None, None
        self._content(self._renderer.feed(answer) + self._renderer.flush())
        self._finish_content()

    def _filter(self, sources: tuple[Source, ...]) -> tuple[Source, ...]:
        """The sources the request's filter keeps (attachments always: the client sent them), numbering the kept
        ones anew so the answer's `[n]` markers follow them."""
        chosen = self.limits.sources
        if chosen is None:
            return sources
        kept = tuple(s for s in sources if s.is_attachment or chosen.keep(s))
        if chosen.limit is not None:  # num_search_results: the first web sources (attachments always stay)
            web = [s for s in kept if not s.is_attachment][: chosen.limit]
            kept = tuple(s for s in kept if s.is_attachment or s in web)
        if len(kept) == len(sources) and self._numbers is None:
            return sources  # nothing dropped (yet): markers stay as they are, on the renderer's fast path
        self._numbers, position = {}, 0
        for number, source in enumerate(sources, 1):
            if position < len(kept) and kept[position] is source:
                position += 1
                self._numbers[number] = position
            else:
                self._numbers[number] = None
        return kept

    def _images(self, items: tuple[MediaItem, ...]) -> tuple[MediaItem, ...]:
        """The images the request's image filters keep (image_domain_filter, image_format_filter)."""
        chosen = self.limits.sources
        if chosen is None or not items:
            return items
        return tuple(item for item in items if item.medium != "image" or chosen.keep_image(item))

    def _complete(self, event: Completed) -> list[Piece]:
        self.completed = event
        self.thread = event.thread or self.thread
        self.model = event.model or self.model
        self.title = event.title or self.title
        self.related = event.related_questions or self.related
        self.media = self._images(event.media) or self.media
        pieces = self._content(self._renderer.flush())
        if self.finish_reason is None:
            pieces += self._finish_content()
        return pieces

    def _finish_content(self) -> list[Piece]:
        pieces = self._content(self._stopper.flush(), final=True)
        if self.finish_reason is None:
            self.finish_reason = "stop"
            pieces += self._footnotes()
            pieces.append(Piece("finish", "stop"))
        return pieces

    def _footnotes(self) -> list[Piece]:
        """Footnotes mode, once the answer is over: the list of the sources it cites, as the last content.

        It names the sources cited in the content handed out (after a stop sequence or a length cut too) and is
        not cut by max_tokens, though it counts in usage like all content. It is left out when it would hold one
        of the request's stop sequences: the content never holds one."""
        if self.limits.citation_mode != "footnotes" or self._answer_end is not None:
            return []
        answer = self.content
        self._answer_end = len(answer)
        text = footnotes(answer, self._renderer.cited(self._length))
        stops = self.limits.stops
        if not text or (stops and any(stop in answer[-len(stop) :] + text for stop in stops if stop)):
            return []
        self._parts.append(text)
        return [Piece("content", text)]

    def _content(self, text: str, *, final: bool = False) -> list[Piece]:
        if not text or self.finish_reason is not None:
            return []
        text = text if final else self._stopper.feed(text)
        pieces = []
        if self._budget is not None and self._length + len(text) > self._budget:
            text = text[: max(0, self._budget - self._length)]
            self.finish_reason = "length"
        elif self._stopper.stopped:
            self.finish_reason = "stop"
        if text:
            self._parts.append(text)
            self._length += len(text)
            pieces.append(Piece("content", text))
        if self.finish_reason is not None:
            pieces += self._footnotes()
            pieces.append(Piece("finish", self.finish_reason))
        return pieces
