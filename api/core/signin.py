"""A session token onto disk: email sign-in and pasted cookies turned into `.env` or accounts-file lines.

The commands (`api/cli.py`) ask the questions; this module knows the settings, the flows and the files, and never
shows a token: what it returns to say where a token went names the file and the setting, not the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from perplexity.cookies import normalize_session_token
from perplexity.login import EmailLogin, LoginError, TotpChallenge, check_session, classify_answer

from ..stores.credentials import write_account, write_env_value
from .accounts import parse_accounts

# The login flow's own names are passed on for the commands, which see the client only through this module.
__all__ = [
    "TOKEN_SETTING",
    "Destination",
    "EmailLogin",
    "LoginError",
    "TotpChallenge",
    "classify_answer",
    "email_login",
    "pasted_token",
    "save_token",
    "session_email",
]

TOKEN_SETTING = "PERPLEXITY_SESSION_TOKEN"


@dataclass(frozen=True)
class Destination:
    """Where a token goes: `accounts_file` (a line, by `label`, with its `proxy`) if set, else `env_file`."""

    env_file: str = ".env"
    accounts_file: str | None = None
    label: str | None = None
    proxy: str | None = None

    def describe(self) -> str:
        if self.accounts_file:
            return f"{self.accounts_file} (account {self.label})" if self.label else self.accounts_file
        return f"{self.env_file} ({TOKEN_SETTING})"


def _connection(config: Mapping[str, Any], proxy: str | None) -> dict[str, Any]:
    return {
        "base_url": str(config["PERPLEXITY_BASE_URL"]),
        "impersonate": config.get("PERPLEXITY_IMPERSONATE"),
        "ca_bundle": config.get("PERPLEXITY_CA_BUNDLE"),
        # The account's own proxy, else the server's: Perplexity then sees the address the token will be used from.
        "proxy": proxy or config.get("PERPLEXITY_PROXY") or None,
    }


def email_login(email: str, config: Mapping[str, Any], proxy: str | None = None) -> EmailLogin:
    """An email sign-in against the configured Perplexity (base URL, impersonation, CA bundle, proxy)."""
    return EmailLogin(
        email,
        connect_timeout=float(config["PERPLEXITY_CONNECT_TIMEOUT"]),
        read_timeout=max(float(config["PERPLEXITY_READ_TIMEOUT"]), 10.0),
        **_connection(config, proxy),
    )


def session_email(token: str, config: Mapping[str, Any], proxy: str | None = None) -> str | None:
    """The email Perplexity says the token is logged in as; None when it is not logged in."""
    timeout = (float(config["PERPLEXITY_CONNECT_TIMEOUT"]), max(float(config["PERPLEXITY_READ_TIMEOUT"]), 10.0))
    return check_session(token, timeout=timeout, **_connection(config, proxy))


def pasted_token(text: str) -> str:
    """The session token in a paste (raw value, Cookie header, chunked cookies, exported JSON); ValueError if none."""
    return normalize_session_token(text)


def save_token(token: str, destination: Destination) -> str:
    """Write the token where `destination` says (0600, atomically); return what happened, e.g. "replaced"."""
    if destination.accounts_file:
        return write_account(
            destination.accounts_file,
            token,
            label=destination.label,
            proxy=destination.proxy,
            check=parse_accounts,  # refuse a file the server would not start with (a label used twice, ...)
        )
    return write_env_value(destination.env_file, TOKEN_SETTING, token)
