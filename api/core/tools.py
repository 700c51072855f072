"""Prompted tool calling and structured output: what the ask tells the model, and the strict reading of its answer.

Perplexity's web app has no tool or JSON mode, so both are emulated by prompt, the Hermes/Qwen way: the tools are
listed in a `<tools>` section after the conversation, and a call is an answer made of nothing but
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks. The reader accepts that canonical form and the
variants models emit when asked (a fenced JSON block or a bare JSON object with `name` and `arguments` or
`parameters`, arguments as an object or a JSON string). It refuses false positives: an unknown tool name outside
the canonical tags, JSON inside an explanation or a code sample, a call buried in prose. Arguments are checked
against the tool's JSON Schema. Every API family (chat, Responses, Anthropic Messages) builds an `AgentSpec` from
its own request shape and reads answers through the same functions here.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jsonschema
import orjson

from .errors import APIError

__all__ = [
    "MAX_PROSE_AROUND_CALLS",
    "anthropic_agent_spec",
    "AgentSpec",
    "OutputFormat",
    "Reading",
    "Tool",
    "ToolCall",
    "call_text",
    "chat_agent_spec",
    "custom_tool",
    "new_call_id",
    "read_json_output",
    "read_tool_calls",
    "responses_agent_spec",
    "tool_result_text",
]

# A canonical call may come with a short remark around it ("Let me check."); more prose than this is an answer
# that merely mentions a call, and stays text.
MAX_PROSE_AROUND_CALLS = 200

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_WHOLE_FENCE = re.compile(r"\A```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)\n?[ \t]*```\Z", re.S)
_ANY_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)\n?[ \t]*```", re.S)
_FENCES_ONLY = re.compile(r"\A(?:\s*```[ \t]*(?:json|JSON)?[ \t]*\n.*?\n?[ \t]*```\s*)+\Z", re.S)
_MARKERS = re.compile(r" ?(?:\[\d{1,3}\])+")


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the client offers: its name, description and JSON Schema parameters.

    `kind` "custom" is a freeform tool (OpenAI's custom tools, Codex's `apply_patch`): it takes one text input,
    which the protocol carries as the one argument `input` (see `custom_tool`).
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    kind: str = "function"

    def listing(self) -> dict[str, Any]:
        """The tool as the `<tools>` section lists it."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def custom_tool(name: str, description: str, fmt: dict[str, Any] | None) -> Tool:
    """A freeform tool as the protocol lists it: one string argument `input`, described by its format."""
    about = "The tool's whole input, as free text."
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        about += f" It must follow this {fmt.get('syntax') or 'lark'} grammar:\n{fmt.get('definition') or ''}"
    parameters = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": about}},
        "required": ["input"],
        "additionalProperties": False,
    }
    return Tool(name, description, parameters, "custom")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model made: an id (`call_…`), the tool's name and its arguments as a JSON string.

    A call of a custom tool (`kind` "custom") holds `{"input": ...}`; `input` is that text.
    """

    id: str
    name: str
    arguments: str
    kind: str = "function"

    @property
    def input(self) -> str:
        """A custom tool call's text input ("" for a function call)."""
        value = orjson.loads(self.arguments).get("input") if self.kind == "custom" else None
        return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """Structured output: any JSON object (`json_object`) or one matching `schema` (`json_schema`)."""

    kind: str
    schema: dict[str, Any] | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """What an answer turned out to be: tool calls, plain text, or a failed attempt at a call (`problem`)."""

    calls: tuple[ToolCall, ...] = ()
    problem: str | None = None

    @property
    def is_text(self) -> bool:
        """Neither a call nor an attempt at one: the answer is sent as text."""
        return not self.calls and self.problem is None


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """The agent side of one request: tools offered and the choice rule, and/or a structured output format.

    `choice` is "auto", "none", "required" or "named" (then `named` is the tool). With "none" no tool section is
    sent and answers are never read as calls.
    """

    tools: tuple[Tool, ...] = ()
    choice: str = "auto"
    named: str | None = None
    parallel: bool = True
    output: OutputFormat | None = None

    @property
    def offers_tools(self) -> bool:
        """True when the ask carries a tool section and answers are read for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def must_call(self) -> bool:
        """True when an answer without a valid call is a failure (required or named)."""
        return self.offers_tools and self.choice in ("required", "named")

    def section(self) -> str:
        """The text sent after the conversation: the tools and how to call them, the output format, or both."""
        parts = []
        if self.offers_tools:
            parts.append(self._tool_section())
        if self.output is not None:
            parts.append(self._output_section())
        return "\n\n".join(parts)

    def tool_repair(self, problem: str) -> str:
        """The follow-up asked when an answer had no valid call: what was wrong and the rule again."""
        names = ", ".join(f'"{tool.name}"' for tool in self._callable())
        return (
            f"Your previous answer did not contain a valid tool call: {problem}. Answer again with only "
            f'<tool_call>{{"name": "...", "arguments": {{...}}}}</tool_call> blocks for the tools {names}, with '
            "arguments that match the tool's parameters, and nothing else."
        )

    def output_repair(self, problem: str) -> str:
        """The follow-up asked when an answer was not the JSON asked for."""
        return f"Your previous answer was not valid JSON output: {problem}. {self._output_section()}"

    def _callable(self) -> tuple[Tool, ...]:
        if self.choice == "named":
            return tuple(tool for tool in self.tools if tool.name == self.named)
        return self.tools

    def _tool_section(self) -> str:
        listing = orjson.dumps([tool.listing() for tool in self.tools]).decode()
        rule = {
            "auto": "Call a tool only when you need it to answer; otherwise answer normally, without any <tool_call>.",
            "required": "You must call at least one tool now: answer with <tool_call> blocks only.",
            "named": f'You must call the tool "{self.named}" now: answer with <tool_call> blocks for it only.',
        }[self.choice]
        many = "" if self.parallel else " Call at most one tool per answer."
        return (
            "You can call these tools:\n<tools>\n"
            f"{listing}\n</tools>\n"
            "To call a tool, answer with only one or more blocks of this form, and nothing else:\n"
            '<tool_call>{"name": "<tool name>", "arguments": {<arguments matching its parameters>}}</tool_call>\n'
            f"{rule}{many} The results of calls come back in <tool_response> blocks; use them to answer, or call "
            "another tool."
        )

    def _output_section(self) -> str:
        assert self.output is not None
        if self.output.kind == "json_schema" and self.output.schema is not None:
            schema = orjson.dumps(self.output.schema).decode()
            return (
                "Answer with only a JSON value that matches this JSON Schema, without code fences, prose or "
                f"citation markers:\n<output_schema>\n{schema}\n</output_schema>"
            )
        return "Answer with only a JSON object.\nNo code fences, prose or citation markers."


def new_call_id() -> str:
    """A tool call id in OpenAI's style."""
    return "call_" + secrets.token_hex(12)


def call_text(name: str, arguments: str) -> str:
    """A call as the conversation history shows it to the model: the canonical block, compact JSON."""
    return "<tool_call>" + orjson.dumps({"name": name, "arguments": _loads_or_raw(arguments)}).decode() + "</tool_call>"


def tool_result_text(name: str | None, call_id: str | None, result: str) -> str:
    """A tool's result as the conversation history shows it to the model."""
    attributes = "".join(f' {key}="{value}"' for key, value in (("name", name), ("call_id", call_id)) if value)
    return f"<tool_response{attributes}>{result}</tool_response>"


def _loads_or_raw(arguments: str) -> Any:
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments


# ---- reading calls ----------------------------------------------------------------------------------------


def read_tool_calls(text: str, spec: AgentSpec) -> Reading:
    """Read an answer for tool calls under `spec`'s rules (see the module docstring)."""
    if not spec.offers_tools:
        return Reading()
    tools = {tool.name: tool for tool in spec.tools}
    text = text.strip()
    blocks, prose = _call_blocks(text)
    if blocks:
        if len(prose) > MAX_PROSE_AROUND_CALLS:
            return Reading()
        return _checked([_call_object(_strip_fence(block)) for block in blocks], tools, spec, canonical=True)
    candidate = _bare_candidate(text)
    if candidate is None:
        return Reading()
    objects = candidate if isinstance(candidate, list) else [candidate]
    if not objects or not all(_looks_like_call(item) for item in objects):
        return Reading()
    if not all(item["name"] in tools for item in objects):
        return Reading()  # JSON that names no tool of ours is an answer, not a call
    return _checked(objects, tools, spec, canonical=False)


def _call_blocks(text: str) -> tuple[list[str], str]:
    """The bodies of the `<tool_call>` blocks (the last may lack its closing tag) and the prose around them.

    Plain string search, linear in the answer: arguments can be whole files an agent writes.
    """
    blocks: list[str] = []
    prose: list[str] = []
    position = 0
    while (start := text.find(_OPEN, position)) >= 0:
        prose.append(text[position:start])
        end = text.find(_CLOSE, start)
        body_end = end if end >= 0 else len(text)
        blocks.append(text[start + len(_OPEN) : body_end].strip())
        position = body_end + len(_CLOSE) if end >= 0 else len(text)
    prose.append(text[position:])
    return blocks, "".join(prose).strip()


def _bare_candidate(text: str) -> Any:
    """The JSON of an answer that is nothing but JSON (bare or in fences); None for anything else."""
    if _FENCES_ONLY.match(text):
        values = [_json_or_none(body) for body in _ANY_FENCE.findall(text)]
        if any(value is None for value in values):
            return None
        return values[0] if len(values) == 1 else [v for value in values for v in _as_list(value)]
    if text[:1] in "{[":
        return _json_or_none(text)
    return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _looks_like_call(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and ("arguments" in item or "parameters" in item)
        and set(item) <= {"name", "arguments", "parameters", "id", "type"}
    )


def _strip_fence(block: str) -> str:
    match = _WHOLE_FENCE.match(block.strip())
    return match.group(1) if match else block


def _call_object(block: str) -> Any:
    value = _json_or_none(block)
    return value if value is not None else block


def _json_or_none(text: str) -> Any:
    """Parse JSON; retry without Perplexity's `[n]` citation markers, which it may add after values."""
    for attempt in (text, _MARKERS.sub("", text)):
        try:
            return orjson.loads(attempt)
        except orjson.JSONDecodeError:
            continue
    return None


def _checked(objects: list[Any], tools: dict[str, Tool], spec: AgentSpec, *, canonical: bool) -> Reading:
    calls: list[ToolCall] = []
    for item in objects:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            shown = item if isinstance(item, str) else orjson.dumps(item).decode()
            return Reading(problem=f"a <tool_call> block is not a JSON object with a name: {_clip(shown)}")
        name = item["name"]
        tool = tools.get(name)
        if tool is None:
            return Reading(problem=f'there is no tool named "{name}"')
        arguments, problem = _arguments(item, tool)
        if problem is not None:
            return Reading(problem=problem)
        calls.append(ToolCall(new_call_id(), name, orjson.dumps(arguments).decode(), tool.kind))
    if spec.choice == "named":
        calls = [call for call in calls if call.name == spec.named]
        if not calls:
            return Reading(problem=f'the tool "{spec.named}" was not called')
    if not spec.parallel:
        calls = calls[:1]
    return Reading(calls=tuple(calls))


def _arguments(item: dict[str, Any], tool: Tool) -> tuple[Any, str | None]:
    raw = item.get("arguments", item.get("parameters"))
    if tool.kind == "custom":
        raw = _custom_arguments(raw, item)
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        parsed = _json_or_none(raw) if raw.strip() else {}
        if parsed is None:
            return None, f'the arguments of "{tool.name}" are not valid JSON'
        raw = parsed
    if not isinstance(raw, dict):
        return None, f'the arguments of "{tool.name}" are not a JSON object'
    problem = _schema_problem(raw, tool.parameters)
    if problem is not None:
        return None, f'the arguments of "{tool.name}" do not match its parameters: {problem}'
    return raw, None


def _custom_arguments(raw: Any, item: dict[str, Any]) -> Any:
    """A freeform tool's arguments: `{"input": ...}`, however the model wrote its text (the whole arguments as a
    string, or `input` beside the name)."""
    if raw is None and isinstance(item.get("input"), str):
        return {"input": item["input"]}
    if isinstance(raw, str):
        parsed = _json_or_none(raw)
        return parsed if isinstance(parsed, dict) and "input" in parsed else {"input": raw}
    return raw


def _schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    try:
        validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    except jsonschema.exceptions.SchemaError as exc:
        return f"the schema itself is invalid ({exc.message})"
    if validator.is_valid(value):  # the usual case, without collecting errors
        return None
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{error.message}" + (f" (at {where})" if where else "")


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Any:
    """A checked validator for a schema (by its canonical JSON): agents send the same tools every turn."""
    schema = orjson.loads(schema_json)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _clip(text: str, size: int = 200) -> str:
    return text if len(text) <= size else text[:size] + "…"


# ---- reading JSON output ----------------------------------------------------------------------------------


def read_json_output(text: str, output: OutputFormat) -> tuple[str | None, str | None]:
    """The JSON an answer holds, as compact text, or a problem: (json_text, None) or (None, problem).

    Fences and prose around the JSON are dropped, and so are citation markers, also inside its strings.
    """
    body = _json_body(text.strip())
    value = _json_or_none(body) if body is not None else None
    if value is None:
        return None, "the answer holds no JSON value"
    value = _without_markers(value)
    if output.kind == "json_object" and not isinstance(value, dict):
        return None, "the answer is JSON but not an object"
    if output.kind == "json_schema" and output.schema is not None:
        problem = _schema_problem(value, output.schema)
        if problem is not None:
            return None, f"the JSON does not match the schema: {problem}"
    return orjson.dumps(value).decode(), None


def _json_body(text: str) -> str | None:
    whole = _WHOLE_FENCE.match(text)
    if whole:
        return whole.group(1)
    if text[:1] in "{[":
        return text
    fenced = _ANY_FENCE.search(text)
    if fenced:
        return fenced.group(1)
    starts = [index for index in (text.find("{"), text.find("[")) if index >= 0]
    if not starts:
        return None
    start = min(starts)
    end = max(text.rfind("}"), text.rfind("]"))
    return text[start : end + 1] if end > start else None


def _without_markers(value: Any) -> Any:
    if isinstance(value, str):
        return _MARKERS.sub("", value)
    if isinstance(value, list):
        return [_without_markers(item) for item in value]
    if isinstance(value, dict):
        return {key: _without_markers(item) for key, item in value.items()}
    return value


# ---- specs from request bodies ----------------------------------------------------------------------------


def chat_agent_spec(body: dict[str, Any]) -> AgentSpec | None:
    """The AgentSpec of a Chat Completions body (`tools`/`tool_choice`, the older `functions`, `response_format`)."""
    tools = [
        Tool(f["name"], f.get("description") or "", f.get("parameters") or _EMPTY_PARAMETERS)
        for f in [t["function"] for t in body.get("tools") or () if t.get("type") == "function"]
        + list(body.get("functions") or ())
    ]
    tools += [
        custom_tool(c["name"], c.get("description") or "", c.get("format"))
        for c in [t["custom"] for t in body.get("tools") or () if t.get("type") == "custom"]
    ]
    choice = body.get("tool_choice")
    if choice is None and body.get("function_call") is not None:
        legacy = body["function_call"]
        choice = {"type": "function", "function": legacy} if isinstance(legacy, dict) else legacy
    fmt = body.get("response_format") or {}
    output = None
    if fmt.get("type") == "json_object":
        output = OutputFormat("json_object")
    elif fmt.get("type") == "json_schema":
        details = fmt.get("json_schema") or {}
        output = OutputFormat("json_schema", details.get("schema"), details.get("name"))
    return _spec(tools, choice, body.get("parallel_tool_calls"), output, "response_format")


def responses_agent_spec(body: dict[str, Any]) -> AgentSpec | None:
    """The AgentSpec of a Responses body: flat function tools, `tool_choice`, `text.format`.

    Web search tools are not part of it: Perplexity searches anyway, and the Responses family reports the search
    as a `web_search_call` item. A tool choice that names a built-in tool is the same as "auto".
    """
    tools = [
        Tool(t["name"], t.get("description") or "", t.get("parameters") or _EMPTY_PARAMETERS)
        if t["type"] == "function"
        else custom_tool(t["name"], t.get("description") or "", t.get("format"))
        for t in body.get("tools") or ()
        if t.get("type") in ("function", "custom") and isinstance(t.get("name"), str)
    ]
    fmt = (body.get("text") or {}).get("format") or {}
    output = None
    if fmt.get("type") == "json_object":
        output = OutputFormat("json_object")
    elif fmt.get("type") == "json_schema":
        output = OutputFormat("json_schema", fmt.get("schema"), fmt.get("name"))
    return _spec(tools, _chat_choice(body.get("tool_choice")), body.get("parallel_tool_calls"), output, "text.format")


def anthropic_agent_spec(body: dict[str, Any]) -> AgentSpec | None:
    """The AgentSpec of an Anthropic Messages body: client tools (`input_schema`), `tool_choice`, and structured
    output (`output_config.format`, or the older top-level `output_format`).

    Server tools (a versioned `type` such as `web_search_20250305`) are not part of it: the Messages family
    answers web search natively and runs no other server tool.
    """
    tools = [
        Tool(t["name"], t.get("description") or "", t.get("input_schema") or _EMPTY_PARAMETERS)
        for t in body.get("tools") or ()
        if t.get("type") in (None, "custom") and isinstance(t.get("name"), str)
    ]
    choice = body.get("tool_choice") or {}
    parallel = not choice.get("disable_parallel_tool_use")
    mode = {"any": "required", "tool": "function"}.get(choice.get("type"), choice.get("type") or "auto")
    chat_choice: Any = {"type": "function", "function": {"name": choice.get("name")}} if mode == "function" else mode
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format") or {}
    output = OutputFormat("json_schema", fmt.get("schema")) if fmt.get("type") == "json_schema" else None
    return _spec(tools, chat_choice, parallel, output, "output_config.format")


def _chat_choice(choice: Any) -> Any:
    """A Responses `tool_choice` in the chat form `_spec` reads (Responses names tools flat)."""
    if choice is None or isinstance(choice, str):
        if choice not in (None, "auto", "none", "required"):
            raise APIError(400, _CHOICE_HINT, code="invalid_value", param="tool_choice")
        return choice
    if not isinstance(choice, dict):
        raise APIError(400, _CHOICE_HINT, code="invalid_value", param="tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        if not isinstance(choice.get("name"), str):
            raise APIError(400, f"tool_choice of type '{kind}' needs a 'name'.", param="tool_choice.name")
        return {"type": kind, kind: {"name": choice["name"]}}
    if kind == "allowed_tools":
        tools = choice.get("tools")
        if not isinstance(tools, list) or choice.get("mode") not in ("auto", "required"):
            message = "tool_choice of type 'allowed_tools' needs 'mode' (auto or required) and a 'tools' array."
            raise APIError(400, message, code="invalid_value", param="tool_choice")
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice["mode"], "tools": tools}}
    if isinstance(kind, str) and kind.startswith("web_search"):
        return "auto"
    raise APIError(400, _CHOICE_HINT, code="invalid_value", param="tool_choice")


_CHOICE_HINT = (
    "tool_choice must be 'none', 'auto', 'required', {\"type\": \"function\", \"name\": ...}, "
    '{"type": "allowed_tools", ...} or a web search tool.'
)


_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def _spec(
    tools: list[Tool], choice: Any, parallel: bool | None, output: OutputFormat | None, output_param: str
) -> AgentSpec | None:
    mode, named = "auto", None
    if isinstance(choice, str) and choice in ("auto", "none", "required"):
        mode = choice
    elif isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("function", "custom"):
            mode, named = "named", (choice.get(kind) or {}).get("name")
        elif kind == "allowed_tools":
            allowed = choice.get("allowed_tools") or {}
            names = {_tool_name(t) for t in allowed.get("tools") or ()}
            tools = [tool for tool in tools if tool.name in names]
            mode = "required" if allowed.get("mode") == "required" else "auto"
    if mode == "named" and named not in {tool.name for tool in tools}:
        message = f"tool_choice names the tool '{named}', which is not among the request's tools."
        raise APIError(400, message, code="invalid_value", param="tool_choice")
    for tool in tools:
        _check_schema(tool.parameters, f"The parameters of the tool '{tool.name}'", "tools")
    if output is not None and output.schema is not None:
        _check_schema(output.schema, "The output format's schema", output_param)
    spec = AgentSpec(tuple(tools), mode, named, parallel is not False, output)
    return spec if spec.offers_tools or output is not None else None


def _check_schema(schema: Any, what: str, param: str) -> None:
    """400 for a schema no validator can use (as OpenAI refuses one), instead of failing every answer later."""
    if not isinstance(schema, dict):
        raise APIError(400, f"{what} must be a JSON Schema object.", code="invalid_value", param=param)
    try:
        _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    except jsonschema.exceptions.SchemaError as exc:
        message = f"{what} is not a valid JSON Schema: {_clip(exc.message)}"
        raise APIError(400, message, code="invalid_value", param=param) from exc


def _tool_name(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    return entry.get("name") or (entry.get("function") or entry.get("custom") or {}).get("name")
