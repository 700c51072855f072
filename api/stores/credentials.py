"""Write a session token where the server reads it: a `.env` assignment or an accounts-file line, 0600, atomically.

Both writers change only the line that holds the account and keep every other byte of the file (comments,
order, line endings); the new file replaces the old one with `os.replace`, so a reader never sees half of it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_account", "write_env_value"]

# What python-dotenv reads unquoted without touching it (no `#`, quotes, `$` expansion or spaces).
_PLAIN = re.compile(r"[A-Za-z0-9._~+/=:@%-]+")
_LABEL = re.compile(r"[^\s#]+")


def write_env_value(path: str | os.PathLike[str], name: str, value: str) -> str:
    """Set `name=value` in a dotenv file (created if missing); return "replaced" or "added".

    Every assignment of `name` (also `export name=...`, also a quoted value spanning lines) gets the new value;
    without one, a line is appended.
    """
    target = _real(path)
    text = _read(target)
    lines = text.splitlines(keepends=True)
    assignment = re.compile(rf"^(\s*(?:export\s+)?){re.escape(name)}\s*=\s*(.*?)(\r?\n)?$", re.S)
    out: list[str] = []
    replaced, skip_until_quote = False, ""
    for line in lines:
        if skip_until_quote:  # the rest of an old multi-line quoted value
            if skip_until_quote in line:
                skip_until_quote = ""
            continue
        match = assignment.match(line)
        if match is None:
            out.append(line)
            continue
        prefix, old, ending = match.group(1), match.group(2), match.group(3) or ""
        if old[:1] in ("'", '"') and old.count(old[0]) == 1:
            skip_until_quote = old[0]
        out.append(f"{prefix}{name}={_dotenv_quoted(value)}{ending}")
        replaced = True
    if not replaced:
        if out and not out[-1].endswith(("\n", "\r")):
            out[-1] += "\n"
        out.append(f"{name}={_dotenv_quoted(value)}\n")
    _atomic_write(target, "".join(out))
    return "replaced" if replaced else "added"


def write_account(
    path: str | os.PathLike[str],
    token: str,
    *,
    label: str | None = None,
    proxy: str | None = None,
    check: Callable[[str], object] | None = None,
) -> str:
    """Put an account (`[label] token [proxy]`) in an accounts file (created if missing).

    The line of the same label is replaced (its proxy kept unless `proxy` is given); without a label, a line
    with the same token is left as it is. Otherwise a line is appended. `check(new_text)` may refuse the result
    (raise ValueError) before anything is written. Returns "replaced", "unchanged" or "added".
    """
    if not _LABEL.fullmatch(token):
        raise ValueError("the token cannot go in an accounts file: it holds a space or '#'")
    if label is not None and (not _LABEL.fullmatch(label) or "://" in label):
        raise ValueError("an account label is one word without '#' or '://'")
    if proxy is not None and (not _LABEL.fullmatch(proxy) or "://" not in proxy):
        raise ValueError("the proxy must be a URL such as http://host:port (no spaces or '#')")
    target = _real(path)
    text = _read(target)
    lines = text.splitlines(keepends=True)
    outcome = "added"
    for index, line in enumerate(lines):
        fields = _account_fields(line, index, lines)
        if fields is None:
            continue
        line_label, line_token, line_proxy = fields
        if label is not None and line_label == label:
            ending = line[len(line.rstrip("\r\n")) :]
            lines[index] = _account_line(label, token, proxy or line_proxy) + ending
            outcome = "replaced"
            break
        if label is None and line_token == token and proxy in (None, line_proxy):
            return "unchanged"
    if outcome == "added":
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += "\n"
        lines.append(_account_line(label, token, proxy) + "\n")
    new_text = "".join(lines)
    if check is not None:
        check(new_text)
    _atomic_write(target, new_text)
    return outcome


def _account_fields(line: str, index: int, lines: list[str]) -> tuple[str, str, str | None] | None:
    """(label, token, proxy) of an account line, as `api.core.accounts.parse_accounts` reads it; None for none.

    An unlabelled line's label is the one that reader gives it: `account-N`, N counting account lines.
    """
    fields = line.split("#", 1)[0].split()
    if not fields:
        return None
    proxy = fields.pop() if len(fields) > 1 and "://" in fields[-1] else None
    if len(fields) == 1:
        number = 1 + sum(1 for earlier in lines[:index] if earlier.split("#", 1)[0].split())
        return f"account-{number}", fields[0], proxy
    return (fields[0], fields[1], proxy) if len(fields) == 2 else None


def _account_line(label: str | None, token: str, proxy: str | None) -> str:
    return " ".join(part for part in (label, token, proxy) if part)


def _dotenv_quoted(value: str) -> str:
    if _PLAIN.fullmatch(value):
        return value
    if "'" not in value and "\n" not in value:
        return f"'{value}'"  # single quotes: python-dotenv takes the value literally
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _read(target: Path) -> str:
    """The file's text with its line endings as they are (no newline translation), or "" if it is missing."""
    try:
        with open(target, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def _real(path: str | os.PathLike[str]) -> Path:
    """The file a path names, through symlinks: the link stays a link and its target gets the new content."""
    return Path(os.path.realpath(path))


def _atomic_write(target: Path, text: str) -> None:
    """Replace `target` with `text`: a 0600 temporary file in the same directory, synced, then `os.replace`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
