"""Load real Perplexity captures as frame lists that `Reply(frames=...)` replays as they were sent."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = ["load_capture_frames"]

_PARTS = ("initial_result", "follow_up_result")


def load_capture_frames(
    path: str | PathLike[str], *, part: str | None = None, end_of_stream: bool | None = None
) -> list[dict[str, Any]]:
    """Return the frames of a capture file, with `text` encoded as the JSON string the wire carries.

    Handles `.events.jsonl` (one frame per line, the last `{}` being the end_of_stream payload), the
    Zykairotis `{"chunks": [...]}` wrapper, single final-frame files and the
    `{"initial_result": ..., "follow_up_result": ...}` wrapper (`part` picks one; default both).
    `end_of_stream` appends a `{}` item; by default it is appended only when the capture ends with a
    COMPLETED frame and has none, so a capture that stopped mid-stream replays as a truncated stream.
    """
    frames = [_wire_text(frame) for frame in _read_frames(Path(path), part)]
    if end_of_stream is None:
        end_of_stream = bool(frames) and frames[-1] != {} and frames[-1].get("status") == "COMPLETED"
    if end_of_stream and (not frames or frames[-1] != {}):
        frames.append({})
    return frames


def _read_frames(path: Path, part: str | None) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, list):
        return data
    if isinstance(data.get("chunks"), list):
        return list(data["chunks"])
    if any(key in data for key in _PARTS):
        if part is not None:
            return [data[part]]
        return [data[key] for key in _PARTS if key in data]
    return [data]


def _wire_text(frame: dict[str, Any]) -> dict[str, Any]:
    """Re-encode a `text` the capturing client had decoded (a list or object) back into a string."""
    if isinstance(frame.get("text"), list | dict):
        return {**frame, "text": json.dumps(frame["text"], separators=(",", ":"), ensure_ascii=False)}
    return frame
