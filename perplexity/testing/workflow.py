"""The `workflow_root` workflow_block of a fake stream: search steps and streamed text items."""

from __future__ import annotations

import uuid
from typing import Any

from .blocks import BlockSet
from .envelope import now_iso

__all__ = ["WorkflowBuilder"]

_USAGE = "workflow_root"


def _step_id() -> str:
    return uuid.uuid4().hex


class WorkflowBuilder:
    """Emits the workflow ops seen in AK's 2026-09 diff-mode captures (protocol 3.5 and 3.6)."""

    def __init__(self, blocks: BlockSet) -> None:
        self.blocks = blocks
        self.search_index: int | None = None

    def _open(self) -> None:
        if self.blocks.has(_USAGE):
            return
        root = {
            "version": "1.0",
            "status": "WORKFLOW_EXECUTING_STEPS",
            "headline": "",
            "started_at": now_iso(),
            "completed_at": "",
            "predicted_completion_at": "",
            "steps": [],
            "snapshots": [],
        }
        self.blocks.open(_USAGE, "workflow_block", root)

    def _add_step(self, step: dict[str, Any]) -> int:
        self._open()
        index = len(self.blocks.doc(_USAGE)["steps"])
        self.blocks.change(_USAGE, "add", f"/steps/{index}", step)
        return index

    def search_step(self, queries: list[str]) -> None:
        """Add a "Searching" step holding a WORKFLOW_ITEM_QUERIES item."""
        sid = _step_id()
        item = {
            "id": f"{sid}:item:0",
            "type": "WORKFLOW_ITEM_QUERIES",
            "payload": {"queries_payload": {"queries": list(queries)}},
        }
        step = {
            "status": "WORKFLOW_PENDING",
            "title": "Searching",
            "items": [item],
            "started_at": now_iso(),
            "completed_at": "",
            "icon": "search",
            "tool_name": "search_web",
            "batch_step_id": sid,
            "source_tier": "SOURCE_TIER_DEFAULT",
            "id": sid,
        }
        self.search_index = self._add_step(step)

    def search_results(self, sources: list[dict[str, Any]]) -> None:
        """Add the WORKFLOW_ITEM_SOURCES item to the search step and complete it."""
        if self.search_index is None:
            return
        base = f"/steps/{self.search_index}"
        slim = [{"name": s.get("name", ""), "snippet": s.get("snippet", ""), "url": s["url"]} for s in sources]
        item = {
            "id": f"{_step_id()}:item:1",
            "type": "WORKFLOW_ITEM_SOURCES",
            "payload": {"sources_payload": {"sources": slim}},
        }
        self.blocks.change(_USAGE, "add", f"{base}/items/1", item)
        self.blocks.change(_USAGE, "replace", f"{base}/status", "WORKFLOW_COMPLETED")
        self.blocks.change(_USAGE, "replace", f"{base}/completed_at", now_iso())

    def text_step(self, variant: str, title: str) -> int:
        """Add a step with one streaming WORKFLOW_ITEM_TEXT item; return the step index."""
        sid = _step_id()
        # `text` stays absent until the item is complete: clients take a present `text` as final.
        payload = {"text_payload": {"chunks": [], "variant": variant, "is_streaming": True}}
        item = {
            "id": f"{sid}:item:0",
            "type": "WORKFLOW_ITEM_TEXT",
            "payload": payload,
            "display_mode": "WORKFLOW_ITEM_ALWAYS_EXPAND",
            "variant": variant,
        }
        step = {
            "status": "WORKFLOW_PENDING",
            "title": title,
            "items": [item],
            "started_at": "",
            "completed_at": "",
            "unnest_items": True,
            "source_tier": "SOURCE_TIER_DEFAULT",
            "id": sid,
        }
        return self._add_step(step)

    def add_chunk(self, step: int, index: int, piece: str) -> None:
        """Append one text chunk to the item of `step`."""
        path = f"/steps/{step}/items/0/payload/text_payload/chunks/{index}"
        self.blocks.change(_USAGE, "add", path, piece)

    def finish_text(self, step: int, text: str) -> None:
        """Set the item's whole `text`, stop streaming and complete the step."""
        base = f"/steps/{step}/items/0/payload/text_payload"
        self.blocks.change(_USAGE, "add", f"{base}/text", text)
        self.blocks.change(_USAGE, "replace", f"{base}/is_streaming", False)
        self.blocks.change(_USAGE, "replace", f"/steps/{step}/status", "WORKFLOW_COMPLETED")

    def complete(self) -> None:
        """Mark the whole workflow completed."""
        self.blocks.change(_USAGE, "replace", "/status", "WORKFLOW_COMPLETED")
        self.blocks.change(_USAGE, "replace", "/completed_at", now_iso())

    @staticmethod
    def finalize(doc: dict[str, Any], answer_step: int | None, answer: str, when: str) -> None:
        """Turn an accumulated workflow document into its terminal snapshot, in place."""
        doc["status"] = "WORKFLOW_COMPLETED"
        doc["completed_at"] = doc.get("completed_at") or when
        if answer_step is not None:
            # The terminal answer wins over the streamed chunks (revised citations, protocol 3.6).
            doc["steps"][answer_step]["items"][0]["payload"]["text_payload"]["text"] = answer
