"""Write tests/fixtures/openapi-subset.json: the OpenAI response schemas our tests validate against, with their refs."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = Path("/work/shared/openai-openapi/openapi.yaml")
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "openapi-subset.json"
REF_PREFIX = "#/components/schemas/"

WANTED = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CompletionUsage",
    "ErrorResponse",
    "Error",
    "Model",
    "ListModelsResponse",
    "DeleteModelResponse",
    "CreateCompletionResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "DeleteResponse",
)
# Documentation-only keywords, dropped to keep the fixture small; validation never reads them.
DOC_KEYS = frozenset({"description", "example", "examples", "x-oaiMeta", "x-oaiTypeLabel", "x-oaiExpandable"})
# Keywords whose value maps *names* to schemas: the names are data and must survive DOC_KEYS stripping.
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# Keywords whose value is data, not schemas: copied verbatim.
DATA_KEYS = frozenset({"enum", "const", "default", "required", "discriminator", "x-stainless-const"})


def main(argv: list[str] | None = None) -> int:
    """Extract the subset and write it; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="OpenAI openapi.yaml (3.1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON subset")
    args = parser.parse_args(argv)

    raw = args.spec.read_bytes()
    spec = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = spec["components"]["schemas"]
    roots = [name for name in WANTED if name in schemas]
    for name in WANTED:
        if name not in schemas:
            print(f"skipping {name}: not in the spec", file=sys.stderr)
    names = closure(schemas, roots)
    subset = {
        "openapi": spec["openapi"],
        "info": _provenance(spec, args.spec, raw, roots),
        "components": {"schemas": {name: strip_docs(schemas[name]) for name in sorted(names)}},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(subset, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(names)} schemas ({len(roots)} roots) to {args.out}")
    return 0


def closure(schemas: dict[str, Any], roots: list[str]) -> set[str]:
    """Names of `roots` and of every component schema they reference, transitively."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(ref for ref in _refs(schemas[name]) if ref not in seen)
    return seen


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            found.append(ref.removeprefix(REF_PREFIX))
        for value in node.values():
            found.extend(_refs(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_refs(value))
    return found


def strip_docs(schema: Any) -> Any:
    """Copy a schema without documentation keywords (property *names* such as `description` are kept)."""
    if isinstance(schema, list):
        return [strip_docs(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DOC_KEYS:
            continue
        if key in SCHEMA_MAPS and isinstance(value, dict):
            copy[key] = {name: strip_docs(sub) for name, sub in value.items()}
        elif key in DATA_KEYS:
            copy[key] = value
        else:
            copy[key] = strip_docs(value)
    return copy


def _provenance(spec: dict[str, Any], path: Path, raw: bytes, roots: list[str]) -> dict[str, Any]:
    return {
        "title": "Subset of the OpenAI OpenAPI spec for response validation in tests",
        "version": spec["info"]["version"],
        "x-source": {
            "file": path.name,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "roots": roots,
            "generator": "scripts/extract_openapi_subset.py",
            "note": "documentation keywords removed; schemas otherwise unchanged",
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
