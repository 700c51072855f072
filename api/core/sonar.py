"""Perplexity Sonar API options the web app lacks (domain and date filters), emulated on the query and the sources."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

from .errors import APIError

__all__ = ["APPROXIMATED_HEADER", "SourceFilter", "approximated", "recency_after", "source_filter"]

# Names every request parameter this server emulated instead of passing it to Perplexity as it is.
APPROXIMATED_HEADER = "X-Perplexity-Approximated"

_DATE_FIELDS = (
    "search_after_date_filter",
    "search_before_date_filter",
    "last_updated_after_filter",
    "last_updated_before_filter",
)
# Emulated whenever a request sets them: post-filters on what Perplexity returned.
_EMULATED = (
    "search_domain_filter",
    *_DATE_FIELDS,
    "num_search_results",
    "image_domain_filter",
    "image_format_filter",
)
_US_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
# The web app's recency windows, narrowest first, with the days each one reaches back.
_WINDOWS = (("day", 1), ("week", 7), ("month", 31), ("year", 366))


def _date(value: Any, param: str) -> date | None:
    """Perplexity's "%m/%d/%Y" (its docs say so; a one-digit month or day passes too), or an ISO date."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    match = _US_DATE.match(text)
    try:
        if match:
            month, day, year = map(int, match.groups())
            return date(year, month, day)
        return date.fromisoformat(text[:10])
    except ValueError:
        message = f"'{param}' must be a date as Perplexity writes it, MM/DD/YYYY (or YYYY-MM-DD), not {text[:40]!r}."
        raise APIError(400, message, code="invalid_date", param=param) from None


def _source_date(text: str | None) -> date | None:
    """A source's date (ISO as the web app sends it, sometimes with a time); None when there is none or it is odd."""
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip()[:10])
    except ValueError:
        return None


def _domain(entry: str) -> str:
    """`https://www.Example.com/path` -> `example.com`: what a filter entry names, however a client wrote it."""
    entry = entry.strip().lower()
    host = urlsplit(entry if "//" in entry else "//" + entry).hostname or ""
    return host.removeprefix("www.")


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower().removeprefix("www.")
    except ValueError:
        return ""


def _matches(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


@dataclass(frozen=True, slots=True)
class SourceFilter:
    """Which sources a request lets through: domain allow and deny lists, and a published-date window."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    after: date | None = None
    before: date | None = None
    limit: int | None = None  # num_search_results: web sources kept at most (the first ones)
    image_allow: tuple[str, ...] = ()  # image_domain_filter (on the images return_images adds)
    image_deny: tuple[str, ...] = ()
    image_formats: tuple[str, ...] = ()  # image_format_filter: file extensions, lower case, no dot

    def keep_image(self, item: Any) -> bool:
        """True when an image (anything with `url` and `origin_url`) passes the image filters."""
        hosts = {_host(item.url), _host(item.origin_url or "")} - {""}
        if self.image_allow and not any(_matches(h, d) for h in hosts for d in self.image_allow):
            return False
        if any(_matches(h, d) for h in hosts for d in self.image_deny):
            return False
        if self.image_formats:
            path = urlsplit(item.url).path.lower()
            return path.rsplit(".", 1)[-1] in self.image_formats if "." in path else False
        return True

    def keep(self, source: Any) -> bool:
        """True when `source` (anything with `url` and `date`) passes; a source without a date passes any window."""
        if self.allow or self.deny:
            host = _host(source.url)
            if self.allow and not any(_matches(host, d) for d in self.allow):
                return False
            if any(_matches(host, d) for d in self.deny):
                return False
        if self.after or self.before:
            published = _source_date(source.date)
            if published is not None:
                if self.after and published < self.after:
                    return False
                if self.before and published > self.before:
                    return False
        return True

    def operators(self) -> str:
        """The search operators that ask Perplexity's search for the domains: `site:a.com OR site:b.com -site:c.com`."""
        allowed = " OR ".join(f"site:{d}" for d in self.allow)
        denied = " ".join(f"-site:{d}" for d in self.deny)
        return " ".join(part for part in (allowed, denied) if part)


def source_filter(body: dict[str, Any]) -> SourceFilter | None:
    """The filter a chat-shaped body asks for; None when it asks for none (the common case costs nothing)."""
    entries = [e for e in body.get("search_domain_filter") or () if isinstance(e, str) and e.strip()]
    allow = tuple(d for e in entries if not e.strip().startswith("-") and (d := _domain(e)))
    deny = tuple(d for e in entries if e.strip().startswith("-") and (d := _domain(e.strip()[1:])))
    dates = {name: _date(body.get(name), name) for name in _DATE_FIELDS}
    # The web app reports one date per source (its publication), so "last updated" reads that date too.
    afters = [d for d in (dates["search_after_date_filter"], dates["last_updated_after_filter"]) if d]
    befores = [d for d in (dates["search_before_date_filter"], dates["last_updated_before_filter"]) if d]
    after, before = max(afters, default=None), min(befores, default=None)
    limit = body.get("num_search_results")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
    images = [e for e in body.get("image_domain_filter") or () if isinstance(e, str) and e.strip()]
    image_allow = tuple(d for e in images if not e.strip().startswith("-") and (d := _domain(e)))
    image_deny = tuple(d for e in images if e.strip().startswith("-") and (d := _domain(e.strip()[1:])))
    formats = tuple(
        f.strip().lower().lstrip(".") for f in body.get("image_format_filter") or () if isinstance(f, str) and f.strip()
    )
    if not (allow or deny or after or before or limit or image_allow or image_deny or formats):
        return None
    return SourceFilter(allow, deny, after, before, limit, image_allow, image_deny, formats)


def recency_after(after: date | None, today: date | None = None) -> str | None:
    """The narrowest web-app recency window that still reaches back to `after` (None: older than a year)."""
    if after is None:
        return None
    days = ((today or datetime.now(UTC).date()) - after).days
    return next((name for name, reach in _WINDOWS if days <= reach), None)


def approximated(body: dict[str, Any]) -> list[str]:
    """The parameters of `body` this server emulates rather than passes on natively, in a stable order."""
    names = [name for name in _EMULATED if body.get(name)]
    if body.get("search_recency_filter") == "hour":
        names.append("search_recency_filter")  # the web app's narrowest window is a day
    web = body.get("web_search_options") or {}
    if web.get("search_type") in ("fast", "pro"):
        names.append("web_search_options.search_type")  # the web app's mode only hints; the model decides
    elif web.get("search_context_size") in ("low", "high"):
        names.append("web_search_options.search_context_size")  # read as a search type (service._options)
    return names
