"""The MCP tools' blocking work: one ask through the same ChatService, ChatTurn and accounts as the HTTP API."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from flask import Flask

from perplexity.errors import PerplexityError
from perplexity.types import AnswerDelta, ClarifyingQuestions, ReasoningDelta

from ..core.keys import KeyEntry
from ..core.turn import ChatTurn, TurnLimits
from ..edge import redact
from ..edge.errors import to_api_error
from ..edge.quotas import CallerQuota
from ..state import ServerState

__all__ = ["SOURCES", "AskOutcome", "PerplexityTools", "ToolFailure", "clarifying_text"]

# MCP's source names -> (the chat body's search_mode, Perplexity's own source name). The options get the source
# list directly too: several sources at once are more than one search_mode can say.
SOURCES = {
    "web": ("web", "web"),
    "academic": ("academic", "scholar"),
    "finance": ("sec", "finance"),
    "social": ("social", "social"),
}
SEARCH_MODEL = "perplexity-sonar"
RESEARCH_MODEL = "perplexity-research"

Progress = Callable[[float, str], None]


class ToolFailure(Exception):
    """A tool call failed; `message` is what the HTTP API would have said (its error object's message)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class AskOutcome:
    """One answered ask, as the tools hand it back."""

    answer: str
    model: str
    thread: str
    sources: list[dict[str, str]]
    clarifying: list[ClarifyingQuestions]
    continued: bool
    listed: bool = False  # the answer ends with its own list of sources (citation mode footnotes)


class PerplexityTools:
    """Runs the tools against a Flask app's ServerState (in an app context, as a request would)."""

    def __init__(self, app: Flask, *, quota: CallerQuota | None = None) -> None:
        self.app = app
        self.meter = quota  # HTTP mode: each ask spends the caller's requests-per-minute budget

    @property
    def server(self) -> ServerState:
        return self.app.extensions["perplexity"]

    def model_ids(self) -> list[str]:
        """The public model ids GET /v1/models lists now."""
        return [model.id for model in self.server.models.models()]

    def ask(
        self,
        caller: str,
        query: str,
        *,
        key: KeyEntry | None = None,
        model: str | None = None,
        sources: list[str] | None = None,
        recency: str | None = None,
        citation_mode: str | None = None,
        thread: str | None = None,
        progress: Progress | None = None,
        fast: bool = False,
    ) -> AskOutcome:
        """Ask Perplexity (a follow-up on `thread` when it names a conversation this caller had); ToolFailure with
        the HTTP API's message on any error, when `key`'s model list leaves the model out, or when the caller's
        requests-per-minute budget (shared with the HTTP API) is spent."""
        with self.app.app_context():
            try:
                self._permit(key, model)
                if self.meter is not None:
                    self.meter.spend(caller, key.rpm if key is not None else None)
                return self._ask(caller, query, model, sources, recency, citation_mode, thread, progress, fast)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a tool error, as every one is an HTTP error
                raise self._failure(exc) from exc

    def _permit(self, key: KeyEntry | None, model: str | None) -> None:
        """The HTTP API's rule and message (KeyEntry.refusal): the id asked for or the one it resolves to."""
        if key is None or key.models is None:
            return
        resolved = self.server.models.resolve(model or str(self.server.config["DEFAULT_MODEL"]))
        refusal = key.refusal(model, resolved.id if resolved is not None else None)
        if refusal is not None:
            raise ToolFailure(refusal)

    def quota(self) -> list[dict[str, Any]]:
        """Each account's state and quota, exactly as GET /v1/quota lists them (refreshed when stale)."""
        with self.app.app_context():
            try:
                server = self.server
                max_age = float(server.config["QUOTA_REFRESH_SECONDS"])
                for account in server.pool.accounts:
                    server.pool.refresh_quota(account, max_age)
                return [account.public(time.time()) for account in server.pool.accounts]
            except Exception as exc:  # noqa: BLE001
                raise self._failure(exc) from exc

    def _ask(
        self,
        caller: str,
        query: str,
        model: str | None,
        sources: list[str] | None,
        recency: str | None,
        citation_mode: str | None,
        thread: str | None,
        progress: Progress | None,
        fast: bool,
    ) -> AskOutcome:
        if not query.strip():
            raise ToolFailure("The query is empty; give Perplexity a question.")
        server = self.server
        service = server.service
        picked = [SOURCES[name] for name in dict.fromkeys(sources or ["web"])]
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": query}]}
        if picked[0][0] is not None:
            body["search_mode"] = picked[0][0]
        if recency:
            body["search_recency_filter"] = recency
        if fast:  # the web app's quick search mode, as the Sonar API's search_type: fast asks for it
            body["web_search_options"] = {"search_type": "fast"}
        prepared = service.prepare(body, caller, anchor=thread or None)
        # Several sources at once (and social) go to Perplexity as its own list, which search_mode cannot say.
        prepared.options = replace(prepared.options, sources=tuple(name for _, name in picked))
        if thread and prepared.placement.conversation is None:
            # A thread this caller never had (or one expired) would silently become a new one under that id.
            raise ToolFailure(f"Unknown or expired thread '{thread[:100]}'; omit `thread` to start a new one.")
        mode = citation_mode or str(server.config.get("DEFAULT_CITATION_MODE") or "default")
        turn = ChatTurn(TurnLimits(citation_mode=mode))
        clarifying: list[ClarifyingQuestions] = []
        stream = service.open(prepared)
        if progress is not None:
            progress(0, f"Asking Perplexity ({prepared.model.id})")
        steps = 0
        with stream:
            for event in stream:
                if isinstance(event, ClarifyingQuestions):
                    clarifying.append(event)
                turn.feed(event)
                if progress is not None and isinstance(event, ReasoningDelta | AnswerDelta):
                    steps += 1
                    progress(steps, _progress_message(event, turn))
                if turn.finish_reason is not None:
                    break
        if turn.completed is not None and turn.completed.revised and turn.finish_reason == "stop":
            turn.rerender(turn.completed.final_answer)
        service.remember(prepared, turn.thread, turn.content, turn.title)
        return AskOutcome(
            answer=turn.content,
            model=prepared.model.id,
            thread=prepared.conversation_id,
            sources=[{"title": s.title, "url": s.url, "snippet": s.snippet} for s in turn.sources],
            clarifying=clarifying,
            continued=prepared.is_follow_up,
            listed=len(turn.answer) < len(turn.content),
        )

    def _failure(self, exc: Exception) -> ToolFailure:
        if isinstance(exc, ToolFailure):
            return exc
        if isinstance(exc, PerplexityError):
            self.server.record_upstream_error(exc)
        return ToolFailure(redact.redact(to_api_error(exc).message))


def _progress_message(event: ReasoningDelta | AnswerDelta, turn: ChatTurn) -> str:
    """A short line for the client's progress display: the latest research step, or how much is written."""
    if isinstance(event, ReasoningDelta):
        line = event.text.strip().splitlines()[-1] if event.text.strip() else "Researching"
        return line[:200]
    return f"Writing the answer ({len(turn.content)} characters)"


def clarifying_text(questions: list[ClarifyingQuestions]) -> str:
    """Perplexity's clarifying questions as text (research goes on by itself; the caller may refine and ask again)."""
    lines = []
    for block in questions:
        lines.append(block.title or "Perplexity asked clarifying questions:")
        for question in block.questions:
            options = f" (options: {', '.join(question.options)})" if question.options else ""
            lines.append(f"- {question.question}{options}")
    return "\n".join(lines)
