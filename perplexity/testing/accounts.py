"""The fake's Perplexity accounts: session tokens and their rotation, expiry, rate limiting, quotas, scripts."""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .catalog import DEFAULT_QUOTA, FAKE_USER, MODELS
from .script import Fault

__all__ = [
    "DEFAULT_ACCOUNT",
    "QUOTA_MODES",
    "FakeAccount",
    "ask_mode",
    "exhaustion_fault",
    "make_user",
    "retry_after_seconds",
    "set_cookie_header",
]

# The label of the account of the constructor's `session_token`.
DEFAULT_ACCOUNT = "default"
# The modes of `/rest/rate-limit/status` that `FakePerplexity.set_quota` can meter (protocol 2.7).
QUOTA_MODES = tuple(DEFAULT_QUOTA)
# Catalogue mode of the ask's model_preference -> the quota it spends; search models spend pro_search.
_QUOTA_OF_MODE = {
    "search": "pro_search",
    "research": "research",
    "agentic_research": "agentic_research",
    "studio": "labs",
}
_COOKIE_NAME = "__Secure-next-auth.session-token"


def make_user(label: str, number: int, *, tier: str, email: str | None, user_id: str | None) -> dict[str, Any]:
    """The `/api/auth/session` user of a new account, shaped like FAKE_USER."""
    paid = tier != "free"
    user = dict(FAKE_USER)
    user.update(
        id=user_id or f"fake-user-{number:04d}",
        email=email or f"{label}@example.com",
        name=f"Fake {label}",
        username=label.replace("-", "_"),
        subscription_status="active" if paid else "none",
        subscription_tier=tier,
        subscription_source="stripe" if paid else "none",
        payment_tier="paid" if paid else "free",
    )
    return user


def set_cookie_header(token: str) -> tuple[str, str]:
    """The `Set-Cookie` header that hands a client a (rotated) session token."""
    return "Set-Cookie", f"{_COOKIE_NAME}={token}; Path=/; HttpOnly; Secure; SameSite=Lax"


def ask_mode(params: dict[str, Any]) -> str | None:
    """The quota an ask spends, from its model_preference (AK: the model selects the mode); None if none.

    Models outside the catalogue count as searches; HC's `params.mode: "research"` counts as research.
    """
    if str(params.get("mode") or "").lower() == "research":
        return "research"
    model = MODELS.get(str(params.get("model_preference") or ""))
    return _QUOTA_OF_MODE.get(model[1]) if model is not None else "pro_search"


def exhaustion_fault(mode: str) -> Fault:
    """How an ask of an exhausted mode fails unless `set_quota(when_exhausted=...)` says otherwise: a 200
    stream whose first frame is `status: FAILED` with `error_code: RATE_LIMIT_EXCEEDED` (protocol 3.8:
    codes containing RATE_LIMIT are rate limiting; no capture shows an exhausted account)."""
    message = f"You have reached your {mode.replace('_', ' ')} limit. It will reset later."
    return Fault("rate_limited_in_stream", after_frames=0, error_code="RATE_LIMIT_EXCEEDED", message=message)


def retry_after_seconds(left: float) -> float:
    """The Retry-After seconds for a rate limit with `left` seconds to go, rounded up to a tenth."""
    return max(math.ceil(left * 10) / 10, 0.1)


@dataclass(eq=False)
class FakeAccount:
    """One account of the fake: its user, its session tokens and the state tests switch.

    The fake's lock guards every field; read them for assertions, change them through FakePerplexity's
    methods (add_account, expire, revive, rate_limit, set_quota, set_rotation, rotate_token, enqueue).
    """

    label: str
    user: dict[str, Any]
    # Cookie values that log in, oldest first; the last one is the current token.
    tokens: list[str] = field(repr=False)
    expired: bool = False
    # Fake-clock time until which every ask of the account is answered 429 (None: not rate limited).
    rate_limited_until: float | None = None
    # mode -> remaining (None: "not_provided"); only the modes in `metered` are spent and enforced.
    quota: dict[str, int | None] = field(default_factory=lambda: dict(DEFAULT_QUOTA))
    # mode -> the count the mode refills to at each reset.
    metered: dict[str, int] = field(default_factory=dict)
    quota_period: float | None = None
    quota_resets_at: float | None = None
    when_exhausted: Fault | None = None
    rotate_on_session: bool = False
    rotate_on_ask: bool = False
    # Seconds a replaced token keeps working after a rotation; None: for ever (a rolling session).
    rotation_grace: float | None = None
    rotations: int = 0
    # Tokens that no longer log in but are still known to be this account's (for attribution).
    retired: list[str] = field(default_factory=list, repr=False)
    grace_until: dict[str, float] = field(default_factory=dict, repr=False)
    # This account's own script: [item, remaining uses], taken before the shared script.
    script: deque[list[Any]] = field(default_factory=deque, repr=False)

    @property
    def token(self) -> str:
        """The current session token (the newest)."""
        return self.tokens[-1]

    @property
    def user_id(self) -> str:
        return str(self.user["id"])

    @property
    def email(self) -> str | None:
        return self.user.get("email")

    @property
    def tier(self) -> str:
        return str(self.user.get("subscription_tier") or "pro")

    def owns(self, token: str) -> bool:
        """Whether `token` is, or was, one of this account's tokens."""
        return token in self.tokens or token in self.retired

    def accepts(self, token: str, now: float) -> bool:
        """Whether a request with this cookie is logged in to this account at fake-clock time `now`."""
        self._end_grace(now)
        return not self.expired and token in self.tokens

    def _end_grace(self, now: float) -> None:
        for token, deadline in list(self.grace_until.items()):
            if deadline <= now:
                del self.grace_until[token]
                if token in self.tokens and len(self.tokens) > 1:
                    self.tokens.remove(token)
                    self.retired.append(token)

    def rotate(self, now: float) -> str:
        """Issue a new token; the older ones work for `rotation_grace` seconds more (None: for ever)."""
        token = f"rotated-{uuid.uuid4().hex}"
        if self.rotation_grace is not None:
            for old in self.tokens:
                self.grace_until.setdefault(old, now + self.rotation_grace)
        self.tokens.append(token)
        self.rotations += 1
        self._end_grace(now)
        return token

    def rate_limited_for(self, now: float) -> float | None:
        """Seconds until the account's rate limit ends, or None when it is not rate limited."""
        if self.rate_limited_until is None:
            return None
        if now >= self.rate_limited_until:
            self.rate_limited_until = None
            return None
        return self.rate_limited_until - now

    def remaining(self, now: float) -> dict[str, int | None]:
        """mode -> remaining at `now` (after any reset that has come)."""
        if self.quota_period is not None and self.quota_resets_at is not None and now >= self.quota_resets_at:
            self.quota.update(self.metered)
            periods = math.floor((now - self.quota_resets_at) / self.quota_period) + 1
            self.quota_resets_at += periods * self.quota_period
        return dict(self.quota)

    def spend(self, mode: str | None, now: float) -> bool | None:
        """Spend one `mode` query: True if spent, False if the mode is exhausted, None if it is not metered."""
        if mode is None or mode not in self.metered:
            return None
        left = self.remaining(now)[mode] or 0
        if left <= 0:
            return False
        self.quota[mode] = left - 1
        return True

    def refund(self, mode: str | None) -> None:
        """Undo a `spend` that returned True (the ask was refused after all)."""
        if mode is not None and mode in self.metered:
            self.quota[mode] = (self.quota[mode] or 0) + 1

    def exhausted_fault(self, mode: str) -> Fault:
        return self.when_exhausted or exhaustion_fault(mode)
