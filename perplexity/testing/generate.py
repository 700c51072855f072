"""Turn a scripted Reply into the frames of one answer stream, in any of the five answer formats."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from .blocks import BlockSet
from .content import (
    clarifying_content,
    cover_note,
    default_answer,
    default_related,
    default_sources,
    normalize_media,
    normalize_source,
    reasoning_lines,
    search_terms,
)
from .envelope import AskContext, envelope, now_iso, terminal_keys, text_json
from .script import Reply
from .workflow import WorkflowBuilder

__all__ = ["build_frames", "split_chunks"]

# format -> (diff blocks, where the answer streams, `text` on intermediate frames, terminal `text`)
_FORMATS: dict[str, tuple[bool, str, bool, str | None]] = {
    "text": (False, "text", True, "json"),
    "markdown": (False, "ask_text", False, "json"),
    "diff": (True, "ask_text", False, "json"),
    "workflow": (True, "workflow", False, None),
    "plaintext": (False, "none", False, "plain"),
}
_REPORT_FILE = "research-report.md"


def build_frames(ctx: AskContext, reply: Reply) -> list[dict[str, Any]]:
    """Return every frame of the stream, ending with COMPLETED and the `{}` end_of_stream payload."""
    return _Stream(ctx, reply).run()


def split_chunks(text: str, size: int) -> list[str]:
    """Split `text` into pieces of `size` characters (none for an empty text)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


class _Stream:
    """Builds one stream frame by frame; each step method changes blocks, then emits a frame."""

    def __init__(self, ctx: AskContext, reply: Reply) -> None:
        self.ctx, self.reply = ctx, reply
        diff, self.channel, text_default, self.terminal_text = _FORMATS[reply.format]
        # The plain-string quirk never sends `text` before the terminal frame.
        explicit = reply.send_text if reply.format != "plaintext" else None
        self.send_text = text_default if explicit is None else explicit
        self.blocks = BlockSet(diff)
        self.workflow = WorkflowBuilder(self.blocks)
        self.steps: list[dict[str, Any]] = []
        self.chunks: list[str] = []
        self.frames: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.classified = self.answer_started = False
        self.answer_step: int | None = None
        sources = reply.sources if reply.sources is not None else default_sources()
        self.sources = [normalize_source(s) for s in sources]
        self.media = [normalize_media(m) for m in reply.media or []]
        body = reply.answer if reply.answer is not None else default_answer(ctx.query)
        self.report = body if reply.research else None
        self.answer = cover_note(ctx.title) if reply.research else body
        self.final_answer = self.answer if reply.revise_final is None else reply.revise_final
        self.related = reply.related if reply.related is not None else default_related(ctx.query)

    def run(self) -> list[dict[str, Any]]:
        self._echo()
        self._classify()
        if self.report is not None:
            self._load_skills()
        if self.reply.clarifying:
            self._clarify()
        if self.sources:
            self._search()
            self._results()
        if self.reply.reasoning:
            self._reason()
        if self.report is not None:
            self._stream_report()
        self._stream_answer()
        self.frames.append(self._completed())
        self.frames.append({})
        return self.frames

    # ---- frame assembly -------------------------------------------------------------------------

    def _envelope(self, *, classified: bool) -> dict[str, Any]:
        """The envelope of the next frame; `display_model` names the served model once the reply says so."""
        frame = envelope(self.ctx, classified=classified)
        served = self.reply.display_model
        if served is not None and len(self.frames) >= self.reply.display_model_from:
            frame["display_model"] = served
        return frame

    def _emit(self, **keys: Any) -> None:
        frame = self._envelope(classified=self.classified)
        frame.update(self.extra)
        if self.send_text:
            frame["text"] = text_json(self._steps_with_final(self.final_step("".join(self.chunks))))
        blocks = self.blocks.render()
        if blocks:  # blocks appear only on frames where something changed
            frame["blocks"] = blocks
        frame.update(keys)
        self.frames.append(frame)

    def _steps_with_final(self, final: dict[str, Any]) -> list[dict[str, Any]]:
        return [*self.steps, final] if self.answer_started else list(self.steps)

    def final_step(self, answer: str) -> dict[str, Any]:
        """Return the FINAL step, whose `answer` is itself a JSON string (protocol 3.4)."""
        inner = {
            "answer": answer,
            "web_results": self.sources,
            "chunks": list(self.chunks),
            "extra_web_results": [],
            "structured_answer": [
                {
                    "type": "markdown",
                    "text": answer,
                    "chunks": list(self.chunks),
                    "images": [],
                    "inline_token_annotations": [],
                }
            ],
        }
        content = {"goal_id": None, "answer": json.dumps(inner, separators=(",", ":"), ensure_ascii=False)}
        return {"step_type": "FINAL", "content": content, "uuid": ""}

    def _step(self, step_type: str, content: dict[str, Any], typed_key: str, step_id: str | None = None) -> None:
        """Add a step to `text` and, in typed form, to the `pro_search_steps` block."""
        sid = str(uuid.uuid4()) if step_id is None else step_id
        self.steps.append({"step_type": step_type, "content": content, "uuid": sid})
        typed = {k: v for k, v in content.items() if v is not None}
        index = len(self.blocks.doc("pro_search_steps")["steps"])
        step = {"uuid": sid, "step_type": step_type, typed_key: typed}
        self.blocks.change("pro_search_steps", "add", f"/steps/{index}", step)

    def _goal(self, description: str) -> None:
        if not self.blocks.has("plan"):
            self.blocks.open("plan", "plan_block", {"progress": "IN_PROGRESS", "goals": [], "final": False})
        index = len(self.blocks.doc("plan")["goals"])
        goal = {"id": str(index), "description": description, "final": False, "todo_task_status": "INCOMPLETE"}
        self.blocks.change("plan", "add", f"/goals/{index}", goal)

    # ---- the phases of a run, in order ----------------------------------------------------------

    def _echo(self) -> None:
        empty_plan = {"progress": "IN_PROGRESS", "goals": [], "steps": [], "final": False}
        self.blocks.open("pro_search_steps", "plan_block", empty_plan)
        self._step("INITIAL_QUERY", {"goal_id": None, "query": self.ctx.query}, "initial_query_content", "")
        if self.blocks.diff:
            # Diff-mode streams still send some blocks materialized (AK 2026-09).
            modes = [{"answer_mode_type": "ANSWER"}, {"answer_mode_type": "SOURCES"}]
            tabs = {"modes": modes, "reformulated_queries": []}
            self.blocks.open("answer_tabs", "answer_tabs_block", tabs, plain=True)
            self.blocks.open("pending_followups", "pending_followups_block", {"followups": []}, plain=True)
        self._emit()

    def _classify(self) -> None:
        self.classified = True
        self._emit()

    def _load_skills(self) -> None:
        skills = ["research", "research-report"]
        self._step("LOAD_SKILL", {"goal_id": "0", "skill_names": skills}, "load_skill_content")
        response = {"goal_id": "0", "loaded_skills": skills, "failed_skills": []}
        self._step("LOAD_SKILL_RESPONSE", response, "load_skill_response_content")
        self._emit()

    def _clarify(self) -> None:
        content = clarifying_content(self.ctx.query, self.ctx.backend_uuid)
        self._step("RESEARCH_CLARIFYING_QUESTIONS", content, "research_clarifying_questions_content")
        self._emit()

    def _search(self) -> None:
        self._goal("Searching the web")
        terms = search_terms(self.ctx.query)
        queries = [{"engine": "web", "query": terms, "limit": 8}]
        self._step("SEARCH_WEB", {"goal_id": "0", "queries": queries}, "search_web_content")
        if self.channel == "workflow":
            self.workflow.search_step([terms])
        self.extra["expect_search_results"] = "true"
        self._emit()

    def _results(self) -> None:
        block = {"progress": "IN_PROGRESS", "web_results": self.sources}
        self.blocks.open("web_results", "web_result_block", block)
        self._step("SEARCH_RESULTS", {"goal_id": "0", "web_results": self.sources}, "web_results_content")
        if self.channel == "workflow":
            self.workflow.search_results(self.sources)
        modes = [{"answer_mode_type": "SOURCES"}]
        if self.media:
            media_block = {"media_block": {"media_items": self.media, "progress": "IN_PROGRESS"}}
            self.blocks.open("answer_media_items", "inline_entity_block", media_block)
            modes.insert(0, {"answer_mode_type": "IMAGE", "has_preview": True})
        self.extra["answer_modes"] = modes
        self._emit()

    def _reason(self) -> None:
        lines = reasoning_lines(self.ctx.query)
        step = self.workflow.text_step("thinking", "Thinking")
        for index, line in enumerate(lines):
            self._goal(line)
            self.workflow.add_chunk(step, index, line + "\n")
            self._emit()
        self.workflow.finish_text(step, "".join(line + "\n" for line in lines))

    def _stream_report(self) -> None:
        assert self.report is not None
        asset = {"title": self.ctx.title, "file_name": _REPORT_FILE, "source_content": ""}
        doc = {"assets": [{"id": str(uuid.uuid4()), "asset_type": "RESEARCH_REPORT", "research_report": asset}]}
        self.blocks.open("unified_assets", "unified_assets_block", doc)
        pieces = split_chunks(self.report, self.reply.chunk_size)
        for end in range(1, len(pieces) + 1):
            # Deep Research grows the body by whole-string replaces (protocol 3.6).
            body = "".join(pieces[:end])
            self.blocks.change("unified_assets", "replace", "/assets/0/research_report/source_content", body)
            self._emit()

    def _stream_answer(self) -> None:
        pieces = split_chunks(self.answer, self.reply.chunk_size)
        for index, piece in enumerate(pieces):
            self._add_chunk(index, piece)
            if index < len(pieces) - 1:
                self._emit()
        if not self.answer_started:
            self._open_answer()
        if self.answer_step is not None:
            self.workflow.finish_text(self.answer_step, "".join(self.chunks))
        if self.blocks.has("workflow_root"):
            self.workflow.complete()
        # The last chunk rides on the `text_completed` frame, as in the captures.
        self._emit(text_completed=True, final=True)

    def _open_answer(self) -> None:
        self.answer_started = True
        if self.channel == "ask_text":
            empty = {"progress": "IN_PROGRESS", "chunks": [], "chunk_starting_offset": 0}
            self.blocks.open("ask_text_0_markdown", "markdown_block", {**empty, "inline_token_annotations": []})
            self.blocks.open("ask_text", "markdown_block", empty)
            self.extra["structured_answer_block_usages"] = ["ask_text_0_markdown"]
        elif self.channel == "workflow":
            self.answer_step = self.workflow.text_step("answer", "")
            self.extra["structured_answer_block_usages"] = ["workflow_root"]

    def _add_chunk(self, index: int, piece: str) -> None:
        if index == 0:
            self._open_answer()
        self.chunks.append(piece)
        if self.channel == "ask_text":
            for usage in ("ask_text_0_markdown", "ask_text"):
                self.blocks.change(usage, "add", f"/chunks/{index}", piece)
        elif self.answer_step is not None:
            self.workflow.add_chunk(self.answer_step, index, piece)

    # ---- the terminal frame ---------------------------------------------------------------------

    def _completed(self) -> dict[str, Any]:
        frame = self._envelope(classified=True)
        frame.update(self.extra)
        frame.update(terminal_keys(self.ctx, related=self.related, reasoning=self.reply.reasoning))
        overrides = self._terminal_overrides()
        plan = overrides.get("plan", {"goals": []})
        frame["plan"] = {"goals": plan["goals"], "final": True}
        if self.media:
            frame["media_items"] = self.media
        if self.terminal_text == "json":
            frame["text"] = text_json(self._terminal_steps())
        elif self.terminal_text == "plain":
            frame["text"] = self.final_answer
        frame["blocks"] = self.blocks.snapshot(overrides)
        return frame

    def _terminal_steps(self) -> list[dict[str, Any]]:
        steps = list(self.steps)
        if self.report is not None:
            content = {
                "goal_id": None,
                "title": self.ctx.title,
                "file_name": _REPORT_FILE,
                "summary": self.final_answer,
                "answer": self.report,
            }
            steps.append({"step_type": "RESEARCH_ANSWER", "content": content, "uuid": str(uuid.uuid4())})
        steps.append(self.final_step(self.final_answer))
        return steps

    def _terminal_overrides(self) -> dict[str, Any]:
        """Finalized documents: progress DONE, `answer` added, goals final, chunks coalesced."""
        docs = {usage: copy.deepcopy(self.blocks.doc(usage)) for usage in self.blocks.docs}
        full = self.final_answer
        if "ask_text" in docs:
            docs["ask_text"].update(progress="DONE", chunk_starting_offset=0, answer=full)
            coalesced = {"chunks": [full] if full else [], "chunk_starting_offset": 0, "answer": full}
            docs["ask_text_0_markdown"].update(progress="DONE", **coalesced)
        if "plan" in docs:
            docs["plan"].update(progress="DONE", final=True)
            for goal in docs["plan"]["goals"]:
                goal["final"] = True
        for usage in ("pro_search_steps", "web_results"):
            if usage in docs:
                docs[usage]["progress"] = "DONE"
        docs["pro_search_steps"]["final"] = True
        if "answer_media_items" in docs:
            docs["answer_media_items"]["media_block"]["progress"] = "DONE"
        if "workflow_root" in docs:
            self.workflow.finalize(docs["workflow_root"], self.answer_step, full, now_iso())
        return docs
