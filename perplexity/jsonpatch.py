"""RFC 6902 JSON Patch applied in place, with the root `replace ""` op Perplexity diff blocks start with.

A hand-written applier instead of the `jsonpatch` package: this package stays stdlib + requests, and
the common ops (append a chunk, replace a field) run several times faster without the generic
operation objects, which matters because every answer chunk in diff mode is one patch.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["JsonPatchError", "apply_patch"]


class JsonPatchError(ValueError):
    """A patch op could not be applied (bad path, failed test, unknown op)."""


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"JSON pointer must start with '/': {path!r}")
    # RFC 6901: decode ~1 before ~0 so "~01" becomes "~1", not "/".
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(token: str, size: int, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return size
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise JsonPatchError(f"bad array index {token!r}")
    index = int(token)
    if index > size or (index == size and not allow_end):
        raise JsonPatchError(f"array index {index} out of range")
    return index


def _walk(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, list):
            doc = doc[_index(token, len(doc), allow_end=False)]
        elif isinstance(doc, dict):
            if token not in doc:
                raise JsonPatchError(f"path member {token!r} not found")
            doc = doc[token]
        else:
            raise JsonPatchError(f"cannot descend into {type(doc).__name__}")
    return doc


def _get(doc: Any, path: str) -> Any:
    return _walk(doc, _tokens(path))


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    key = tokens[-1]
    if isinstance(parent, list):
        parent.insert(_index(key, len(parent), allow_end=True), value)
    elif isinstance(parent, dict):
        parent[key] = value
    else:
        raise JsonPatchError(f"cannot add into {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> tuple[Any, Any]:
    if not tokens:
        raise JsonPatchError("cannot remove the document root")
    parent = _walk(doc, tokens[:-1])
    key = tokens[-1]
    if isinstance(parent, list):
        return doc, parent.pop(_index(key, len(parent), allow_end=False))
    if isinstance(parent, dict) and key in parent:
        return doc, parent.pop(key)
    raise JsonPatchError(f"path member {key!r} not found")


def _replace(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    key = tokens[-1]
    if isinstance(parent, list):
        parent[_index(key, len(parent), allow_end=False)] = value
    elif isinstance(parent, dict):
        # Perplexity sometimes "replaces" a member it never added; RFC 6902 says error, but
        # tolerating it keeps the answer flowing and loses nothing.
        parent[key] = value
    else:
        raise JsonPatchError(f"cannot replace inside {type(parent).__name__}")
    return doc


def _apply_one(doc: Any, op: dict[str, Any]) -> Any:
    kind, path = op.get("op"), op.get("path")
    if not isinstance(path, str):
        raise JsonPatchError(f"op without a string 'path': {op!r}")
    tokens = _tokens(path)
    if kind == "add":
        return _add(doc, tokens, op.get("value"))
    if kind == "replace":
        return _replace(doc, tokens, op.get("value"))
    if kind == "remove":
        return _remove(doc, tokens)[0]
    if kind == "test":
        if _walk(doc, tokens) != op.get("value"):
            raise JsonPatchError(f"test failed at {path!r}")
        return doc
    source = op.get("from")
    if not isinstance(source, str):
        raise JsonPatchError(f"{kind!r} op needs a 'from' pointer")
    if kind == "move":
        doc, value = _remove(doc, _tokens(source))
        return _add(doc, tokens, value)
    if kind == "copy":
        return _add(doc, tokens, copy.deepcopy(_get(doc, source)))
    raise JsonPatchError(f"unknown op {kind!r}")


def apply_patch(doc: Any, patches: list[dict[str, Any]]) -> Any:
    """Apply `patches` to `doc` in place and return the (possibly new) document."""
    for op in patches:
        if not isinstance(op, dict):
            raise JsonPatchError(f"patch op is not an object: {op!r}")
        doc = _apply_one(doc, op)
    return doc
