"""API keys and their policy: OPENAI_API_KEY / API_KEYS (no policy), and API_KEYS_FILE's keys with a label, the
models they may use, their own quotas and an expiry; the file is re-read when it changes.

A key is looked up by its SHA-256 digest (one dict lookup, then `compare_digest` on the digest), so the time taken
does not depend on which key matched or how many there are. The caller id a key scopes conversations by is
`key:<sha256[:16]>` whatever its label, so relabelling a key never loses its threads. No message here ever
repeats a key: entries are named by their index and label.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

__all__ = ["KeyEntry", "KeyFileError", "KeyRing", "KeyTable", "key_id", "load_keys_file"]

log = logging.getLogger(__name__)

_FIELDS = ("key", "label", "models", "rpm", "streams", "expires")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}")
_MIN_KEY = 8  # shorter keys are guessable, and too short for the log redaction to mask (api/edge/redact.py)
_NO_DIGEST = bytes(32)
_SHOWN_MODEL = 100  # characters of a model id a refusal repeats
OTHER = "-"  # the metrics label of every key that is not in the file (bounded cardinality)


class KeyFileError(ValueError):
    """API_KEYS_FILE cannot be used; the message names the file and the entry, never a key."""


def key_id(key: bytes) -> str:
    """The caller id of a key: `key:` and its SHA-256's first 16 hex digits."""
    return "key:" + hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One accepted key's identity and policy (None: the server-wide setting applies)."""

    caller: str  # scopes conversations and quotas
    label: str  # shown in logs: the file's label, else the caller id
    metric: str  # the metrics label: a file key's label (or id), OTHER for any other key
    models: tuple[str, ...] | None = None  # exact ids or fnmatch patterns, case-insensitive; None: every model
    rpm: int | None = None
    streams: int | None = None  # 0: no cap
    expires: datetime | None = None

    def allows(self, *names: str | None) -> bool:
        """Whether any of `names` (the id asked for, the id it resolved to) is one this key may use."""
        if self.models is None:
            return True
        wanted = [name.lower() for name in names if name]
        return any(fnmatchcase(name, pattern) for name in wanted for pattern in self.models)

    def refusal(self, asked: str | None, resolved: str | None) -> str | None:
        """Why this key may not use the model (`asked`, or the id it resolved to), as the client is told; None
        when it may. The one rule for the HTTP API's 403 and MCP's tool error."""
        if self.allows(asked, resolved):
            return None
        name = asked or resolved or ""
        shown = name if len(name) <= _SHOWN_MODEL else name[:_SHOWN_MODEL] + "…"
        return f"This API key is not allowed to use the model '{shown}'."

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the key's expiry has passed."""
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires


class KeyTable:
    """The accepted keys by digest. `open`: no key is configured at all (the API is open to anyone)."""

    def __init__(self, entries: Iterable[tuple[bytes, KeyEntry]], *, open_: bool) -> None:
        digests = ((hashlib.sha256(key).digest(), entry) for key, entry in entries)
        self._by_digest = {digest: (digest, entry) for digest, entry in digests}
        self.open = open_ and not self._by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, offered: bytes) -> KeyEntry | None:
        """The entry of the offered key, or None. Hashing first makes the lookup's time independent of the keys."""
        digest = hashlib.sha256(offered).digest()
        stored, entry = self._by_digest.get(digest, (_NO_DIGEST, None))
        return entry if hmac.compare_digest(stored, digest) else None

    def labels(self) -> list[str]:
        """The metrics labels of every key (for tests and the start-up line)."""
        return sorted({entry.metric for _, entry in self._by_digest.values()})


# ---- the file ---------------------------------------------------------------------------------------------


def _entry_name(index: int, item: Any) -> str:
    label = item.get("label") if isinstance(item, dict) else None
    if isinstance(label, str) and _LABEL.fullmatch(label):
        return f"entry {index} ({label})"
    return f"entry {index}"


def _expiry(value: Any) -> datetime:
    """An ISO 8601 date (the key works through that day, UTC) or date-time (UTC without an offset)."""
    if not isinstance(value, str):
        raise ValueError("expires must be an ISO 8601 date or date-time string")
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expires must be an ISO 8601 date or date-time, not {text[:40]!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        shown = repr(value) if isinstance(value, int | float | str) and len(repr(value)) <= 40 else type(value).__name__
        raise ValueError(f"{name} must be a whole number of at least {minimum}, not {shown}")
    return value


def _models(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(m, str) and m.strip() for m in value):
        raise ValueError("models must be a list of model ids or patterns (strings)")
    if not value:
        raise ValueError("models is empty: omit it to allow every model")
    return tuple(m.strip().lower() for m in value)


def _parse_entry(item: Any) -> tuple[bytes, KeyEntry]:
    if not isinstance(item, dict):
        raise ValueError("must be an object with a key")
    unknown = sorted(set(item) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {', '.join(repr(u[:40]) for u in unknown)} (known: {', '.join(_FIELDS)})")
    raw = item.get("key")
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("key must be a non-empty string")
    text = raw.strip()
    if len(text) < _MIN_KEY or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ValueError(f"key must be at least {_MIN_KEY} printable characters without spaces")
    key = text.encode()
    label = item.get("label")
    if label is not None and (not isinstance(label, str) or not _LABEL.fullmatch(label)):
        raise ValueError("label must be 1-64 letters, digits or . _ @ : + - (starting with a letter or digit)")
    if label is not None and text in label:
        raise ValueError("label must not contain the key")
    caller = key_id(key)
    models = _models(item["models"]) if item.get("models") is not None else None
    rpm = _whole("rpm", item["rpm"], 1) if item.get("rpm") is not None else None
    streams = _whole("streams", item["streams"], 0) if item.get("streams") is not None else None
    expires = _expiry(item["expires"]) if item.get("expires") is not None else None
    shown = label or caller
    return key, KeyEntry(caller, shown, shown, models, rpm, streams, expires)


def load_keys_file(path: str) -> list[tuple[bytes, KeyEntry]]:
    """The keys of API_KEYS_FILE, checked; KeyFileError naming the file and the entry (never the key)."""
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read())
    except OSError as exc:
        raise KeyFileError(f"API_KEYS_FILE {path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # not UTF-8 or not JSON; the position only, never the text around it
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise KeyFileError(f"API_KEYS_FILE {path} is not valid JSON{where}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFileError(f'API_KEYS_FILE {path} must be a JSON object {{"keys": [...]}}')
    extra = sorted(set(document) - {"keys"})
    if extra:
        raise KeyFileError(f"API_KEYS_FILE {path}: unknown top-level field {', '.join(repr(e[:40]) for e in extra)}")
    entries: list[tuple[bytes, KeyEntry]] = []
    seen_keys: dict[bytes, int] = {}
    seen_labels: dict[str, int] = {}
    for index, item in enumerate(document["keys"]):
        name = _entry_name(index, item)
        try:
            key, entry = _parse_entry(item)
        except ValueError as exc:
            raise KeyFileError(f"API_KEYS_FILE {path}: {name}: {exc}") from None
        if key in seen_keys:
            raise KeyFileError(f"API_KEYS_FILE {path}: {name} repeats the key of entry {seen_keys[key]}")
        if entry.metric in seen_labels:
            raise KeyFileError(f"API_KEYS_FILE {path}: {name} repeats the label of entry {seen_labels[entry.metric]}")
        seen_keys[key], seen_labels[entry.metric] = index, index
        entries.append((key, entry))
    return entries


def _plain(keys: Iterable[bytes]) -> list[tuple[bytes, KeyEntry]]:
    """OPENAI_API_KEY / API_KEYS: no policy; logged by their id, counted in metrics as OTHER."""
    return [(key, KeyEntry(key_id(key), key_id(key), OTHER)) for key in keys]


def build_table(plain: Iterable[bytes], filed: list[tuple[bytes, KeyEntry]] | None) -> KeyTable:
    """The table of `plain` keys and the file's (a key in both takes the file's policy). With a file the API is
    never open, even while the file lists no key."""
    entries = dict(_plain(plain))
    entries.update(filed or [])
    return KeyTable(entries.items(), open_=filed is None)


# ---- reloading --------------------------------------------------------------------------------------------


class KeyRing:
    """The current KeyTable, re-read from API_KEYS_FILE when its mtime, size or inode change (looked at no more
    than once per `interval` seconds, on a request's way in). A file that no longer parses keeps the previous
    table, with one warning per broken version; `on_load` receives each new version's keys (the log redaction)."""

    def __init__(
        self,
        plain: tuple[bytes, ...],
        path: str | None,
        *,
        interval: float = 1.0,
        on_load: Callable[[list[bytes]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plain, self.path = plain, path
        self._interval, self._on_load, self._clock = interval, on_load, clock
        self._lock = threading.Lock()
        self._checked = clock()
        self._signature: tuple[int, int, int] | None = None
        self._warned: tuple[int, int, int] | None = None
        filed = None
        if path is not None:
            self._signature = self._stat()
            filed = load_keys_file(path)  # KeyFileError stops the start
            self._loaded(filed)
        self._table = build_table(plain, filed)

    def table(self) -> KeyTable:
        """The keys now (re-read first when the file changed)."""
        if self.path is not None and self._clock() - self._checked >= self._interval and not self._lock.locked():
            with self._lock:
                self._checked = self._clock()
                self._refresh()
        return self._table

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(str(self.path))
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino

    def _refresh(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        try:
            if signature is None:
                raise KeyFileError(f"API_KEYS_FILE {self.path} cannot be read")
            filed = load_keys_file(str(self.path))
        except KeyFileError as exc:
            if signature != self._warned:
                self._warned = signature
                log.warning("%s; keeping the keys loaded before", exc)
            return
        self._loaded(filed)
        self._table = build_table(self.plain, filed)
        self._signature, self._warned = signature, None
        log.info("API_KEYS_FILE %s reloaded: %d keys", self.path, len(filed))

    def _loaded(self, filed: list[tuple[bytes, KeyEntry]]) -> None:
        if self._on_load is not None:
            self._on_load([key for key, _ in filed])
