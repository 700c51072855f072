"""The session token out of whatever people paste: a raw value, a Cookie header, chunked cookies, exported JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .session import COOKIE_NAME

__all__ = ["normalize_session_token", "session_token_from_cookies"]

# RFC 6265's cookie-octet: what a cookie value may hold (no whitespace, quote, comma, semicolon or backslash).
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")
# `name=value` anywhere in text: a Cookie or Set-Cookie header, a curl command, a `.env` line. The name must not
# be glued to a longer one on its left; the value may be double-quoted, as RFC 6265 allows, and ends at a single
# quote too (a cookie-octet, but the shell quoting of a pasted curl command, never part of a NextAuth token).
_PAIR = re.compile(
    r"(?<![\w.-])"
    + re.escape(COOKIE_NAME)
    + r"(?:\.(\d+))?\s*=\s*\"?([\x21\x23-\x26\x28-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*)"
)
_NAME_PAIR = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=")
_HEADER_PREFIX = re.compile(r"^\s*(?:set-)?cookie\s*:", re.I)
_MAX_CHUNKS = 64


def normalize_session_token(text: str) -> str:
    """Return the session token that `text` holds, in any form people paste.

    Accepted: the raw value (quoted or not); `__Secure-next-auth.session-token=value`; a whole `Cookie:` header
    (or a curl command) with other cookies around it; NextAuth's chunked `.0`, `.1`, ... cookies (joined in
    order); a browser extension's cookie export as JSON (a list of `{"name", "value", ...}` objects, as
    EditThisCookie and Cookie-Editor write it, a `{name: value}` object, or Playwright's `{"cookies": [...]}`);
    a Netscape cookies.txt. Raises ValueError, with a message that never quotes a value, when there is none.
    """
    text = text.strip().lstrip("\ufeff").strip()
    if not text:
        raise ValueError(f"nothing pasted: give the value of the {COOKIE_NAME} cookie")
    structured = _json_pairs(text)
    if structured is None:
        structured = _netscape_pairs(text)
    pairs = structured if structured is not None else [(_name(m.group(1)), m.group(2)) for m in _PAIR.finditer(text)]
    token = _pick(pairs)
    if token is None and structured is None and not pairs:
        token = _bare_value(text)
    if token is None and any(name == COOKIE_NAME or _chunk(name) is not None for name, _ in pairs):
        raise ValueError(f"the {COOKIE_NAME} cookie in the pasted text is empty")
    if token is None:
        names = sorted({name for name, _ in pairs}) or _names_in(text)
        found = f" (found: {', '.join(names[:8])})" if names else ""
        raise ValueError(f"no {COOKIE_NAME} cookie in the pasted text{found}")
    if not _COOKIE_VALUE.fullmatch(token):
        raise ValueError(f"the {COOKIE_NAME} value holds characters a cookie cannot (spaces, quotes, ';' or ',')")
    return token


def session_token_from_cookies(cookies: Mapping[str, str]) -> str | None:
    """The session token among a response's cookies (name -> value), chunks joined; None if it set none."""
    pairs = [(name, value) for name, value in cookies.items() if name == COOKIE_NAME or _chunk(name) is not None]
    try:
        return _pick(pairs)
    except ValueError:  # chunks with a gap: not a usable token
        return None


def _name(index: str | None) -> str:
    return COOKIE_NAME if index is None else f"{COOKIE_NAME}.{index}"


def _chunk(name: str) -> int | None:
    prefix = COOKIE_NAME + "."
    suffix = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(suffix) if suffix.isdigit() else None


def _pick(pairs: Iterable[tuple[str, str]]) -> str | None:
    """The token from (name, value) pairs: the unchunked cookie, else the chunks `.0` ... `.n` joined."""
    whole: set[str] = set()
    chunks: dict[int, set[str]] = {}
    for name, raw in pairs:
        value = _unquote(raw.strip())
        if not value:  # an empty value deletes a cookie (NextAuth clears the unchunked one when it chunks)
            continue
        if name == COOKIE_NAME:
            whole.add(value)
        elif (index := _chunk(name)) is not None:
            chunks.setdefault(index, set()).add(value)
    if len(whole) > 1 or any(len(values) > 1 for values in chunks.values()):
        raise ValueError(f"several different {COOKIE_NAME} cookies in the pasted text: paste only one session's")
    if whole:
        return whole.pop()
    if not chunks:
        return None
    count = max(chunks) + 1
    missing = [f".{i}" for i in range(count) if i not in chunks]
    if missing or count > _MAX_CHUNKS:
        raise ValueError(f"the chunked {COOKIE_NAME} cookie is incomplete: {', '.join(missing[:5])} missing")
    return "".join(chunks[i].pop() for i in range(count))


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].strip()
    return value


def _json_pairs(text: str) -> list[tuple[str, str]] | None:
    """(name, value) pairs of a JSON cookie export; None when `text` is not JSON of a known shape."""
    if text[0] not in "[{":
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("cookies"), list):  # Playwright's storage state
        data = data["cookies"]
    if isinstance(data, dict) and "name" in data and "value" in data:  # one cookie object
        data = [data]
    if isinstance(data, list):
        return [pair for item in data if (pair := _cookie_object(item)) is not None]
    if isinstance(data, dict):
        return [(str(name), value) for name, value in data.items() if isinstance(value, str)]
    return None


def _cookie_object(item: Any) -> tuple[str, str] | None:
    if not isinstance(item, dict):
        return None
    name = item.get("name", item.get("Name"))
    value = item.get("value", item.get("Value"))
    return (name, value) if isinstance(name, str) and isinstance(value, str) else None


def _netscape_pairs(text: str) -> list[tuple[str, str]] | None:
    """(name, value) pairs of a Netscape cookies.txt (tab-separated, name and value last); None if not one."""
    pairs = []
    for line in text.splitlines():
        if line.startswith("#HttpOnly_"):  # curl marks HttpOnly cookies this way; the rest of the line is data
            line = line[len("#HttpOnly_") :]
        fields = line.split("\t")
        if len(fields) >= 7 and not line.startswith("#"):
            pairs.append((fields[5].strip(), fields[6].strip()))
    return pairs or None


def _bare_value(text: str) -> str | None:
    """The value itself, possibly quoted or after `Cookie:`; None when the text is something else."""
    value = _unquote(_HEADER_PREFIX.sub("", text, count=1).strip())
    # `other-cookie=...`: cookies, but not ours (a value's own trailing `=` padding is not a name).
    if _NAME_PAIR.match(value) and value.rstrip("=").count("=") + value.count(";"):
        return None
    return value


def _names_in(text: str) -> list[str]:
    """Cookie names in a `name=value; ...` text, to say what was pasted instead (never the values)."""
    body = _HEADER_PREFIX.sub("", text, count=1)
    return sorted({m.group(1) for part in body.split(";") if (m := _NAME_PAIR.match(part.strip()))})
