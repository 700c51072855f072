"""MCP tools over the official SDK's MCPServer: stdio for desktop clients, streamable HTTP behind the API keys."""

# No `from __future__ import annotations`: the SDK evaluates the tools' annotations, which name locals (the model
# list in a description) that a string annotation could not resolve.

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from flask import Flask
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from ..core.keys import KeyEntry, KeyRing
from ..edge.auth import key_ring
from ..edge.quotas import CallerQuota
from .core import RESEARCH_MODEL, SEARCH_MODEL, AskOutcome, PerplexityTools, ToolFailure, clarifying_text

__all__ = ["build_server", "run"]

SourceName = Literal["web", "academic", "social", "finance"]
Recency = Literal["hour", "day", "week", "month", "year"]
CitationMode = Literal["default", "markdown", "clean", "footnotes"]
# The arguments several tools share, described once (the SDK reads these annotations for the tools' schemas).
SourcesArg = Annotated[
    list[SourceName] | None, Field(description="Where to search: web (default), academic, social, finance.")
]
RecencyArg = Annotated[Recency | None, Field(description="Only sources from the last hour/day/week/...")]
CitationArg = Annotated[
    CitationMode | None,
    Field(
        description="default keeps [n] markers, markdown makes them [n](url) links, clean drops them, footnotes "
        "keeps them and ends the answer with a list of the sources it cites; omitted: the server's "
        "DEFAULT_CITATION_MODE."
    ),
]
ThreadArg = Annotated[
    str | None, Field(description="A thread id an earlier call returned, to continue it as a follow-up.")
]

_STDIO_CALLER = "mcp:stdio"
_SCOPE_KEY = "pplx.key"  # the ASGI scope entry where BearerAuth leaves the matched key's entry


class SourceItem(BaseModel):
    """One web result the answer used; `[n]` in the answer is the n-th (1-based)."""

    title: str
    url: str
    snippet: str = ""


class AskResult(BaseModel):
    """An answer with its sources and the thread to continue."""

    answer: str = Field(description="The answer text, with citation markers as `citation_mode` asked.")
    model: str = Field(description="The public model id that was asked.")
    thread: str = Field(description="The conversation id: pass it as `thread` to ask a follow-up on this thread.")
    continued: bool = Field(description="True when this call continued an earlier thread as a follow-up.")
    sources: list[SourceItem] = Field(description="The sources, in citation order ([1] is the first).")


class ResearchResult(AskResult):
    """A Deep Research report, plus any clarifying questions Perplexity asked on the way."""

    clarifying_questions: list[str] = Field(
        default_factory=list, description="Questions Perplexity asked to narrow the research (it went on without)."
    )


class SearchResult(BaseModel):
    """The sources a fast Perplexity search found."""

    query: str
    sources: list[SourceItem]


class QuotaResult(BaseModel):
    """Each account's state and quota, as GET /v1/quota shows them (labels only, never a token)."""

    accounts: list[dict[str, Any]]


def _sources_text(sources: list[dict[str, str]]) -> str:
    return "\n".join(f"[{n}] {s['title'] or s['url']} - {s['url']}" for n, s in enumerate(sources, 1))


def _ask_text(outcome: AskOutcome) -> str:
    parts = [outcome.answer]
    if outcome.sources and not outcome.listed:  # footnotes mode: the answer's own list is the one shown
        parts.append("Sources:\n" + _sources_text(outcome.sources))
    parts.append(f"(thread: {outcome.thread})")
    return "\n\n".join(parts)


def _error(message: str) -> CallToolResult:
    """A tool error (isError) carrying the HTTP API's message as is (a ToolError would prefix it)."""
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _caller(ctx: Context) -> tuple[str, KeyEntry | None]:
    """Who asks, and with which key: over HTTP the key BearerAuth matched, named as the HTTP API names it (so
    conversations are scoped alike), or the address on an open server; stdio's one local user otherwise."""
    request = getattr(ctx.request_context, "request", None)
    scope = getattr(request, "scope", None)
    if scope is None:
        return _STDIO_CALLER, None
    entry = scope.get(_SCOPE_KEY)
    if entry is not None:
        return entry.caller, entry
    client = getattr(request, "client", None)
    return "ip:" + (client.host if client else "unknown"), None


def _progress_sender(ctx: Context) -> Callable[[float, str], None]:
    """A progress callback for the worker thread: each report is sent on the event loop (a no-op without a
    progress token)."""

    def send(progress: float, message: str) -> None:
        anyio.from_thread.run(ctx.report_progress, progress, None, message)

    return send


def build_server(app: Flask, *, metered: bool = False) -> MCPServer:
    """The MCP server whose tools run on `app`'s accounts, models, conversation store and settings; `metered`
    (HTTP mode): each ask spends its caller's requests-per-minute budget, the one the HTTP API spends."""
    tools = PerplexityTools(app, quota=CallerQuota(app.config) if metered else None)
    models = ", ".join(tools.model_ids())
    server = MCPServer(
        "perplexity",
        instructions=(
            "Perplexity's search-grounded answers. perplexity_ask answers a question with sources (pass the returned "
            "thread to ask a follow-up); perplexity_search returns only sources; perplexity_research runs Deep "
            "Research (minutes); perplexity_quota shows the accounts' remaining quota."
        ),
    )

    async def blocking(work: Callable[[], Any]) -> Any:
        # The core is blocking (HTTP to Perplexity): it runs in a worker thread, the event loop stays free.
        return await anyio.to_thread.run_sync(work)

    async def asked(ctx: Context, query: str, **options: Any) -> AskOutcome | CallToolResult:
        """One ask on behalf of the tool call's caller: its outcome, or the tool error with the HTTP API's
        message."""
        caller, key = _caller(ctx)
        try:
            return await blocking(lambda: tools.ask(caller, query, key=key, **options))
        except ToolFailure as exc:
            return _error(exc.message)

    @server.tool(
        title="Ask Perplexity",
        description=(
            "Ask Perplexity a question and get a search-grounded answer with numbered citations and its sources "
            "(title, url, snippet). Returns a `thread` id: pass it back as `thread` to ask a follow-up in the same "
            "conversation."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def perplexity_ask(
        query: Annotated[str, Field(description="The question, in natural language.", min_length=1)],
        ctx: Context,
        model: Annotated[
            str | None, Field(description=f"A public model id (GET /v1/models); default: the server's. Now: {models}.")
        ] = None,
        sources: SourcesArg = None,
        recency: RecencyArg = None,
        citation_mode: CitationArg = None,
        thread: ThreadArg = None,
    ) -> AskResult:
        outcome = await asked(
            ctx, query, model=model, sources=sources, recency=recency, citation_mode=citation_mode, thread=thread
        )
        if isinstance(outcome, CallToolResult):
            return outcome  # type: ignore[return-value]
        structured = AskResult(
            answer=outcome.answer, model=outcome.model, thread=outcome.thread, continued=outcome.continued,
            sources=[SourceItem(**s) for s in outcome.sources],
        )  # fmt: skip
        return CallToolResult(  # type: ignore[return-value]
            content=[TextContent(type="text", text=_ask_text(outcome))],
            structured_content=structured.model_dump(mode="json"),
        )

    @server.tool(
        title="Search with Perplexity",
        description=(
            f"Search the web with Perplexity and return only the sources found (title, url, snippet), no written "
            f"answer; a fast ask ({SEARCH_MODEL})."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def perplexity_search(
        query: Annotated[str, Field(description="What to search for.", min_length=1)],
        ctx: Context,
        sources: SourcesArg = None,
        recency: RecencyArg = None,
    ) -> SearchResult:
        outcome = await asked(ctx, query, model=SEARCH_MODEL, sources=sources, recency=recency, fast=True)
        if isinstance(outcome, CallToolResult):
            return outcome  # type: ignore[return-value]
        structured = SearchResult(query=query, sources=[SourceItem(**s) for s in outcome.sources])
        text = _sources_text(outcome.sources) or "Perplexity found no sources."
        return CallToolResult(  # type: ignore[return-value]
            content=[TextContent(type="text", text=text)], structured_content=structured.model_dump(mode="json")
        )

    @server.tool(
        title="Perplexity Deep Research",
        description=(
            f"Run Perplexity Deep Research ({RESEARCH_MODEL}): many searches and a long cited report; takes minutes. "
            "Sends progress notifications when the call has a progress token. Clarifying questions Perplexity asks "
            "are returned with the report (the research goes on without answers; refine the query to use them)."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def perplexity_research(
        query: Annotated[str, Field(description="The research question or brief.", min_length=1)],
        ctx: Context,
        sources: SourcesArg = None,
        citation_mode: CitationArg = None,
        thread: ThreadArg = None,
    ) -> ResearchResult:
        outcome = await asked(
            ctx, query, model=RESEARCH_MODEL, sources=sources, citation_mode=citation_mode, thread=thread,
            progress=_progress_sender(ctx),
        )  # fmt: skip
        if isinstance(outcome, CallToolResult):
            return outcome  # type: ignore[return-value]
        questions = [q.question for block in outcome.clarifying for q in block.questions]
        structured = ResearchResult(
            answer=outcome.answer, model=outcome.model, thread=outcome.thread, continued=outcome.continued,
            sources=[SourceItem(**s) for s in outcome.sources], clarifying_questions=questions,
        )  # fmt: skip
        text = _ask_text(outcome)
        if outcome.clarifying:
            text = clarifying_text(outcome.clarifying) + "\n\n" + text
        return CallToolResult(  # type: ignore[return-value]
            content=[TextContent(type="text", text=text)], structured_content=structured.model_dump(mode="json")
        )

    @server.tool(
        title="Perplexity quota",
        description=(
            "Each configured Perplexity account's state (ok, cooling, blocked, expired...) and remaining quota per "
            "mode (pro_search, research, labs), as GET /v1/quota shows them; labels only, never a token."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def perplexity_quota() -> QuotaResult:
        try:
            accounts = await blocking(tools.quota)
        except ToolFailure as exc:
            return _error(exc.message)  # type: ignore[return-value]
        return CallToolResult(  # type: ignore[return-value]
            content=[TextContent(type="text", text=json.dumps({"accounts": accounts}, indent=2))],
            structured_content={"accounts": accounts},
        )

    return server


class BearerAuth:
    """ASGI middleware: the HTTP API's keys (OPENAI_API_KEY / API_KEYS / API_KEYS_FILE, re-read as the HTTP API
    re-reads it) as Bearer tokens; open when none is set. The matched key's entry goes into the scope, for its
    model list; an expired key is refused as on the HTTP API."""

    def __init__(self, app: Any, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        table = self.keys.table()
        if scope["type"] != "http" or table.open:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        offered = token.strip().encode() if scheme.lower() == "bearer" else b""
        entry = table.lookup(offered)  # by digest: the time taken does not tell which key matched
        if entry is not None and not entry.expired():
            scope[_SCOPE_KEY] = entry
            await self.app(scope, receive, send)
            return
        # The same messages and error object as the HTTP API's 401.
        message = "Incorrect API key provided." if offered else "Missing API key: send 'Authorization: Bearer <key>'."
        if entry is not None:
            message = "This API key has expired; ask for a new one."
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def run(app: Flask, *, http: bool = False, host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve the tools: over stdio, or streamable HTTP at http://host:port/mcp behind the API keys."""
    server = build_server(app, metered=http)  # stdio: one local user, no quota
    if not http:
        server.run("stdio")
        return
    import uvicorn  # the SDK's own HTTP server dependency

    asgi = BearerAuth(server.streamable_http_app(host=host), key_ring(app.config))
    uvicorn.run(asgi, host=host, port=port, log_level=str(app.config.get("LOG_LEVEL") or "info").lower())
