"""Turn decoded Perplexity frames, in any of the three answer formats, into one append-only event stream.

Perplexity sends the answer as a cumulative `text` step list, as `markdown_block` chunks placed by
index, or as JSON Patch `diff_block`s (also inside `workflow_root`), sometimes mixed in one stream. The
assembler keeps one document per `(intended_usage, field)`, recomputes the best answer candidate after every
frame and hands out only the text that extends what was already handed out, so a consumer never has to take
text back.
"""

from __future__ import annotations

from typing import Any

from . import extract
from .jsonpatch import JsonPatchError, apply_patch
from .types import (
    AnswerDelta,
    AskEvent,
    ClarifyingQuestions,
    Completed,
    Failed,
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

__all__ = ["AnswerAssembler"]

_MARKDOWN_USAGES = ("ask_text", "ask_text_0_markdown")  # read one of them, never both (AK)
_REPORT_USAGES = ("unified_assets", "workflow_root", "answer_assets_preview")
_CLARIFYING = "RESEARCH_CLARIFYING_QUESTIONS"
_KNOWN_STATUSES = frozenset({"PENDING", "COMPLETED", "FAILED"})
# Which block usages (and "text", the step list) each derived value depends on.
_SOURCE_USAGES = frozenset({"web_results", "sources_answer_mode", "workflow_root", "pro_search_steps", "text"})
_MEDIA_USAGES = frozenset({"answer_media_items", "media_items"})
_REASONING_USAGES = frozenset({"plan", "pro_search_steps", "workflow_root", "text"})


class AnswerAssembler:
    """Feed frames in order with `feed()`; each call returns the events that frame produced."""

    def __init__(self) -> None:
        self._docs: dict[tuple[str, str], Any] = {}
        self._steps: list[dict[str, Any]] = []
        self._last_text: Any = None
        self._text_answer: str | None = None
        self._text_sources: Any = None
        self._step_sources: dict[str, Source] = {}  # parsed: raw results would be kept per stream
        self._block_answer = False
        self._parts: list[str] = []  # the answer handed out, in pieces (joined on demand)
        self._reasoning: list[str] = []
        self._reasoning_keys: set[str] = set()
        self._workflow_thinking: dict[str, int] = {}
        self._clarified: set[str] = set()
        self.sources: tuple[Source, ...] = ()
        self.media: tuple[MediaItem, ...] = ()
        self.thread: ThreadIds | None = None
        # The model answering, as Perplexity reports it (`display_model`; the `user_selected_model` echo only
        # until a frame names the former), and its last `mode` echo.
        self.model: str | None = None
        self.mode: str | None = None
        self._displayed = False
        self.research = False
        self.title: str | None = None
        self.related_questions: tuple[str, ...] = ()
        self.clarifications: list[ClarifyingQuestions] = []
        self.completed: Completed | None = None
        self.failure: Failed | None = None
        self.bad_patches = 0
        self._changed: set[str] = set()
        self._envelope_ids: tuple[Any, ...] = ()
        self._sources_cache: tuple[Any, int, tuple[Source, ...]] | None = None
        self._plan_snapshot = False
        # (usage, its chunk list, chunks handed out) while the answer follows that list append-only
        self._tracked: tuple[str, list[Any], int] | None = None

    @property
    def answer(self) -> str:
        """The answer text handed out so far."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def reasoning(self) -> str:
        """The reasoning text handed out so far."""
        return "".join(self._reasoning)

    @property
    def done(self) -> bool:
        """True once the run completed or failed; later frames are ignored."""
        return self.completed is not None or self.failure is not None

    def feed(self, frame: dict[str, Any]) -> list[AskEvent]:
        """Apply one frame and return the events it produced, in a stable order."""
        if self.done:
            return []
        if self._tracked is not None and self._fast:
            events = self._feed_append(frame)
            if events is not None:
                return events
        events = []
        changed = self._changed = set()
        self._read_envelope(frame, events)
        for block in frame.get("blocks") or ():
            if isinstance(block, dict):
                self._apply_block(block)
        status = frame.get("status")
        if status not in _KNOWN_STATUSES:
            status = str(status or "").upper()
        terminal = status == "COMPLETED"
        text = frame.get("text")
        if text is not None:
            self._read_text(text, force=terminal)
        # Re-derive only what this frame touched: most frames carry just an answer chunk.
        if not changed.isdisjoint(_SOURCE_USAGES):
            self._update_sources(events)
        if not changed.isdisjoint(_MEDIA_USAGES) or "media_items" in frame:
            self._update_media(frame, events)
        if not changed.isdisjoint(_REASONING_USAGES):
            self._update_reasoning(events)
        if self._plan_snapshot:
            # A plain pro_search_steps block lists only new steps and is fully read above; keeping it would
            # hold a copy of every search result for the rest of the stream.
            self._docs.pop(("pro_search_steps", "plan_block"), None)
            self._plan_snapshot = False
        if status == "FAILED" or frame.get("error_code"):
            self.failure = Failed(_failure_message(frame), _code(frame))
            events.append(self.failure)
            return events
        self._update_answer(events, terminal)
        if terminal:
            self._complete(frame, events)
        return events

    # The general path re-checks everything a frame may carry; most frames of a streamed answer are one
    # markdown chunk appended to the list already followed. Tests run both paths over the same frames.
    _fast = True

    def _feed_append(self, frame: dict[str, Any]) -> list[AskEvent] | None:
        """The usual mid-answer frame, applied without the general checks; None (nothing changed) otherwise.

        It takes a frame that is PENDING, has no step-list text, error, media or research mode, repeats
        the known thread ids and model, and whose blocks only append markdown chunks to the followed list.
        """
        if frame.get("status") != "PENDING" or self.research:
            return None
        if "text" in frame or "media_items" in frame or frame.get("error_code"):
            return None
        model = self._reported_model(frame)
        if model and model != self.model:
            return None
        echo = frame.get("mode")
        if echo and echo != self.mode:
            return None
        mode = frame.get("search_mode")
        if mode and str(mode).upper() == "RESEARCH":
            return None
        backend = frame.get("backend_uuid")
        if isinstance(backend, str) and backend:
            ids = (backend, frame.get("context_uuid"), frame.get("read_write_token"), frame.get("thread_url_slug"))
            if ids != self._envelope_ids:
                return None
        blocks = frame.get("blocks")
        if not isinstance(blocks, list) or not blocks:
            return None
        # Every feed ends in _update_answer, which keeps `followed` the list stored for `usage` (or untracks).
        usage, followed, _ = self._tracked  # type: ignore[misc]
        docs = self._docs
        appended: list[tuple[dict[str, Any], list[Any]]] = []
        for block in blocks:
            if not isinstance(block, dict) or len(block) != 2:
                return None
            name = block.get("intended_usage")
            if name == "ask_text_0_markdown" and ("ask_text", "markdown_block") in docs:
                continue  # the parallel copy, ignored as the general path does
            value = block.get("markdown_block")
            if name != usage or not isinstance(value, dict):
                return None
            chunks = value.get("chunks")
            if not isinstance(chunks, list) or value.get("chunk_starting_offset") != len(followed) or appended:
                return None
            appended.append((value, chunks))
        events: list[AskEvent] = []
        if not appended:
            return events
        value, chunks = appended[0]
        followed.extend(chunks)
        docs[(usage, "markdown_block")] = {**value, "chunks": followed}
        if value.get("progress") == "DONE":
            self._update_answer(events, False)  # the general rules for a finished block
            return events
        self._tracked = (usage, followed, len(followed))
        try:
            delta = "".join(chunks)
        except TypeError:  # a non-string chunk: skipped, as markdown_text() does
            delta = "".join(c for c in chunks if isinstance(c, str))
        if delta:
            self._parts.append(delta)
            events.append(AnswerDelta(delta))
        return events

    # ---- envelope -------------------------------------------------------------------------

    def _reported_model(self, frame: dict[str, Any]) -> str | None:
        """The model this frame says is answering: `display_model` (every frame carries it), else the
        `user_selected_model` echo (the terminal frame's), which never overrides a `display_model` seen."""
        model = frame.get("display_model")
        if isinstance(model, str) and model:
            return model
        model = None if self._displayed else frame.get("user_selected_model")
        return model if isinstance(model, str) and model else None

    def _read_envelope(self, frame: dict[str, Any], events: list[AskEvent]) -> None:
        model = self._reported_model(frame)
        if model is not None:
            self._displayed = self._displayed or bool(frame.get("display_model"))
            if model != self.model:
                self.model = model
                events.append(ModelUpdate(model))
        echo = frame.get("mode")
        if isinstance(echo, str) and echo:
            self.mode = echo
        mode = frame.get("search_mode")
        if mode and str(mode).upper() == "RESEARCH":
            self.research = True
        backend = frame.get("backend_uuid")
        if not isinstance(backend, str) or not backend:
            return
        # Every frame repeats the ids; build a ThreadIds only when one of them changed.
        seen = (backend, frame.get("context_uuid"), frame.get("read_write_token"), frame.get("thread_url_slug"))
        if seen == self._envelope_ids:
            return
        self._envelope_ids = seen
        old = self.thread
        thread = ThreadIds(
            backend_uuid=backend,
            context_uuid=frame.get("context_uuid") or (old.context_uuid if old else None),
            read_write_token=frame.get("read_write_token") or (old.read_write_token if old else None),
            thread_url_slug=frame.get("thread_url_slug") or (old.thread_url_slug if old else None),
        )
        if thread != old:
            self.thread = thread
            events.append(ThreadUpdate(thread))

    # ---- blocks ---------------------------------------------------------------------------

    def _apply_block(self, block: dict[str, Any]) -> None:
        usage = block.get("intended_usage")
        if not isinstance(usage, str):
            return
        if usage == "ask_text_0_markdown" and ("ask_text", "markdown_block") in self._docs:
            return  # the parallel copy of ask_text; only read when ask_text is missing (AK)
        diff = block.get("diff_block")
        if isinstance(diff, dict):
            self._apply_diff(usage, diff)
            return
        for key, value in block.items():
            if key.endswith("_block") and isinstance(value, dict):
                self._apply_snapshot(usage, key, value)

    def _apply_diff(self, usage: str, diff: dict[str, Any]) -> None:
        field = diff.get("field")
        if not isinstance(field, str):
            return
        doc = self._docs.get((usage, field), {})
        if usage in _SOURCE_USAGES:
            self._sources_cache = None  # patches edit source lists in place, where identity proves nothing
        for op in diff.get("patches") or ():
            if field == "markdown_block" and not _appends_chunk(doc, op):
                self._untrack(usage)  # anything but an append may change text already handed out
            try:
                doc = apply_patch(doc, [op])
            except (JsonPatchError, TypeError, IndexError, KeyError):
                self.bad_patches += 1  # keep going: one bad op must not lose the answer
        self._docs[(usage, field)] = doc
        self._note_block(usage, field)

    def _apply_snapshot(self, usage: str, field: str, value: dict[str, Any]) -> None:
        if field == "markdown_block":
            # Chunks are placed by index: chunks[:offset] + new; offset 0 repaints.
            old = self._docs.get((usage, field)) or {}
            kept = old.get("chunks") if isinstance(old.get("chunks"), list) else []
            chunks = value.get("chunks")
            if isinstance(chunks, list):
                offset = value.get("chunk_starting_offset")
                offset = offset if isinstance(offset, int) and offset >= 0 else 0
                if offset == len(kept):
                    kept.extend(chunks)  # the usual delta: append in place, so the tracked text stays valid
                else:
                    kept = kept[:offset] + chunks  # a repaint: a new list, so the fast path lets go of it
            value = {**value, "chunks": kept}
        self._docs[(usage, field)] = value
        self._plan_snapshot = self._plan_snapshot or usage == "pro_search_steps"
        self._note_block(usage, field)

    def _note_block(self, usage: str, field: str) -> None:
        self._changed.add(usage)
        if field == "markdown_block" and usage in _MARKDOWN_USAGES or usage == "workflow_root":
            self._block_answer = True

    # ---- text step list -------------------------------------------------------------------

    def _read_text(self, text: Any, *, force: bool) -> None:
        if text is None or text is self._last_text:
            return
        # Parsing the cumulative step list on every frame is what made the seed slow; skip it once
        # blocks carry the answer, unless it can hold something only it carries.
        # At the end it is read for what blocks may lack (final citation order, a plain answer), but not
        # when blocks already carry both the answer and the sources.
        covered = self._block_answer and ("web_results", "web_result_block") in self._docs
        wanted = (force and not covered) or not self._block_answer or self.research
        if not wanted and not (isinstance(text, str) and _CLARIFYING in text):
            return
        if isinstance(text, str) and text == self._last_text:
            return
        self._last_text = text
        self._changed.add("text")
        decoded = extract.decode_text(text)
        if isinstance(decoded, list):
            self._steps = decoded
            self._text_answer, self._text_sources = extract.final_answer_from_steps(decoded)
            for step in decoded:
                self._collect_step_sources(step)
        elif isinstance(decoded, dict):
            answer = decoded.get("answer")
            self._text_answer = answer if isinstance(answer, str) else None
            self._text_sources = decoded.get("web_results")
        elif isinstance(decoded, str):
            self._text_answer = decoded

    def _collect_step_sources(self, step: dict[str, Any]) -> None:
        if step.get("step_type") != "SEARCH_RESULTS":
            return
        content = step.get("content") or step.get("web_results_content") or {}
        for item in content.get("web_results") or () if isinstance(content, dict) else ():
            if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"] not in self._step_sources:
                source = extract.parse_source(item)
                if source is not None:
                    self._step_sources[source.url] = source

    # ---- derived state --------------------------------------------------------------------

    def _plan_steps(self) -> list[dict[str, Any]]:
        steps = list(self._steps)
        doc = self._docs.get(("pro_search_steps", "plan_block"))
        if isinstance(doc, dict) and isinstance(doc.get("steps"), list):
            steps.extend(s for s in doc["steps"] if isinstance(s, dict))
        return steps

    def _update_sources(self, events: list[AskEvent]) -> None:
        for step in self._plan_steps():
            self._collect_step_sources(step)
        candidates = (
            (self._docs.get(("web_results", "web_result_block")) or {}).get("web_results"),
            self._text_sources,
            (self._docs.get(("sources_answer_mode", "sources_mode_block")) or {}).get("web_results"),
            (self._docs.get(("sources_answer_mode", "sources_mode_block")) or {}).get("rows"),
            extract.workflow_sources(self._docs.get(("workflow_root", "workflow_block")) or {}),
        )
        found = next((parsed for parsed in map(self._parse_sources, candidates) if parsed), None)
        sources = found or tuple(self._step_sources.values())
        if sources and sources != self.sources:
            self.sources = sources
            events.append(SourcesUpdate(sources))

    def _parse_sources(self, raw: Any) -> tuple[Source, ...]:
        # Frames that touch only plan steps leave the web_results list object as it was: reuse its parse.
        cached = self._sources_cache
        if cached is not None and cached[0] is raw and cached[1] == (len(raw) if isinstance(raw, list) else -1):
            return cached[2]
        sources = extract.parse_sources(raw)
        if isinstance(raw, list):
            self._sources_cache = (raw, len(raw), sources)
        return sources

    def _update_media(self, frame: dict[str, Any], events: list[AskEvent]) -> None:
        raw = frame.get("media_items")
        for (usage, field), doc in self._docs.items():
            if not isinstance(doc, dict):
                continue
            if field == "inline_entity_block" and usage in ("answer_media_items", "media_items"):
                raw = (doc.get("media_block") or {}).get("media_items") or raw
            elif field == "media_block":
                raw = doc.get("media_items") or raw
        media = extract.parse_media(raw)
        if media and media != self.media:
            self.media = media
            events.append(MediaUpdate(media))

    def _update_reasoning(self, events: list[AskEvent]) -> None:
        lines: list[str] = []
        plan = self._docs.get(("plan", "plan_block"))
        for goal in (plan or {}).get("goals") or () if isinstance(plan, dict) else ():
            if isinstance(goal, dict) and goal.get("description"):
                self._reason(f"g:{goal.get('id')}", str(goal["description"]), lines)
        for step in self._plan_steps():
            for key, line in extract.step_reasoning(step):
                self._reason(key, line, lines)
            clarifying = extract.clarifying_from_step(step)
            key = str((step.get("content") or {}).get("uuid") or step.get("uuid") or len(self._clarified))
            if clarifying is not None and key not in self._clarified:
                self._clarified.add(key)
                self.clarifications.append(clarifying)
                events.append(clarifying)
        self._workflow_reasoning(lines)
        if lines:
            text = "".join(lines)
            self._reasoning.append(text)
            events.append(ReasoningDelta(text))

    def _reason(self, key: str, line: str, lines: list[str]) -> None:
        if key not in self._reasoning_keys:
            self._reasoning_keys.add(key)
            lines.append(line.rstrip() + "\n")

    def _workflow_reasoning(self, lines: list[str]) -> None:
        doc = self._docs.get(("workflow_root", "workflow_block"))
        if not isinstance(doc, dict):
            return
        for index, step in enumerate(doc.get("steps") or ()):
            if isinstance(step, dict) and step.get("status") == "WORKFLOW_COMPLETED" and step.get("title"):
                self._reason(f"w:{step.get('id', index)}", str(step["title"]), lines)
        for index, item in enumerate(extract.workflow_items(doc)):
            if item.get("type") != "WORKFLOW_ITEM_TEXT":
                continue
            variant, text = extract.text_payload(item)
            key = str(item.get("id", index))
            sent = self._workflow_thinking.get(key, 0)
            if variant != "answer" and len(text) > sent:
                self._workflow_thinking[key] = len(text)
                lines.append(text[sent:] + ("\n" if not text.endswith("\n") else ""))

    # ---- answer ---------------------------------------------------------------------------

    def _candidate(self, terminal: bool) -> str | None:
        if self.research:
            docs = [doc for (usage, _), doc in self._docs.items() if usage in _REPORT_USAGES]
            report = extract.research_report(docs)
            if report or not terminal:
                return report
        for usage in _MARKDOWN_USAGES:
            doc = self._docs.get((usage, "markdown_block"))
            if isinstance(doc, dict):
                text = extract.markdown_text(doc)
                if text:
                    return text
        workflow = self._docs.get(("workflow_root", "workflow_block"))
        if isinstance(workflow, dict):
            text = extract.workflow_answer(workflow)
            if text:
                return text
        return self._text_answer or None

    def _update_answer(self, events: list[AskEvent], terminal: bool) -> None:
        delta = None if terminal or self.research else self._appended()
        if delta is None:
            # The general case: the best candidate as a whole; only text that extends what was handed out
            # goes out, a revision waits (or is reported at the end).
            candidate = self._candidate(terminal)
            emitted = self.answer
            if candidate and len(candidate) > len(emitted) and candidate.startswith(emitted):
                delta = candidate[len(emitted) :]
            self._track(candidate, emitted + (delta or ""))
        if delta:
            self._parts.append(delta)
            events.append(AnswerDelta(delta))

    def _markdown_source(self) -> tuple[str, dict[str, Any]] | None:
        for usage in _MARKDOWN_USAGES:
            doc = self._docs.get((usage, "markdown_block"))
            if isinstance(doc, dict):
                return usage, doc
        return None

    def _appended(self) -> str | None:
        """The fast path: the answer is a markdown chunk list that only grew; None when that is not so."""
        source = self._markdown_source()
        tracked = self._tracked
        if source is None or tracked is None or tracked[0] != source[0]:
            return None
        chunks = source[1].get("chunks")
        if chunks is not tracked[1] or tracked[2] > len(chunks) or source[1].get("progress") == "DONE":
            return None
        self._tracked = (tracked[0], chunks, len(chunks))
        new = chunks[tracked[2] :]
        try:
            return "".join(new)
        except TypeError:  # a non-string chunk: skipped, as markdown_text() does
            return "".join(c for c in new if isinstance(c, str))

    def _track(self, candidate: str | None, emitted: str) -> None:
        """Follow a markdown chunk list on the fast path once everything it holds has been handed out."""
        source = self._markdown_source()
        self._tracked = None
        if source is None or source[1].get("progress") == "DONE":
            return
        chunks = source[1].get("chunks")
        if isinstance(chunks, list) and candidate == emitted == extract.markdown_text(source[1]):
            self._tracked = (source[0], chunks, len(chunks))

    def _untrack(self, usage: str) -> None:
        if self._tracked is not None and self._tracked[0] == usage:
            self._tracked = None

    def _complete(self, frame: dict[str, Any], events: list[AskEvent]) -> None:
        title = frame.get("thread_title")
        if isinstance(title, str) and title:
            self.title = title
            events.append(TitleUpdate(title))
        related = frame.get("related_queries")
        if not isinstance(related, list) or not related:
            items = frame.get("related_query_items") or ()
            related = [i.get("text") for i in items if isinstance(i, dict)]
        self.related_questions = tuple(q for q in related if isinstance(q, str) and q)
        if self.related_questions:
            events.append(RelatedQuestions(self.related_questions))
        answer = self.answer
        final = self._candidate(True) or answer
        self.completed = Completed(
            answer=answer,
            final_answer=final,
            revised=final != answer,
            reasoning=self.reasoning,
            sources=self.sources,
            media=self.media,
            related_questions=self.related_questions,
            title=self.title,
            thread=self.thread,
            model=self.model,
            mode=self.mode,
        )
        events.append(self.completed)


def _code(frame: dict[str, Any]) -> str | None:
    code = frame.get("error_code")
    return str(code) if code else None


def _failure_message(frame: dict[str, Any]) -> str:
    for key in ("error_message", "message", "error", "text"):
        value = frame.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if isinstance(value, str) and value.strip() and not value.lstrip().startswith(("[", "{")):
            return value.strip()[:500]
    code = _code(frame)
    suffix = f" ({code})" if code else ""
    return f"Perplexity reported the answer as failed{suffix}"


def _appends_chunk(doc: Any, op: Any) -> bool:
    """True for `add /chunks/<len>` (or `/chunks/-`) on a markdown document: a pure append."""
    if not isinstance(op, dict) or op.get("op") != "add" or not isinstance(doc, dict):
        return False
    path = op.get("path")
    chunks = doc.get("chunks")
    return isinstance(chunks, list) and path in (f"/chunks/{len(chunks)}", "/chunks/-")
