"""The account pool: several Perplexity sessions, each with its own client, and the rules that pick one.

Accounts come from `PERPLEXITY_ACCOUNTS_FILE` (one a line: an optional label, the token, an optional proxy URL),
`PERPLEXITY_SESSION_TOKENS` (comma separated) or `PERPLEXITY_SESSION_TOKEN` alone. The rules:

- a new thread goes to a usable account: the least busy (open streams), then the one with the most Pro searches
  left as Perplexity last reported them, then in turn;
- a follow-up stays on its thread's account (its ids belong to the account that created it);
- an account that fails before the first byte is set aside, and the ask moves to another: a 429 or an exhausted
  quota cools it down until its `Retry-After` (or the quota's reset), Cloudflare for `BLOCKED_COOLDOWN`, and a
  rejected session marks it expired until its token changes.

Flask-free: the HTTP layer turns "no usable account" into a 429 (all cooling down) or a 503 (none left).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from perplexity.client import PerplexityClient
from perplexity.cookies import normalize_session_token
from perplexity.errors import (
    AskRateLimitedError,
    AuthenticationError,
    CloudflareChallengeError,
    PerplexityError,
    RateLimitError,
)
from perplexity.session import COOKIE_NAME
from perplexity.types import ModeQuota, RateLimitStatus

from ..stores.accounts import SharedAccounts
from ..stores.credentials import write_account
from ..stores.token_file import TokenFile

__all__ = [
    "Account",
    "AccountPool",
    "AccountSpec",
    "FAILOVER_ERRORS",
    "AccountWatcher",
    "account_specs",
    "parse_accounts",
    "save_token",
]

log = logging.getLogger(__name__)

# Failures that say "this account, not this request": the ask may move to another account.
FAILOVER_ERRORS = (AuthenticationError, RateLimitError, AskRateLimitedError, CloudflareChallengeError)
_SYNC_INTERVAL = 1.0  # seconds between reads of the shared states
DEFAULT_COOLDOWN = 60.0  # a 429 without Retry-After
BLOCKED_COOLDOWN = 300.0  # Cloudflare challenged this account's address or fingerprint


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """How an account is configured: its label, its session token and its own proxy (if any)."""

    label: str
    token: str
    proxy: str | None = None

    @property
    def fingerprint(self) -> str:
        """A digest of the token: tells a changed token (an expired account comes back) without keeping it."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:16]


def parse_accounts(text: str) -> list[AccountSpec]:
    """An accounts file: one account a line, `[label] token [proxy-url]`; `#` starts a comment."""
    specs: list[AccountSpec] = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        proxy = fields.pop() if len(fields) > 1 and "://" in fields[-1] else None
        if len(fields) == 1:
            label, token = f"account-{len(specs) + 1}", fields[0]
        elif len(fields) == 2:
            label, token = fields
        else:
            raise ValueError(f"line {number}: expected '[label] token [proxy-url]', found {len(fields)} fields")
        specs.append(AccountSpec(label, configured_token(token, f"line {number}"), proxy))
    _check_unique(specs)
    return specs


def account_specs(config: Mapping[str, Any]) -> list[AccountSpec]:
    """The configured accounts: the accounts file, else PERPLEXITY_SESSION_TOKENS, else PERPLEXITY_SESSION_TOKEN."""
    proxy = config.get("PERPLEXITY_PROXY") or None
    path = config.get("PERPLEXITY_ACCOUNTS_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            specs = parse_accounts(handle.read())
        return [spec if spec.proxy or not proxy else AccountSpec(spec.label, spec.token, proxy) for spec in specs]
    tokens = [t.strip() for t in str(config.get("PERPLEXITY_SESSION_TOKENS") or "").split(",") if t.strip()]
    if tokens:
        where = "PERPLEXITY_SESSION_TOKENS"
        return [AccountSpec(f"account-{i}", configured_token(t, where), proxy) for i, t in enumerate(tokens, 1)]
    token = config.get("PERPLEXITY_SESSION_TOKEN")
    return [AccountSpec("default", configured_token(str(token), "PERPLEXITY_SESSION_TOKEN"), proxy)] if token else []


def configured_token(text: str, where: str) -> str:
    """The session token of a configured value, whichever form it was pasted in (`perplexity.cookies`: a Cookie
    header, `name=value`, chunked cookies, exported JSON); ValueError naming `where`, never quoting the value."""
    try:
        return normalize_session_token(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _check_unique(specs: Iterable[AccountSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.label in seen:
            raise ValueError(f"the account label {spec.label!r} is used twice")
        seen.add(spec.label)


class Account:
    """One session of the pool: its client and its state (`ready`, `cooling`, `expired`, `blocked`)."""

    def __init__(self, spec: AccountSpec, client: PerplexityClient) -> None:
        self.spec = spec
        self.client = client
        self.state = "ready"
        self.until = 0.0  # wall-clock end of a cooldown (or block)
        self.reason: str | None = None
        self.changed_at = 0.0  # wall clock of the last state change here (a newer shared one wins)
        self.quota: RateLimitStatus | None = None  # Perplexity's last word on it (`refresh_quota`)
        self.quota_checked = 0.0  # wall clock of that word; 0: stale, to be asked again

    @property
    def pro_remaining(self) -> int | None:
        """Pro searches left as Perplexity last reported them (None: unknown or unmetered)."""
        mode = self.quota.modes.get("pro_search") if self.quota is not None else None
        return mode.remaining if mode is not None else None

    def out_of(self, mode: str) -> ModeQuota | None:
        """The mode's quota when Perplexity says it is used up (None: available, or not known)."""
        quota = self.quota.modes.get(mode) if self.quota is not None else None
        return quota if quota is not None and not quota.available else None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def busy(self) -> int:
        """Streams open on this account in this worker."""
        return self.client.open_streams

    def usable(self, now: float) -> bool:
        """True when a new ask may go to this account now (a lapsed cooldown counts as over)."""
        if self.state in ("cooling", "blocked") and now >= self.until:
            self.state, self.reason = "ready", None
        return self.state == "ready"

    def public(self, now: float) -> dict[str, Any]:
        """The account as /v1/quota and /stats show it: never its token."""
        self.usable(now)
        body: dict[str, Any] = {"label": self.label, "state": self.state, "open_streams": self.busy}
        if self.state in ("cooling", "blocked"):
            body["until"] = int(self.until)
        if self.reason:
            body["reason"] = self.reason
        if self.quota is not None:
            body["quota"] = {name: _quota_public(mode) for name, mode in self.quota.modes.items()}
            body["quota_checked"] = int(self.quota_checked)
        return body


def _quota_public(mode: ModeQuota) -> dict[str, Any]:
    body: dict[str, Any] = {"available": mode.available, "remaining": mode.remaining}
    if mode.resets_at is not None:
        body["resets_at"] = int(mode.resets_at)
    return body


def _plenty(remaining: int | None) -> int:
    return remaining if remaining is not None else 10**9  # unknown or unmetered counts as plenty


class AccountPool:
    """The accounts of one worker and the pick/failover rules (module docstring)."""

    def __init__(
        self,
        specs: list[AccountSpec],
        make_client: Callable[[AccountSpec], PerplexityClient],
        clock: Callable[[], float] = time.time,
        on_change: Callable[[Account, str, str], None] | None = None,
        shared: SharedAccounts | None = None,
    ) -> None:
        self._make_client = make_client
        self._shared = shared  # with Redis: states and open asks of every worker and instance
        self._synced = 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0
        # Called once per change of an account's state (or quota: "quota_exhausted" / "quota_available"), with
        # the account, the previous and the new state: the alert (a WARNING, a counter, the webhook).
        self._on_change = on_change
        self._accounts: dict[str, Account] = {spec.label: Account(spec, make_client(spec)) for spec in specs}
        self._retired: list[Account] = []  # removed by a reload, closed once their streams are done

    # ---- reading ---------------------------------------------------------------------------

    @property
    def accounts(self) -> list[Account]:
        return list(self._accounts.values())

    def get(self, label: str | None) -> Account | None:
        """The account of that label (a thread's), if it is still configured."""
        return self._accounts.get(label) if label else None

    def first(self) -> Account | None:
        """The account for account-less calls (catalogue, checks): the first usable, else the first."""
        now = self._clock()
        accounts = self.accounts
        return next((a for a in accounts if a.usable(now)), accounts[0] if accounts else None)

    def earliest_return(self) -> float | None:
        """Seconds until the first cooling account is usable again; None when none will be (all expired)."""
        now = self._clock()
        waits = [a.until - now for a in self.accounts if a.state in ("cooling", "blocked")]
        return max(0.0, min(waits)) if waits else None

    # ---- choosing ----------------------------------------------------------------------------

    def pick(self, exclude: Iterable[str] = (), mode: str | None = None) -> Account | None:
        """The account for a new thread (module docstring), or None when no account is usable."""
        skipped = set(exclude)
        self.sync()
        busy = self._shared.busy(list(self._accounts)) if self._shared is not None else {}
        now = self._clock()
        with self._lock:
            candidates = [a for a in self.accounts if a.label not in skipped and a.usable(now)]
            if mode is not None:  # an account known to be out of this mode's quota is passed over when others are not
                candidates = [a for a in candidates if a.out_of(mode) is None] or candidates
            if not candidates:
                return None
            self._turn += 1
            order = {a.label: (i - self._turn) % len(self._accounts) for i, a in enumerate(self.accounts)}
            # Least busy first; then the most quota left (unknown counts as plenty); then in turn.
            return min(
                candidates,
                key=lambda a: (busy.get(a.label, a.busy), -_plenty(a.pro_remaining), order[a.label]),
            )

    def failed(self, account: Account, exc: PerplexityError) -> None:
        """Set an account aside after a failure that is its own (FAILOVER_ERRORS); others change nothing.

        A 429 cools the account down even when it is the only one (its Retry-After is honoured without asking
        again). A rejected cookie marks it expired only once a session check confirms it (a 401 can be a fluke).
        Cloudflare sets it aside only while another account can answer: alone, it keeps trying.
        """
        now = self._clock()
        if isinstance(exc, RateLimitError | AskRateLimitedError):
            wait = getattr(exc, "retry_after", None)
            self._set(account, "cooling", now + (wait if wait else DEFAULT_COOLDOWN), "rate limited by Perplexity")
        elif isinstance(exc, AuthenticationError):
            if not self._session_valid(account):
                self._set(account, "expired", 0.0, "Perplexity rejected the session cookie")
        elif isinstance(exc, CloudflareChallengeError):
            if any(a is not account and a.usable(now) for a in self.accounts):
                self._set(account, "blocked", now + BLOCKED_COOLDOWN, "Cloudflare challenged the requests")

    def _session_valid(self, account: Account) -> bool:
        try:
            return account.client.session().valid
        except PerplexityError:
            return True  # unsure: keep the account rather than drop a session that may be fine

    def _set(self, account: Account, state: str, until: float, reason: str) -> None:
        previous = account.state
        account.state, account.until, account.reason = state, until, reason
        account.changed_at = self._clock()
        if self._shared is not None:
            self._shared.publish(account.label, account.spec.fingerprint, state, until, reason)
        if previous != state:
            self._changed(account, previous, state)

    def sync(self) -> None:
        """Adopt the states other workers and instances set since (at most once a second; no alert: the worker
        that saw the change alerted)."""
        now = self._clock()
        if self._shared is None or now - self._synced < _SYNC_INTERVAL:
            return
        self._synced = now
        for label, record in self._shared.read(list(self._accounts)).items():
            account = self._accounts.get(label)
            if account is None or record.get("fingerprint") != account.spec.fingerprint:
                continue  # another token's state, or an account removed meanwhile
            if float(record.get("at") or 0) > account.changed_at:
                account.state, account.until = str(record["state"]), float(record.get("until") or 0)
                account.reason, account.changed_at = record.get("reason"), float(record["at"])

    def opened(self, account: Account) -> Callable[[], None]:
        """Count an ask opened on `account` in the shared count; returns what to call when it closes."""
        lease = self._shared.opened(account.label) if self._shared is not None else None
        if lease is None:
            return lambda: None
        shared = self._shared
        return lambda: shared.closed(account.label, lease)  # type: ignore[union-attr]

    def _changed(self, account: Account, previous: str, state: str) -> None:
        if self._on_change is not None:
            try:
                self._on_change(account, previous, state)
            except Exception:  # an alert must never break a request
                log.exception("account %s: the state-change alert failed", account.label)

    # ---- keeping sessions alive, reloading -----------------------------------------------------

    def check_session(self, account: Account) -> None:
        """Ask `/api/auth/session` (the keep-alive: Perplexity rotates the cookie on it, and the client adopts
        and persists the rotation); a session that is gone marks the account expired."""
        try:
            valid = account.client.session().valid
        except PerplexityError as exc:
            log.info("account %s: session check failed (%s)", account.label, exc.kind)
            return
        if not valid:
            self._set(account, "expired", 0.0, "Perplexity says the session is logged out")
        elif account.state == "expired":
            self._set(account, "ready", 0.0, "")

    def reload(self, specs: list[AccountSpec]) -> None:
        """Take a new set of accounts (the accounts file changed): unchanged ones keep their client and state, a
        changed token gets a fresh client (an expired account comes back), removed ones stop taking new asks
        while their open streams finish on the client they started with."""
        with self._lock:
            fresh: dict[str, Account] = {}
            for spec in specs:
                known = self._accounts.get(spec.label)
                if known is not None and known.spec.fingerprint == spec.fingerprint and known.spec.proxy == spec.proxy:
                    fresh[spec.label] = known
                else:
                    fresh[spec.label] = Account(spec, self._make_client(spec))
                    if known is not None:
                        self._retired.append(known)
            self._retired += [a for label, a in self._accounts.items() if label not in fresh]
            self._accounts = fresh
        self.close_retired()
        log.info("accounts reloaded: %s", ", ".join(self._accounts) or "none")

    def adopt_rotation(self, label: str, token: str) -> AccountSpec | None:
        """The client of `label` took a rotated token: the spec follows (so a reload of the file that now holds it
        keeps the account as it is); returns the new spec, for the caller to persist."""
        account = self._accounts.get(label)
        if account is None:
            return None
        account.spec = AccountSpec(label, token, account.spec.proxy)
        return account.spec

    def close_retired(self) -> None:
        """Close the clients of removed accounts whose streams have all ended."""
        with self._lock:
            done = [a for a in self._retired if a.busy == 0]
            self._retired = [a for a in self._retired if a.busy > 0]
        for account in done:
            account.client.close()

    # ---- quota ---------------------------------------------------------------------------------

    def refresh_quota(self, account: Account, max_age: float) -> None:
        """Ask Perplexity for the account's quota unless its last answer is younger than `max_age` seconds.

        An expired session reads as "nothing available" (protocol 2.7), so only usable accounts are asked.
        """
        now = self._clock()
        if now - account.quota_checked < max_age or not account.usable(now):
            return
        was_out = account.out_of("pro_search") is not None
        try:
            account.quota = account.client.rate_limits()
        except PerplexityError as exc:
            log.info("account %s: quota check failed (%s)", account.label, exc.kind)
            return
        finally:
            account.quota_checked = now
        modes = account.quota.modes.values()
        if modes and not any(mode.available for mode in modes):
            # Exactly what an expired session looks like (protocol 2.7): the session check tells them apart.
            self.check_session(account)
            if account.state == "expired":
                return
        is_out = account.out_of("pro_search") is not None
        if is_out != was_out:
            states = ("quota_available", "quota_exhausted")
            self._changed(account, states[was_out], states[is_out])

    def used(self, account: Account) -> None:
        """An ask went to the account: its quota is stale (refreshed on the next read)."""
        account.quota_checked = 0.0

    def out_of(self, mode: str, max_age: float) -> float | None:
        """When every usable account is out of `mode`'s quota: seconds until the earliest reset that Perplexity
        reported (0.0 when it reported none); None while any usable account may still take the mode."""
        now = self._clock()
        for account in self.accounts:
            self.refresh_quota(account, max_age)  # may find an expired session: counted out below
        usable = [a for a in self.accounts if a.usable(now)]
        exhausted = [a.out_of(mode) for a in usable]
        if not usable or any(quota is None for quota in exhausted):
            return None
        resets = [q.resets_at - now for q in exhausted if q is not None and q.resets_at is not None]
        return max(0.0, min(resets)) if resets else 0.0

    def close(self) -> None:
        """Close every client."""
        for account in [*self.accounts, *self._retired]:
            account.client.close()


def save_token(path: str, spec: AccountSpec) -> None:
    """Write `spec`'s token into the accounts file, on its label's line (comments and other lines as they are),
    atomically and readable by the owner only (the login CLI's writer: one way to edit the file)."""
    try:
        write_account(path, spec.token, label=spec.label, check=parse_accounts)
    except (OSError, ValueError) as exc:
        log.warning("could not keep account %s's rotated cookie in the accounts file: %s", spec.label, exc)


class AccountWatcher:
    """The pool's upkeep, in the background: a reload when the accounts file (or the token file) changes, the
    clients of removed accounts closed once their streams are done, and every session checked every
    SESSION_KEEPALIVE_SECONDS (Perplexity rotates the cookie on the check; the client adopts and keeps it)."""

    POLL = 2.0  # seconds between looks at the files: a stat each, cheap

    def __init__(self, pool: AccountPool, config: Mapping[str, Any], specs: Callable[[], list[AccountSpec]]) -> None:
        self.pool = pool
        self.specs = specs
        self.token_file = config.get("PERPLEXITY_TOKEN_FILE")
        self.files = [str(f) for f in (config.get("PERPLEXITY_ACCOUNTS_FILE"), self.token_file) if f]
        self.keepalive = float(config.get("SESSION_KEEPALIVE_SECONDS") or 4 * 3600)
        self._stopped = threading.Event()
        self._seen = self._stamps()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="accounts").start()

    def stop(self) -> None:
        self._stopped.set()

    def _stamps(self) -> dict[str, float | None]:
        stamps: dict[str, float | None] = {}
        for name in self.files:
            try:
                stamps[name] = os.stat(name).st_mtime_ns
            except OSError:
                stamps[name] = None
        return stamps

    def _run(self) -> None:
        next_check = time.monotonic() + self.keepalive
        while not self._stopped.wait(self.POLL):
            try:
                self.step(time.monotonic() >= next_check)
            except Exception:  # the upkeep must outlive any one failure
                log.exception("account upkeep failed; carrying on")
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.keepalive

    def step(self, check_sessions: bool = False) -> None:
        """One round of upkeep (the loop calls it; tests may too)."""
        stamps = self._stamps()
        if stamps != self._seen:
            self._seen = stamps
            try:
                self.pool.reload(self.specs())
                self._adopt_token_file()
            except (OSError, ValueError) as exc:
                log.warning("accounts not reloaded, the old set stays: %s", exc)
        self.pool.close_retired()
        if check_sessions:
            for account in self.pool.accounts:
                self.pool.check_session(account)

    def _adopt_token_file(self) -> None:
        """The single account takes the token file's token when it is newer than its client's (written by
        another instance, or by hand): adopted like a rotation."""
        account = self.pool.get("default")
        if not self.token_file or account is None:
            return
        token = TokenFile(str(self.token_file), account.spec.token).load()
        if token and token != account.client.cookie.value:
            account.client.cookie.update_from({COOKIE_NAME: token})
