"""Plain data types of the Perplexity client: ask options, thread ids, sources and the typed answer events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AnswerDelta",
    "AskEvent",
    "AskOptions",
    "AskResult",
    "ClarifyingQuestion",
    "ClarifyingQuestions",
    "Completed",
    "Failed",
    "MediaItem",
    "MediaUpdate",
    "ModeQuota",
    "ModelInfo",
    "ModelUpdate",
    "RateLimitStatus",
    "ReasoningDelta",
    "RelatedQuestions",
    "SessionInfo",
    "Source",
    "SourcesUpdate",
    "ThreadExport",
    "ThreadIds",
    "ThreadSummary",
    "ThreadUpdate",
    "TitleUpdate",
]

Recency = Literal["day", "week", "month", "year"]
SourceKind = Literal["web", "scholar", "social", "finance"]
SearchFocus = Literal["internet", "writing"]


@dataclass(frozen=True, slots=True)
class ThreadIds:
    """What a follow-up needs to continue a Perplexity thread (keep `read_write_token` secret)."""

    backend_uuid: str
    context_uuid: str | None = None
    read_write_token: str | None = field(default=None, repr=False)
    thread_url_slug: str | None = None


@dataclass(frozen=True, slots=True)
class AskOptions:
    """Everything one ask can set besides the query text."""

    model: str = "turbo"
    sources: tuple[SourceKind, ...] = ("web",)
    search_focus: SearchFocus = "internet"
    recency: Recency | None = None
    language: str = "en-US"
    timezone: str | None = "UTC"
    latitude: float | None = None
    longitude: float | None = None
    incognito: bool = True
    attachments: tuple[str, ...] = ()
    # The thread to continue; None starts a new thread.
    follow_up: ThreadIds | None = None
    # Model Council needs three models or the run never finishes.
    compare_models: tuple[str, ...] = ()
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """One web result Perplexity used; `[n]` in the answer refers to the n-th source (1-based)."""

    title: str
    url: str
    snippet: str = ""
    date: str | None = None
    is_attachment: bool = False


@dataclass(frozen=True, slots=True)
class MediaItem:
    """An image or video Perplexity attached to the answer."""

    url: str
    medium: str = "image"
    title: str = ""
    origin_url: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class ClarifyingQuestion:
    """One research clarifying question and its options (the first is the recommended one)."""

    question: str
    options: tuple[str, ...] = ()


# ---- answer events, in the order a consumer sees them ----------------------------------------


# AnswerDelta and ReasoningDelta are built once per streamed chunk: not frozen, whose __init__ costs about twice
# as much (object.__setattr__ per field). Treat them as immutable all the same.
@dataclass(slots=True)
class AnswerDelta:
    """New answer text; concatenating every delta gives the answer (append-only)."""

    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """New reasoning/plan text (goals, search steps, thinking), append-only."""

    text: str


@dataclass(frozen=True, slots=True)
class SourcesUpdate:
    """The complete current source list (replaces any earlier one)."""

    sources: tuple[Source, ...]


@dataclass(frozen=True, slots=True)
class MediaUpdate:
    """The complete current media list."""

    items: tuple[MediaItem, ...]


@dataclass(frozen=True, slots=True)
class ClarifyingQuestions:
    """Deep Research asked clarifying questions; informational only, the run goes on by itself."""

    title: str
    questions: tuple[ClarifyingQuestion, ...]
    auto_skip_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class RelatedQuestions:
    """Follow-up questions Perplexity suggests."""

    questions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TitleUpdate:
    """The thread title (only the terminal frame carries it)."""

    title: str


@dataclass(frozen=True, slots=True)
class ThreadUpdate:
    """Thread ids became known or changed."""

    thread: ThreadIds


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """The model Perplexity says is answering (its `display_model`) became known or changed.

    It comes with the first frame (every frame carries it) and again only if it changes; it differs from the
    model asked for when Perplexity answered with another (a fallback, Best's own pick).
    """

    model: str


@dataclass(frozen=True, slots=True)
class Failed:
    """Perplexity reported the run as failed."""

    message: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Completed:
    """The run completed; `answer` is exactly the concatenation of all AnswerDelta texts.

    `final_answer` is Perplexity's own terminal answer; it differs from `answer` only when the
    terminal frame revised text that had already been streamed (`revised` is then True).
    """

    answer: str
    final_answer: str
    revised: bool = False
    reasoning: str = ""
    sources: tuple[Source, ...] = ()
    media: tuple[MediaItem, ...] = ()
    related_questions: tuple[str, ...] = ()
    title: str | None = None
    thread: ThreadIds | None = None
    # The model that answered (`display_model`, else the `user_selected_model` echo) and the terminal `mode` echo
    # (COPILOT, CONCISE, ...), as Perplexity reported them.
    model: str | None = None
    mode: str | None = None


AskEvent = (
    AnswerDelta
    | ReasoningDelta
    | SourcesUpdate
    | MediaUpdate
    | ClarifyingQuestions
    | RelatedQuestions
    | TitleUpdate
    | ThreadUpdate
    | ModelUpdate
    | Failed
    | Completed
)


@dataclass(frozen=True, slots=True)
class AskResult:
    """A whole answer, collected from a stream."""

    answer: str
    reasoning: str
    sources: tuple[Source, ...]
    media: tuple[MediaItem, ...]
    related_questions: tuple[str, ...]
    title: str | None
    thread: ThreadIds | None
    model: str | None  # the model that answered, as Perplexity reported it (see Completed)
    clarifying_questions: tuple[ClarifyingQuestions, ...] = ()
    mode: str | None = None


# ---- account calls -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What `/api/auth/session` says about the session cookie."""

    valid: bool
    user_id: str | None = None
    email: str | None = field(default=None, repr=False)
    tier: str | None = None
    expires: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One usable upstream model from the catalogue."""

    id: str
    label: str
    provider: str | None = None
    mode: str = "search"
    tier: str | None = None
    reasoning: bool = False
    # The thinking variant's id, when this entry is the non-reasoning one of a pair.
    reasoning_variant: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ModeQuota:
    """Whether one mode (pro_search, research, labs, ...) is available, and how many uses remain."""

    available: bool
    remaining: int | None = None  # None: Perplexity did not say (Pro accounts are effectively unmetered)
    resets_at: float | None = None  # epoch seconds, when Perplexity says when the quota comes back


@dataclass(frozen=True, slots=True)
class RateLimitStatus:
    """`/rest/rate-limit/status`: per-mode availability. All-unavailable also means "not logged in"."""

    modes: dict[str, ModeQuota]
    free_queries: ModeQuota | None = None


@dataclass(frozen=True, slots=True)
class ThreadExport:
    """A thread exported as Markdown (`/rest/thread/export`)."""

    filename: str
    markdown: str


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    """One entry of the account's thread library."""

    title: str
    slug: str | None = None
    context_uuid: str | None = None
    entry_uuid: str | None = None
    last_query_at: str | None = None
