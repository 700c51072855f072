"""Block documents of one answer stream, rendered per frame as snapshot deltas or as JSON Patch diffs."""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["BlockSet", "apply_patch", "pointer_tokens"]

Op = dict[str, Any]


def pointer_tokens(path: str) -> list[str]:
    """Split an RFC 6901 JSON Pointer into unescaped tokens ("" is the root, no tokens)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"bad JSON pointer {path!r}")
    return [tok.replace("~1", "/").replace("~0", "~") for tok in path[1:].split("/")]


def apply_patch(doc: Any, op: Op) -> Any:
    """Apply one `add` or `replace` op (the only ones the fake emits) and return the new document."""
    tokens = pointer_tokens(op["path"])
    value = copy.deepcopy(op["value"])
    if not tokens:
        return value
    parent = doc
    for tok in tokens[:-1]:
        parent = parent[int(tok)] if isinstance(parent, list) else parent[tok]
    last = tokens[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op["op"] == "add":
            parent.insert(index, value)
        else:
            parent[index] = value
    else:
        parent[last] = value
    return doc


class BlockSet:
    """The blocks of one stream: one document per intended_usage, plus the changes of the current frame.

    Generation code only expresses changes as JSON Patch ops; `render()` turns the pending ops of a
    frame into either `diff_block`s (diff mode) or the snapshot form the captures show, where a
    markdown block carries only its new chunks and `pro_search_steps` only its new steps (protocol 3.5).
    """

    def __init__(self, diff: bool) -> None:
        self.diff = diff
        self.docs: dict[str, tuple[str, Any]] = {}
        self._plain: set[str] = set()
        self._pending: dict[str, list[Op]] = {}

    def open(self, usage: str, field: str, doc: dict[str, Any], *, plain: bool = False) -> None:
        """Create the document of `usage`; diff mode sends it as the root `replace ""` op."""
        self.docs[usage] = (field, copy.deepcopy(doc))
        if plain:
            self._plain.add(usage)
        self._pending.setdefault(usage, []).append({"op": "replace", "path": "", "value": copy.deepcopy(doc)})

    def change(self, usage: str, op: str, path: str, value: Any) -> None:
        """Record one op on an open document and apply it."""
        field, doc = self.docs[usage]
        patch = {"op": op, "path": path, "value": copy.deepcopy(value)}
        self.docs[usage] = (field, apply_patch(doc, patch))
        self._pending.setdefault(usage, []).append(patch)

    def doc(self, usage: str) -> Any:
        """Return the current document of `usage` (do not mutate it)."""
        return self.docs[usage][1]

    def has(self, usage: str) -> bool:
        """Return whether `usage` has been opened."""
        return usage in self.docs

    def render(self) -> list[dict[str, Any]]:
        """Return the blocks for the changes made since the last call, and forget them."""
        blocks = [self._render_one(usage, ops) for usage, ops in self._pending.items()]
        self._pending = {}
        return blocks

    def snapshot(self, overrides: dict[str, Any]) -> list[dict[str, Any]]:
        """Return every block as a full plain snapshot; `overrides` replaces a usage's document."""
        blocks = []
        for usage, (field, doc) in self.docs.items():
            blocks.append({"intended_usage": usage, field: copy.deepcopy(overrides.get(usage, doc))})
        return blocks

    def _render_one(self, usage: str, ops: list[Op]) -> dict[str, Any]:
        field, doc = self.docs[usage]
        if self.diff and usage not in self._plain:
            return {"intended_usage": usage, "diff_block": {"field": field, "patches": ops}}
        if field == "markdown_block":
            return {"intended_usage": usage, field: _markdown_delta(doc, ops)}
        if usage == "pro_search_steps":
            return {"intended_usage": usage, field: _new_steps(doc, ops)}
        return {"intended_usage": usage, field: copy.deepcopy(doc)}


def _markdown_delta(doc: dict[str, Any], ops: list[Op]) -> dict[str, Any]:
    """Snapshot form of a markdown change: only the new chunks, placed by chunk index."""
    indexes = [int(pointer_tokens(op["path"])[-1]) for op in ops if op["path"].startswith("/chunks/")]
    start = min(indexes) if indexes else len(doc["chunks"])
    delta: dict[str, Any] = {
        "progress": doc["progress"],
        "chunks": doc["chunks"][start:],
        "chunk_starting_offset": start,
    }
    if "inline_token_annotations" in doc and any(op["path"] == "" for op in ops):
        delta["inline_token_annotations"] = []
    return delta


def _new_steps(doc: dict[str, Any], ops: list[Op]) -> dict[str, Any]:
    """Snapshot form of a `pro_search_steps` change: only the steps added by this frame."""
    fresh = []
    for op in ops:
        if op["path"] == "":
            fresh.extend(op["value"].get("steps", []))
        elif op["path"].startswith("/steps/"):
            fresh.append(op["value"])
    return {**copy.deepcopy(doc), "steps": copy.deepcopy(fresh)}
