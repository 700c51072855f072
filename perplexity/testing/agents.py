"""Scripted and protocol-following model answers for the server's prompt-emulated tool calling and JSON output.

    from perplexity.testing import ProtocolModel, Reply, tool_call_text

    fake.enqueue(Reply(answer=tool_call_text("get_weather", {"city": "Paris"}, form="fenced")))
    fake.responder = ProtocolModel()  # answer every unscripted ask like a model that follows the protocol
    fake.responder = ProtocolModel(form="bare", parallel=True, first_answer="I cannot call tools.")

Text helpers, each returning an answer text for `Reply(answer=...)`:

- `tool_call_text(name, arguments, form)`: one call, in the form a model emits it: "canonical"
  (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`), "fenced" (a ```json fence holding the
  object), "bare" (only the JSON object), "parameters" (canonical, key `parameters` instead of `arguments`),
  "string_arguments" (canonical, the arguments as a JSON string).
- `tool_calls_text(calls)`: several canonical blocks, one a line (parallel calls), from (name, arguments) pairs.
- `false_positive_text(name, arguments)`: prose that explains an example call, its JSON in a code sample
  and text after it; not a call.
- `json_text(value, fenced=False)`: a JSON answer, optionally in a ```json fence.
- `example_instance(schema)`: a deterministic instance of a JSON Schema (type, properties/required, enum,
  const, default, anyOf/oneOf, allOf, $ref into $defs/definitions, type lists; "Paris" for city-like names).

`ProtocolModel` answers from the query the server sends upstream (and the thread's earlier queries):

- with a `<tools>` section it calls the tool a `You must call the tool "NAME" now` rule names, else the first
  listed tool with no `<tool_response name=...>` yet in the thread (every unanswered one with
  `parallel=True`), arguments from the tool's parameter schema, in the text form `form`;
- once every tool has a response it answers `Done: ` and the results' texts joined by `; `, or JSON for the
  `<output_schema>` (`{"answer": ...}` for `Answer with only a JSON object.`);
- without a tool section it answers JSON when an output format is asked for, else None (the default reply);
- `first_answer` is answered instead on a thread's first ask, unless the query holds a repair request
  (`Your previous answer ...`), so tests can drive the server's repair turn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .script import Reply

__all__ = [
    "CALL_FORMS",
    "ProtocolModel",
    "example_instance",
    "false_positive_text",
    "json_text",
    "tool_call_text",
    "tool_calls_text",
]

CALL_FORMS = ("canonical", "fenced", "bare", "parameters", "string_arguments")

_TOOLS = re.compile(r"^<tools>[ \t]*\n(.*?)\n^</tools>[ \t]*$", re.MULTILINE | re.DOTALL)
_OUTPUT_SCHEMA = re.compile(r"^<output_schema>[ \t]*\n(.*?)\n^</output_schema>[ \t]*$", re.MULTILINE | re.DOTALL)
_NAMED = re.compile(r'You must call the tool "([^"]+)" now')
_RESPONSE = re.compile(r"<tool_response\b([^>]*)>(.*?)</tool_response>", re.DOTALL)
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
_JSON_OBJECT = "Answer with only a JSON object."
_REPAIR = "Your previous answer"
_PLACE_NAMES = ("city", "location", "place", "town")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---- answer texts -----------------------------------------------------------------------------------


def tool_call_text(name: str, arguments: dict[str, Any], form: str = "canonical") -> str:
    """One tool call as a model writes it, in one of `CALL_FORMS`."""
    if form not in CALL_FORMS:
        raise ValueError(f"unknown call form {form!r}; expected one of {CALL_FORMS}")
    if form == "parameters":
        return f"<tool_call>{_dumps({'name': name, 'parameters': arguments})}</tool_call>"
    if form == "string_arguments":
        return f"<tool_call>{_dumps({'name': name, 'arguments': _dumps(arguments)})}</tool_call>"
    body = _dumps({"name": name, "arguments": arguments})
    if form == "fenced":
        return f"```json\n{body}\n```"
    if form == "bare":
        return body
    return f"<tool_call>{body}</tool_call>"


def tool_calls_text(calls: Iterable[tuple[str, dict[str, Any]]]) -> str:
    """Several canonical call blocks, one a line (parallel tool calls)."""
    return "\n".join(tool_call_text(name, arguments) for name, arguments in calls)


def false_positive_text(name: str, arguments: dict[str, Any]) -> str:
    """Prose explaining an example call: the call's JSON sits in a code sample with text after it."""
    sample = _dumps({"name": name, "arguments": arguments})
    return (
        f"To use the {name} tool, a client sends a request like this example:\n\n"
        f"```json\n{sample}\n```\n\n"
        "The arguments object holds the parameters; nothing is called here, this only shows the format."
    )


def json_text(value: Any, fenced: bool = False) -> str:
    """A JSON answer, optionally inside a ```json fence."""
    body = _dumps(value)
    return f"```json\n{body}\n```" if fenced else body


# ---- instances of JSON Schemas ------------------------------------------------------------------


class _Cycle:
    """Marks a `$ref` met again while it is being expanded."""


_CYCLE = _Cycle()


def example_instance(schema: Any, name: str | None = None) -> Any:
    """A deterministic instance of `schema` (see the module docstring); `name` is the property it fills."""
    value = _instance(schema, name, schema if isinstance(schema, dict) else {}, frozenset())
    return None if value is _CYCLE else value


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _merge(schemas: Sequence[Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for schema in schemas:
        if not isinstance(schema, dict):
            continue
        for key, value in schema.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
            else:
                merged[key] = value
    return merged


def _instance(schema: Any, name: str | None, root: dict[str, Any], seen: frozenset[str]) -> Any:
    if not isinstance(schema, dict):
        return "example" if schema is not False else None
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref in seen:
            return _CYCLE
        target = _resolve(ref, root)
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _instance(_merge([target, rest]) if rest else target, name, root, seen | {ref})
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    if schema.get("allOf"):
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        parts = [_resolve(s["$ref"], root) if isinstance(s, dict) and "$ref" in s else s for s in schema["allOf"]]
        return _instance(_merge([rest, *parts]), name, root, seen)
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _first_branch(schema[key], name, root, seen)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return _object(schema, root, seen)
    if kind == "array":
        return _array(schema, name, root, seen)
    if kind == "integer":
        return _bounded(schema, 1)
    if kind == "number":
        return _bounded(schema, 1.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, name)


def _first_branch(branches: list[Any], name: str | None, root: dict[str, Any], seen: frozenset[str]) -> Any:
    nullable = False
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "null":
            nullable = True
            continue
        value = _instance(branch, name, root, seen)
        if value is not _CYCLE:
            return value
    return None if nullable else _CYCLE


def _object(schema: dict[str, Any], root: dict[str, Any], seen: frozenset[str]) -> dict[str, Any]:
    required = set(schema.get("required") or ())
    result: dict[str, Any] = {}
    for key, sub in (schema.get("properties") or {}).items():
        value = _instance(sub, key, root, seen)
        if value is _CYCLE:
            if key not in required:
                continue
            value = None
        result[key] = value
    return result


def _array(schema: dict[str, Any], name: str | None, root: dict[str, Any], seen: frozenset[str]) -> list[Any]:
    count = max(1, int(schema.get("minItems") or 0))
    if schema.get("maxItems") == 0:
        return []
    item = _instance(schema.get("items", {}), name, root, seen)
    if item is _CYCLE:
        return []
    return [item] * count


def _bounded(schema: dict[str, Any], value: float) -> float:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    return value


def _string(schema: dict[str, Any], name: str | None) -> str:
    if name and any(word in name.lower() for word in _PLACE_NAMES):
        return "Paris"
    text = "example"
    min_length = int(schema.get("minLength") or 0)
    return text + "x" * (min_length - len(text)) if min_length > len(text) else text


# ---- a model that follows the protocol ------------------------------------------------------------


class ProtocolModel:
    """A `FakePerplexity.responder` answering like a model that follows the prompt protocol (module docstring)."""

    def __init__(self, form: str = "canonical", parallel: bool = False, first_answer: str | None = None):
        if form not in CALL_FORMS:
            raise ValueError(f"unknown call form {form!r}; expected one of {CALL_FORMS}")
        self.form = form
        self.parallel = parallel
        self.first_answer = first_answer

    def __call__(self, query: str, earlier: list[str]) -> Reply | None:
        answer = self.answer(query, earlier)
        return None if answer is None else Reply(answer=answer)

    def answer(self, query: str, earlier: Sequence[str] = ()) -> str | None:
        """The answer text for `query` after the thread's `earlier` queries, or None for the default reply."""
        if self.first_answer is not None and not earlier and _REPAIR not in query:
            return self.first_answer
        tools = _tools(query)
        if tools:
            calls = self._calls(query, tools, _responses([*earlier, query]))
            if calls:
                return "\n".join(tool_call_text(name, arguments, self.form) for name, arguments in calls)
        results = [text for _, text in _responses([*earlier, query])]
        done = "Done: " + "; ".join(results)
        schema = _output_schema(query)
        if schema is not None:
            return json_text(example_instance(schema))
        if _JSON_OBJECT in query:
            return json_text({"answer": done})
        return done if tools or results else None

    def _calls(
        self, query: str, tools: list[dict[str, Any]], responses: list[tuple[str, str]]
    ) -> list[tuple[str, dict[str, Any]]]:
        answered = {name for name, _ in responses}
        by_name = {str(t.get("name")): t for t in tools if isinstance(t, dict)}
        named = _NAMED.search(query)
        if named:
            tool = by_name.get(named.group(1))
            if named.group(1) in answered:
                return []
            pending = [tool if tool is not None else {"name": named.group(1)}]
        else:
            pending = [t for n, t in by_name.items() if n not in answered]
            if not self.parallel:
                pending = pending[:1]
        return [(str(t["name"]), _arguments(t)) for t in pending]


def _arguments(tool: dict[str, Any]) -> dict[str, Any]:
    parameters = tool.get("parameters") or {"type": "object", "properties": {}}
    value = example_instance(parameters)
    return value if isinstance(value, dict) else {}


def _tools(query: str) -> list[dict[str, Any]]:
    match = _TOOLS.search(query)
    if not match:
        return []
    try:
        tools = json.loads(match.group(1))
    except ValueError:
        return []
    return [t for t in tools if isinstance(t, dict) and t.get("name")] if isinstance(tools, list) else []


def _output_schema(query: str) -> Any:
    match = _OUTPUT_SCHEMA.search(query)
    if not match:
        return None
    try:
        return json.loads(match.group(1))
    except ValueError:
        return None


def _responses(queries: Iterable[str]) -> list[tuple[str, str]]:
    """(tool name, result text) of every `<tool_response>` in `queries`, each once, oldest first."""
    seen: dict[tuple[str, str, str], tuple[str, str]] = {}
    for query in queries:
        for match in _RESPONSE.finditer(query):
            attributes = dict(_ATTRIBUTE.findall(match.group(1)))
            name, text = attributes.get("name", ""), match.group(2)
            seen.setdefault((name, attributes.get("call_id", ""), text), (name, text))
    return list(seen.values())
