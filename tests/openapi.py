"""Validate response bodies against the OpenAI spec subset in tests/fixtures/openapi-subset.json."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = ["SUBSET_PATH", "schema_names", "validate"]

SUBSET_PATH = Path(__file__).parent / "fixtures" / "openapi-subset.json"
_URI = "urn:openai-openapi-subset"
_REF_PREFIX = "#/components/schemas/"
# Keywords whose values are names or data, never schemas; normalisation copies them as they are.
_DATA_KEYS = frozenset({"enum", "const", "default", "required", "discriminator", "x-stainless-const"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
_MESSAGE_LIMIT = 400


def validate(instance: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError ("<schema> at <$.json.path>: <reason>") unless `instance` fits the schema."""
    error = best_match(_validator(schema_name).iter_errors(instance))
    if error is None:
        return
    message = error.message if len(error.message) <= _MESSAGE_LIMIT else error.message[:_MESSAGE_LIMIT] + "..."
    # A fresh error without instance/schema keeps str() to one line (the full one prints whole schemas).
    raise ValidationError(
        f"{schema_name} at {error.json_path}: {message}",
        path=error.absolute_path,
        schema_path=error.absolute_schema_path,
    )


def schema_names() -> frozenset[str]:
    """Names of the component schemas in the subset."""
    return frozenset(_document()["components"]["schemas"])


@cache
def _validator(schema_name: str) -> Draft202012Validator:
    if schema_name not in schema_names():
        raise KeyError(f"{schema_name} is not in {SUBSET_PATH.name}; add it to scripts/extract_openapi_subset.py")
    registry: Registry[Any] = Registry().with_resource(_URI, DRAFT202012.create_resource(_document()))
    return Draft202012Validator({"$ref": f"{_URI}{_REF_PREFIX}{schema_name}"}, registry=registry)


@cache
def _document() -> dict[str, Any]:
    raw = json.loads(SUBSET_PATH.read_text(encoding="utf-8"))
    components = raw["components"]["schemas"]
    schemas = {name: _normalise(schema, name, components) for name, schema in components.items()}
    return {**raw, "components": {"schemas": schemas}}


# ---- OpenAPI 3.1 leftovers -> plain JSON Schema 2020-12 ----------------------------------------


def _normalise(node: Any, owner: str, components: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_normalise(item, owner, components) for item in node]
    if not isinstance(node, dict):
        return node
    schema: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DATA_KEYS:
            schema[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            schema[key] = {name: _normalise(sub, owner, components) for name, sub in value.items()}
        else:
            schema[key] = _normalise(value, owner, components)
    schema = _resolve_recursive_ref(schema, owner)
    schema = _discriminate(schema, components)
    return _apply_nullable(schema)


def _resolve_recursive_ref(schema: dict[str, Any], owner: str) -> dict[str, Any]:
    # 2019-09's `$recursiveRef: "#"` is unknown to 2020-12 (it would accept anything); in the spec it always
    # means "the component this sits in" (CompoundFilter), so point it there.
    schema.pop("$recursiveAnchor", None)
    if schema.pop("$recursiveRef", None) == "#":
        schema["$ref"] = f"{_REF_PREFIX}{owner}"
    return schema


def _apply_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    # OpenAPI 3.0's `nullable: true` survives in a few places (e.g. a chunk's `finish_reason` and `usage`);
    # JSON Schema ignores it, which would reject the nulls the spec allows.
    if not schema.pop("nullable", False):
        return schema
    kind = schema.get("type")
    if isinstance(kind, str | list) and not any(key in schema for key in ("$ref", "anyOf", "oneOf", "allOf")):
        kinds = [kind] if isinstance(kind, str) else list(kind)
        schema["type"] = [*kinds, "null"] if "null" not in kinds else kinds
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _discriminate(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Turn a union whose branches each pin `type` to a distinct constant into if/then per constant.

    Same meaning as the anyOf/oneOf it replaces, but a failure is reported inside the branch the instance
    names (`delta` missing in a `response.output_text.delta` event) instead of "not valid under any of ...".
    """
    key = "oneOf" if "oneOf" in schema else "anyOf" if "anyOf" in schema else None
    if key is None:
        return schema
    prop = schema.get("discriminator", {}).get("propertyName", "type")
    tags = [_branch_tag(branch, prop, components) for branch in schema[key]]
    if None in tags or len(set(tags)) != len(tags):
        if "discriminator" in schema and key == "oneOf":
            # Branches that do not pin the tag may overlap; "exactly one" would then fail valid instances.
            schema["anyOf"] = schema.pop("oneOf")
        return schema
    rest = {name: value for name, value in schema.items() if name not in (key, "discriminator")}
    tag_check = {"type": "object", "required": [prop], "properties": {prop: {"enum": tags}}}
    branches = [
        {"if": {"required": [prop], "properties": {prop: {"const": tag}}}, "then": branch}
        for tag, branch in zip(tags, schema[key], strict=True)
    ]
    return {**rest, "allOf": [*rest.get("allOf", []), tag_check, *branches]}


def _branch_tag(branch: Any, prop: str, components: dict[str, Any]) -> Any:
    # The constant a branch requires for `prop`, or None when it does not pin one.
    if isinstance(branch, dict) and _is_plain_ref(branch):
        branch = components.get(branch["$ref"].removeprefix(_REF_PREFIX))
    if not isinstance(branch, dict):
        return None
    if "allOf" in branch:
        # `allOf: [Base, {extra fields}]` (e.g. FunctionToolCallOutputResource) is pinned if one part pins it.
        tags = {tag for part in branch["allOf"] if (tag := _branch_tag(part, prop, components)) is not None}
        return tags.pop() if len(tags) == 1 else None
    if branch.get("type") != "object" or prop not in branch.get("required", ()):
        return None
    spec = branch.get("properties", {}).get(prop, {})
    if "const" in spec:
        return spec["const"]
    enum = spec.get("enum")
    return enum[0] if isinstance(enum, list) and len(enum) == 1 else None


def _is_plain_ref(branch: dict[str, Any]) -> bool:
    # A component reference, possibly with annotations beside it (e.g. `x-stainless-skip`).
    annotations = {key for key in branch if key.startswith("x-") or key in ("title", "description", "deprecated")}
    return set(branch) - annotations == {"$ref"} and branch["$ref"].startswith(_REF_PREFIX)
