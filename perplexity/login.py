"""Email sign-in to Perplexity (6-digit code or magic link, then a TOTP second factor) ending in a session token.

Perplexity's web app has changed its sign-in more than once (protocol reference, section 2.9); this tries the
newest flow first and falls back, per step, when an endpoint is missing (404/405):

- C (2026): `GET /api/auth/csrf`; `POST /api/auth/signin-email` `{email, csrfToken}` sends the email;
  `POST /api/auth/signin-otp` `{email, otp, csrfToken}` answers `{"status": "success"}` with the session cookie, or
  `"totp_challenge_required"` with a `challenge_token` for `POST /api/auth/totp/challenge-verify` `{token, code}`.
- B (2025): `POST /api/auth/signin/email` JSON with `useNumericOtp`; `POST /api/auth/otp-redirect-link`
  `{email, otp, redirectUrl, emailLoginMethod}` answers `{"redirect": <callback>}`, whose GET sets the cookie.
- A (NextAuth's email provider): the same signin form-encoded; only the emailed magic link
  (`/api/auth/callback/email?...`) signs in.

The session arrives as `Set-Cookie: __Secure-next-auth.session-token` (or its `.0`, `.1` chunks). Tokens, codes,
links and challenge tokens are never logged and never put in an exception message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from .cookies import session_token_from_cookies
from .errors import ConfigurationError, PerplexityError
from .extract import JSONDecodeError, loads
from .payload import API_VERSION
from .session import COOKIE_NAME
from .status import error_for_status, is_cloudflare
from .transport import Transport, make_transport, resolve_impersonation

__all__ = ["EmailLogin", "LoginError", "TotpChallenge", "check_session", "classify_answer"]

_DEFAULT_BASE_URL = "https://www.perplexity.ai"
_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
_MISSING = (404, 405)  # the endpoint of this flow variant does not exist (any more)
_MAX_REDIRECTS = 5
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_CALLBACK_PATH = "/api/auth/callback/"


class LoginError(PerplexityError):
    """Perplexity did not sign in; `reason` says why: bad_code, bad_totp, no_code (the flow mails a link only),
    expired_link, bad_link, refused."""

    kind = "login"

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TotpChallenge:
    """The account has a second factor: send its authenticator code with `EmailLogin.submit_totp`."""

    token: str = field(repr=False)


def classify_answer(text: str) -> tuple[str, str] | None:
    """What the user typed after the email came: ("code", six digits), ("link", url), or None if neither."""
    answer = text.strip().strip("<>\"'")
    digits = re.sub(r"[\s-]", "", answer)
    if re.fullmatch(r"\d{6}", digits):
        return "code", digits
    if re.match(r"https?://\S+$", answer, re.I) or answer.startswith(_CALLBACK_PATH):
        return "link", answer
    return None


@dataclass
class _Answer:
    status: int
    location: str | None
    body: Any  # parsed JSON, or None
    token: str | None  # the session token this response set, if it set one
    url: str = ""


class _Site:
    """Requests to Perplexity with a cookie jar of their own (the csrf cookie must come back), no redirects."""

    def __init__(
        self,
        base_url: str,
        transport: Transport | None,
        impersonate: str | None,
        ca_bundle: str | None,
        timeout: tuple[float, float],
        proxy: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if transport is None:
            target = resolve_impersonation(impersonate, self.base_url)
            options: dict[str, Any] = {"proxy": proxy} if proxy else {}
            transport = make_transport(
                base_url=self.base_url, impersonate=target, pool_size=2, ca_bundle=ca_bundle, **options
            )
        self.transport = transport
        self.timeout = timeout
        self.cookies: dict[str, str] = {}

    def send(
        self,
        method: str,
        target: str,
        *,
        json: Any = None,
        data: Any = None,
        params: dict[str, str] | None = None,
        what: str,
    ) -> _Answer:
        """One request; errors that are nobody's answer (Cloudflare, 429, 5xx) raise, any other status returns."""
        url = target if "://" in target else self.base_url + target
        headers = {
            "accept": "application/json",
            "accept-language": "en-US,en;q=0.9",
            "origin": self.base_url,
            "referer": self.base_url + "/",
        }
        if json is not None:
            headers["content-type"] = "application/json"
        if not self.transport.name.startswith("curl_cffi"):
            headers["user-agent"] = _USER_AGENT  # curl_cffi sends its browser's own, matching its TLS fingerprint
        if self.cookies:
            headers["cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        response = self.transport.request(
            method, url, headers=headers, params=params, json=json, data=data, timeout=self.timeout
        )
        try:
            raw = response.read(1 << 20)
        finally:
            response.close()
        for name, value in response.set_cookies.items():
            if value:
                self.cookies[name] = value
            else:  # an empty value is a deletion
                self.cookies.pop(name, None)
        status, text = response.status_code, raw.decode("utf-8", "replace")
        if status == 429 or status >= 500 or is_cloudflare(status, response.headers, text):
            raise error_for_status(status, response.headers, text, what=what)
        return _Answer(
            status=status,
            location=response.headers.get("location"),
            body=_json_or_none(raw),
            token=session_token_from_cookies(response.set_cookies),
            url=url,
        )

    def follow(self, url: str, *, what: str) -> _Answer:
        """GET `url` and the redirects that stay on Perplexity, until one sets the session cookie or none is left."""
        answer = self.send("GET", url, what=what)
        for _ in range(_MAX_REDIRECTS):
            if answer.token or not (300 <= answer.status < 400 and answer.location):
                break
            target = urljoin(answer.url, answer.location)
            if _has_error(target) or not self.on_site(target):
                break
            answer = self.send("GET", self.on_site(target) or "", what=what)
        return answer

    def on_site(self, url: str) -> str | None:
        """`url` moved onto the base URL when it points at Perplexity (or the base URL's host); None otherwise."""
        parts, base = urlsplit(url), urlsplit(self.base_url)
        host, base_host = (parts.hostname or "").lower(), (base.hostname or "").lower()
        perplexity = all(h == "perplexity.ai" or h.endswith(".perplexity.ai") for h in (host, base_host))
        if parts.scheme not in ("http", "https") or not (host == base_host or perplexity):
            return None
        return self.base_url + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def close(self) -> None:
        self.transport.close()


class EmailLogin:
    """One email sign-in: `send_code()`, then `submit_code()` (maybe `submit_totp()`) or `open_link()`.

    Each of these returns the session token once Perplexity has set it; the caller decides where it goes.
    """

    def __init__(
        self,
        email: str,
        *,
        base_url: str = _DEFAULT_BASE_URL,
        transport: Transport | None = None,
        impersonate: str | None = "auto",
        ca_bundle: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        proxy: str | None = None,
    ) -> None:
        self.email = email.strip()
        if not _EMAIL.fullmatch(self.email):
            raise ConfigurationError("That is not an email address.")
        self._site = _Site(base_url, transport, impersonate, ca_bundle, (connect_timeout, read_timeout), proxy)
        self._csrf: str | None = None
        # The flow variant that sent the email (module docstring): "C", "B", or "A" (link only).
        self.variant: str | None = None

    def __enter__(self) -> EmailLogin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._site.close()

    @property
    def callback_url(self) -> str:
        return self._site.base_url + "/"

    # ---- the steps ---------------------------------------------------------------------------

    def send_code(self) -> str:
        """Have Perplexity email a sign-in code and link; return the variant used ("A": a link only)."""
        csrf = self._csrf_token()
        answer = self._site.send(
            "POST", "/api/auth/signin-email", json={"email": self.email, "csrfToken": csrf}, what="sign-in email"
        )
        if answer.status not in _MISSING:
            self._check_sent(answer)
            self.variant = "C"
            return self.variant
        body = {
            "email": self.email,
            "csrfToken": csrf,
            "useNumericOtp": "true",
            "json": "true",
            "callbackUrl": self.callback_url,
        }
        params = {"version": API_VERSION, "source": "default"}
        answer = self._site.send("POST", "/api/auth/signin/email", json=body, params=params, what="sign-in email")
        self.variant = "B"
        if answer.status in _MISSING:  # NextAuth's own email provider: a form post, and the link alone
            form = {"email": self.email, "csrfToken": csrf, "callbackUrl": self.callback_url, "json": "true"}
            answer = self._site.send("POST", "/api/auth/signin/email", data=form, what="sign-in email")
            self.variant = "A"
        self._check_sent(answer)
        return self.variant

    def submit_code(self, code: str) -> str | TotpChallenge:
        """Sign in with the emailed 6-digit code: the session token, or the second factor's challenge."""
        if self.variant == "C":
            body = {"email": self.email, "otp": code, "csrfToken": self._csrf}
            answer = self._site.send("POST", "/api/auth/signin-otp", json=body, what="sign-in code")
            if answer.status not in _MISSING:
                return self._otp_outcome(answer)
        body = {"email": self.email, "otp": code, "redirectUrl": self.callback_url, "emailLoginMethod": "web-otp"}
        answer = self._site.send("POST", "/api/auth/otp-redirect-link", json=body, what="sign-in code")
        if answer.status in _MISSING:
            raise LoginError("Perplexity takes no code for this sign-in: paste the link from the email.", "no_code")
        redirect = _field(answer.body, "redirect") or _field(answer.body, "url")
        if answer.status >= 400 or not redirect:
            raise _bad_code(answer.body)
        return self._token_from(self._site.follow(urljoin(self._site.base_url + "/", redirect), what="sign-in"))

    def submit_totp(self, challenge: TotpChallenge, code: str) -> str:
        """Answer the second factor with the authenticator app's current code; the session token."""
        answer = self._site.send(
            "POST",
            "/api/auth/totp/challenge-verify",
            json={"token": challenge.token, "code": code.strip()},
            what="authenticator code",
        )
        if answer.status >= 400 or _field(answer.body, "status") not in (None, "success"):
            raise LoginError(
                "Perplexity did not accept the authenticator code"
                + _code_of(answer.body)
                + ". Use the current code of the app set up for this account, and run the login again.",
                "bad_totp",
            )
        return self._token_from(answer)

    def open_link(self, link: str) -> str:
        """Sign in with the magic link from the email; the session token."""
        target = self._site.on_site(link if "://" in link else self._site.base_url + link)
        if target is None or _CALLBACK_PATH not in target:
            raise LoginError(
                "That is not a Perplexity sign-in link: paste the whole link from the email "
                "(it starts with https://www.perplexity.ai/api/auth/callback/).",
                "bad_link",
            )
        answer = self._site.follow(target, what="sign-in link")
        if answer.token:
            return answer.token
        raise LoginError(
            "Perplexity did not sign in with that link: it has expired or was already used. "
            "Run the login again for a new email.",
            "expired_link",
        )

    # ---- helpers ---------------------------------------------------------------------------

    def _csrf_token(self) -> str:
        answer = self._site.send("GET", "/api/auth/csrf", what="sign-in (csrf)")
        token = _field(answer.body, "csrfToken")
        if answer.status >= 400 or not token:
            raise LoginError(f"Perplexity's sign-in page did not answer as expected (HTTP {answer.status}).")
        self._csrf = token
        return token

    def _check_sent(self, answer: _Answer) -> None:
        # NextAuth answers `json: true` sign-ins 200 with a `url` that names the error, if any.
        url = _field(answer.body, "url") or ""
        if answer.status >= 400 or _field(answer.body, "status") in ("failure", "error") or _has_error(url):
            raise LoginError(
                f"Perplexity did not send the sign-in email (HTTP {answer.status}{_code_of(answer.body)}). "
                "Check the address, and try again later if it is right."
            )

    def _otp_outcome(self, answer: _Answer) -> str | TotpChallenge:
        status = _field(answer.body, "status")
        if answer.status < 400 and status == "totp_challenge_required":
            challenge = _field(answer.body, "challenge_token")
            if not challenge:
                raise LoginError("Perplexity asked for a second factor but sent no challenge.")
            return TotpChallenge(challenge)
        if answer.status < 400 and status in (None, "success"):
            return self._token_from(answer)
        raise _bad_code(answer.body)

    def _token_from(self, answer: _Answer) -> str:
        if answer.token:
            return answer.token
        raise LoginError("Perplexity accepted the sign-in but set no session cookie; try again, or use the link.")


def check_session(
    token: str,
    *,
    base_url: str = _DEFAULT_BASE_URL,
    transport: Transport | None = None,
    impersonate: str | None = "auto",
    ca_bundle: str | None = None,
    timeout: tuple[float, float] = (10.0, 30.0),
    proxy: str | None = None,
) -> str | None:
    """The email of the account the token is logged in as, or None when Perplexity says it is not logged in."""
    site = _Site(base_url, transport, impersonate, ca_bundle, timeout, proxy)
    try:
        site.cookies[COOKIE_NAME] = token
        answer = site.send("GET", "/api/auth/session", what="session check")
    finally:
        site.close()
    user = _field(answer.body, "user")
    if answer.status >= 400 or not isinstance(user, dict):
        return None
    return str(user.get("email") or "(no email)")


def _bad_code(body: Any) -> LoginError:
    return LoginError(
        f"Perplexity did not accept the code{_code_of(body)}. Check it against the latest email (codes expire), "
        "or run the login again for a new one.",
        "bad_code",
    )


def _field(body: Any, name: str) -> Any:
    value = body.get(name) if isinstance(body, dict) else None
    return value if value not in ("", None) else None


def _code_of(body: Any) -> str:
    """`: CODE` from an error body's `error_code` or `error` (short words only: no echo of anything sent)."""
    code = _field(body, "error_code") or _field(body, "error")
    return f": {code}" if isinstance(code, str) and re.fullmatch(r"[A-Za-z_]{1,40}", code) else ""


def _has_error(url: str) -> bool:
    query = urlsplit(url).query
    return bool(re.search(r"(?:^|&)(?:error|csrf)=", query))


def _json_or_none(raw: bytes) -> Any:
    try:
        return loads(raw) if raw.strip() else None
    except JSONDecodeError:
        return None
