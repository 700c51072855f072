"""The OpenAPI document of every endpoint, generated from the marshmallow schemas with apispec (no network).

`build_document(secured=...)` turns the operation table below into an OpenAPI 3.1 document. Request and response
bodies come from `schemas/`; a custom field says what it accepts with `metadata={"one_of" | "any_of": (...)}`,
whose Schema classes become `$ref`s here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from schemas.anthropic import CountTokensRequestSchema, MessagesRequestSchema
from schemas.anthropic_response import AnthropicMessageResponseSchema, TokenCountSchema
from schemas.chat import ChatCompletionRequestSchema
from schemas.chat_response import ChatCompletionChunkSchema, ChatCompletionSchema
from schemas.common import Null
from schemas.completions import CompletionRequestSchema
from schemas.completions_response import TextCompletionSchema
from schemas.conversations import ConversationDeletedSchema, ConversationListSchema
from schemas.errors import AnthropicErrorResponseSchema, ErrorResponseSchema
from schemas.models import (
    AnthropicModelPageSchema,
    AnthropicModelSchema,
    ModelListSchema,
    ModelSchema,
    ModelsRefreshSchema,
)
from schemas.ops import HealthSchema, QuotaListSchema, ReadySchema, StatsSchema
from schemas.response_object import InputItemListSchema, ResponseDeletedSchema, ResponseObjectSchema
from schemas.responses import CreateResponseRequestSchema
from schemas.streams import MessageStreamEventSchema, ResponseStreamEventSchema

__all__ = ["OPERATIONS", "Operation", "build_document"]

_DESCRIPTION = """\
An OpenAI- and Anthropic-compatible API over a Perplexity Pro account: chat completions, the Responses API, legacy
completions and Anthropic's Messages API, answered by Perplexity with its sources (`citations`, `search_results`)
and reasoning; plus this server's own conversations, quota and ops endpoints.

Perplexity's options (`search_mode`, `search_recency_filter`, `search_domain_filter`, `return_images`,
`web_search_options`, ...) and this server's (`citation_mode`, `conversation_id`) are top-level request fields
(`extra_body` in the OpenAI SDK). Unknown request fields are accepted and ignored.

Errors are OpenAI error objects `{"error": {"message", "type", "param", "code"}}`, except for the Anthropic family
(`/v1/messages…`, or any request from an Anthropic client: an `anthropic-version` header, a key in `x-api-key`
alone, or an Anthropic SDK's user agent), which gets Anthropic's `{"type": "error", "error": {"type", "message"}}`
and 529 `overloaded_error` where others get 502. Once a stream has started, an error arrives as its last event.
A method a path does not list gets 405 with an `Allow` header. Every response carries `X-Request-ID`."""

# ---- statuses -----------------------------------------------------------------------------------------------

_STATUS_TEXT = {
    400: "The request is invalid (`invalid_request_error`: a bad field, unparseable JSON, an unsupported option).",
    401: "No API key, or a wrong one (`invalid_api_key`).",
    403: "The key may not use this model (`permission_error` / `model_not_allowed`).",
    404: "Unknown model, conversation or stored response.",
    408: "The request body did not arrive in time (`request_timeout`).",
    409: "Conflict.",
    413: "The request body is larger than MAX_REQUEST_BYTES.",
    415: "The request body is not JSON (`Content-Type: application/json`).",
    429: "Too many requests (the key's quota or concurrent streams), or Perplexity's rate limit; see `retry-after`.",
    500: "The server failed (a bug, or the model broke the tool or JSON protocol).",
    502: "Perplexity failed, blocked the request, or could not be reached.",
    503: "The Perplexity session is not configured or not valid, or the server is shutting down.",
    504: "Perplexity did not answer in time.",
    529: "Perplexity is unavailable (Anthropic's `overloaded_error`; other families get 502).",
}

# The statuses each kind of endpoint can answer, besides its success (api/edge/errors.py and the views).
_ANSWERING = (400, 401, 403, 404, 408, 413, 415, 429, 500, 502, 503, 504)
_MESSAGES = (400, 401, 403, 404, 408, 413, 415, 429, 500, 503, 504, 529)
_READING = (401, 429, 500)


@dataclass(frozen=True)
class Operation:
    """One documented endpoint: its body, its success answer (and stream), its errors and parameters."""

    method: str
    path: str
    summary: str
    tag: str
    ok: type[Schema] | None  # None: not JSON (see `ok_content`)
    body: type[Schema] | None = None
    stream_event: dict[str, Any] | None = None  # the `data` of each SSE event, when the answer can stream
    errors: tuple[int, ...] = _READING
    anthropic: bool = False  # errors in Anthropic's shape only
    public: bool = False  # no key needed
    parameters: tuple[dict[str, Any], ...] = ()
    ok_content: dict[str, Any] = field(default_factory=dict)
    ok_alternative: type[Schema] | None = None  # the Anthropic-shaped success of a shared path
    description: str = ""
    example: dict[str, Any] | None = None  # a request body that works (Swagger UI's "Try it out" starts from it)


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"in": "query", "name": name, "required": False, "description": description, "schema": schema}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"in": "path", "name": name, "required": True, "description": description, "schema": {"type": "string"}}


_END_USER = (
    _query(
        "user", "The end user the stored objects belong to (as the requests that made them named it).", type="string"
    ),  # noqa: E501
    _query("safety_identifier", "Same as `user`; takes precedence.", type="string"),
)
_RESPONSE_ID = _path("response_id", "A stored response's id (`resp_…`).")

# `data` of an SSE event: JSON of `schemas` (a `$ref`-able schema or several), or the literal `[DONE]`.
_CHAT_EVENT = {"done": True, "schemas": (ChatCompletionChunkSchema, ErrorResponseSchema)}
_TEXT_EVENT = {"done": True, "schemas": (TextCompletionSchema, ErrorResponseSchema)}
_RESPONSE_EVENT = {"done": False, "schemas": (ResponseStreamEventSchema, ErrorResponseSchema)}
_MESSAGE_EVENT = {"done": False, "schemas": (MessageStreamEventSchema,)}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v1/chat/completions", "Create a chat completion", "Chat", ChatCompletionSchema,
        body=ChatCompletionRequestSchema, stream_event=_CHAT_EVENT, errors=_ANSWERING,
        example={
            "model": "perplexity-auto",
            "messages": [{"role": "user", "content": "What changed in Python 3.13?"}],
            "search_recency_filter": "month",
            "citation_mode": "markdown",
        },
        description="With `stream: true`, `chat.completion.chunk` events, then `data: [DONE]`.",
    ),
    Operation(
        "post", "/v1/completions", "Create a (legacy) text completion", "Completions", TextCompletionSchema,
        body=CompletionRequestSchema, stream_event=_TEXT_EVENT, errors=_ANSWERING,
        example={"model": "perplexity-auto", "prompt": "The three largest moons of Jupiter are"},
    ),
    Operation(
        "post", "/v1/responses", "Create a response", "Responses", ResponseObjectSchema,
        body=CreateResponseRequestSchema, stream_event=_RESPONSE_EVENT, errors=_ANSWERING,
        example={"model": "perplexity-auto", "input": "Who won the last Tour de France?", "return_images": True},
        description="With `stream: true`, Responses API events; with `background: true`, a queued response.",
    ),
    Operation(
        "get", "/v1/responses/{response_id}", "Retrieve a stored response", "Responses", ResponseObjectSchema,
        stream_event=_RESPONSE_EVENT, errors=(400, *_READING, 404),
        parameters=(
            _RESPONSE_ID,
            _query("stream", "`true`: a background response's events (stored, then live).", type="boolean"),
            _query("starting_after", "With `stream`: the events after this sequence number.", type="integer"),
            *_END_USER,
        ),
    ),
    Operation(
        "delete", "/v1/responses/{response_id}", "Delete a stored response", "Responses", ResponseDeletedSchema,
        errors=(*_READING, 404), parameters=(_RESPONSE_ID, *_END_USER),
    ),
    Operation(
        "post", "/v1/responses/{response_id}/cancel", "Cancel a background response", "Responses",
        ResponseObjectSchema, errors=(400, *_READING, 404), parameters=(_RESPONSE_ID, *_END_USER),
    ),
    Operation(
        "get", "/v1/responses/{response_id}/input_items", "List a stored response's input items", "Responses",
        InputItemListSchema, errors=(400, *_READING, 404),
        parameters=(
            _RESPONSE_ID,
            _query("limit", "Items per page.", type="integer", minimum=1, maximum=100, default=20),
            _query("order", "Oldest (`asc`) or newest (`desc`) first.", type="string", enum=["asc", "desc"]),
            _query("after", "The id of the item to list after.", type="string"),
            *_END_USER,
        ),
    ),
    Operation(
        "post", "/v1/messages", "Create a message (Anthropic)", "Anthropic", AnthropicMessageResponseSchema,
        body=MessagesRequestSchema, stream_event=_MESSAGE_EVENT, errors=_MESSAGES, anthropic=True,
        example={"model": "perplexity-auto", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello"}]},
        description="With `stream: true`, Anthropic's named events (`message_start` ... `message_stop`).",
    ),
    Operation(
        "post", "/v1/messages/count_tokens", "Count a message's input tokens (Anthropic)", "Anthropic",
        TokenCountSchema, body=CountTokensRequestSchema, errors=(400, 401, 403, 404, 408, 413, 415, 429, 500),
        example={"model": "perplexity-auto", "messages": [{"role": "user", "content": "Hello"}]},
        anthropic=True, description="An estimate (four characters a token); nothing is asked of Perplexity.",
    ),
    Operation(
        "get", "/v1/models", "List models", "Models", ModelListSchema, ok_alternative=AnthropicModelPageSchema,
        errors=(400, *_READING),
        parameters=(
            _query("limit", "Anthropic clients: page size.", type="integer", minimum=1, maximum=1000),
            _query("after_id", "Anthropic clients: the page after this id.", type="string"),
            _query("before_id", "Anthropic clients: the page before this id.", type="string"),
        ),
        description="OpenAI's list; Anthropic clients get Anthropic's paged `ModelInfo` list.",
    ),
    Operation(
        "get", "/v1/models/{model_id}", "Retrieve a model", "Models", ModelSchema,
        ok_alternative=AnthropicModelSchema, errors=(*_READING, 403, 404),
        parameters=(_path("model_id", "A public model id (or an upstream one); may contain `/`."),),
    ),
    Operation(
        "post", "/v1/models/refresh", "Reload the model catalogue from Perplexity", "Models", ModelsRefreshSchema
    ),
    Operation("get", "/v1/quota", "Each account's state and quota", "Ops", QuotaListSchema),
    Operation(
        "get", "/conversations", "List the caller's remembered conversations", "Conversations",
        ConversationListSchema, parameters=_END_USER,
    ),
    Operation(
        "delete", "/conversations/{conversation_id}", "Forget a conversation", "Conversations",
        ConversationDeletedSchema, errors=(*_READING, 404),
        parameters=(_path("conversation_id", "The conversation's id."), *_END_USER),
    ),
    Operation("get", "/health", "Liveness", "Ops", HealthSchema, errors=(), public=True),
    Operation(
        "get", "/health/ready", "Readiness", "Ops", ReadySchema, errors=(503,), public=True,
        description="503 with `reasons` until the session is valid and the catalogue loaded, and while draining.",
    ),
    Operation("get", "/stats", "Counters for humans", "Ops", StatsSchema, errors=(429,), public=True),
    Operation(
        "get", "/metrics", "Prometheus metrics", "Ops", None, errors=(), public=True,
        ok_content={"text/plain": {"schema": {"type": "string"}}},
    ),
)  # fmt: skip


# ---- custom fields -> JSON Schema ---------------------------------------------------------------------------


def _resolve(converter: Any, node: Any) -> Any:
    """`node` with every Schema class in it replaced by its `$ref` (registering it)."""
    if isinstance(node, type) and issubclass(node, Schema):
        return converter.resolve_nested_schema(node)
    if isinstance(node, dict):
        return {key: _resolve(converter, value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_resolve(converter, item) for item in node]
    return node


def _alternatives(self: Any, field: fields.Field, ret: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: a field's `one_of` / `any_of` metadata, and `Null` fields."""
    if isinstance(field, Null):
        return {"type": "null"}
    for key, keyword in (("one_of", "oneOf"), ("any_of", "anyOf")):
        options = field.metadata.get(key)
        if options:
            choices = _resolve(self, list(options))
            if field.allow_none:
                choices.append({"type": "null"})
            return {keyword: choices}
    return {}


# ---- the document -------------------------------------------------------------------------------------------


def _ref(spec: APISpec, schema: type[Schema]) -> dict[str, Any]:
    plugin = spec.plugins[0]
    assert isinstance(plugin, MarshmallowPlugin) and plugin.converter is not None
    return plugin.converter.resolve_nested_schema(schema)


def _sse_schema(spec: APISpec, event: dict[str, Any]) -> dict[str, Any]:
    """One SSE event (`{event, data, id}` as an SSE parser reads it); its `data` is JSON of the event schemas."""
    refs = [_ref(spec, schema) for schema in event["schemas"]]
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": refs[0] if len(refs) == 1 else {"oneOf": refs},
    }
    data = {"if": {"const": "[DONE]"}, "else": json_data} if event["done"] else json_data
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": data, "id": {"type": "string"}},
    }


def _error_content(spec: APISpec, operation: Operation) -> dict[str, Any]:
    anthropic = _ref(spec, AnthropicErrorResponseSchema)
    schema = anthropic if operation.anthropic else {"oneOf": [_ref(spec, ErrorResponseSchema), anthropic]}
    return {"application/json": {"schema": schema}}


_REQUEST_ID = {
    "X-Request-ID": {
        "description": "The request's id (the client's own `X-Request-ID` when it sent a usable one).",
        "required": True,
        "schema": {"type": "string"},
    }
}
_RETRY_AFTER = {"retry-after": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}


def _responses(spec: APISpec, operation: Operation) -> dict[str, Any]:
    if operation.ok is None:
        ok_content = operation.ok_content
    else:
        ok_schema = _ref(spec, operation.ok)
        if operation.ok_alternative is not None:
            ok_schema = {"oneOf": [ok_schema, _ref(spec, operation.ok_alternative)]}
        ok_content = {"application/json": {"schema": ok_schema}}
        if operation.stream_event is not None:
            ok_content["text/event-stream"] = {"schema": _sse_schema(spec, operation.stream_event)}
    ok_text = "The answer." if operation.stream_event is None else "The answer, whole or as server-sent events."
    responses: dict[str, Any] = {"200": {"description": ok_text, "headers": _REQUEST_ID, "content": ok_content}}
    for status in operation.errors:
        headers = {**_REQUEST_ID, **(_RETRY_AFTER if status == 429 else {})}
        content = _error_content(spec, operation)
        if operation.ok is ReadySchema:  # not ready: the same body, with the reasons
            content = {"application/json": {"schema": _ref(spec, ReadySchema)}}
        responses[str(status)] = {"description": _STATUS_TEXT[status], "headers": headers, "content": content}
    return responses


def _operation(spec: APISpec, operation: Operation) -> dict[str, Any]:
    body: dict[str, Any] = {
        "summary": operation.summary,
        "tags": [operation.tag],
        "operationId": "_".join([operation.method, *(part.strip("{}") for part in operation.path.split("/") if part)]),
        "responses": _responses(spec, operation),
    }
    if operation.description:
        body["description"] = operation.description
    if operation.parameters:
        body["parameters"] = list(operation.parameters)
    if operation.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(spec, operation.body)}}
        if operation.example is not None:
            examples = {"whole": {"summary": "The whole answer", "value": operation.example}}
            if operation.stream_event is not None:
                streamed = {**operation.example, "stream": True}
                examples["streamed"] = {"summary": "Streamed as server-sent events", "value": streamed}
            content["application/json"]["examples"] = examples
        body["requestBody"] = {"required": True, "content": content}
    if operation.public:
        body["security"] = []
    return body


def build_document(*, secured: bool = False, server_version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document; `secured`: API keys are configured; `server_version`: the document's version."""
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="Perplexity → OpenAI API",
        version=server_version,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": _DESCRIPTION},
    )
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_alternatives)
    if secured:
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer", "description": "API key"})
        spec.components.security_scheme(
            "x-api-key", {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "API key"}
        )
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method] = _operation(spec, operation)
    for path, methods in paths.items():
        spec.path(path=path, operations=methods)
    document = spec.to_dict()
    if secured:
        document["security"] = [{"bearer": []}, {"x-api-key": []}]
    return document


def _schema_name(schema: Any) -> str:
    """Component names: the class name without `Schema`, prefixed by its module's where two modules share one."""
    cls = schema if isinstance(schema, type) else type(schema)
    name = cls.__name__.removesuffix("Schema")
    if cls.__name__ in _shared_names():
        module = cls.__module__.rsplit(".", 1)[-1]
        name = "".join(part.title() for part in module.split("_")) + name
    return name


def _shared_names() -> set[str]:
    """Names of Schema classes that more than one module defines (MessageSchema, ToolSchema, ...)."""
    seen: dict[str, set[str]] = {}
    pending = [Schema]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("schemas."):
            seen.setdefault(cls.__name__, set()).add(cls.__module__)
    return {name for name, modules in seen.items() if len(modules) > 1}
