"""The fake's email sign-in (protocol 2.9, variants A, B and C): csrf, code and link emails, TOTP, new sessions.

Nothing is mailed: each sign-in "email" is kept in `fake.logins` and read with `fake.login_mail(email)`. A right
code or an unused, unexpired link opens a new session of the email's account (a new account for a new email),
whose token the fake then accepts like any other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .handler import COOKIE_NAME, RouteHandler, route
from .script import RecordedRequest

__all__ = ["DEFAULT_TOTP_SECRET", "LoginMail", "LoginState", "totp"]

CSRF_COOKIE = "__Host-next-auth.csrf-token"
DEFAULT_TOTP_SECRET = "JBSWY3DPEHPK3PXP"  # base32, as authenticator apps take it
TOTP_STEP = 30
_COOKIE_ATTRS = "Path=/; HttpOnly; Secure; SameSite=Lax"
_VERIFICATION_ERROR = "/api/auth/error?error=Verification"  # where NextAuth sends a bad or used link


@dataclass
class LoginMail:
    """One sign-in email: its 6-digit `code` (None when only a link was asked for) and its magic `link`."""

    email: str
    code: str | None
    link: str
    link_token: str
    sent_at: float
    code_used: bool = False
    link_used: bool = False


def totp(secret: str, at: float | None = None, step: int = TOTP_STEP) -> str:
    """The RFC 6238 code (HMAC-SHA1, 6 digits) of a base32 `secret` at time `at` (now by default)."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // step)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


class LoginState:
    """What the fake's sign-in remembers; `fake.logins`, fresh after `fake.reset()`.

    Knobs: `variants` (the flows served, of "A", "B", "C"; the others' endpoints answer 404), `code_ttl` and
    `link_ttl` (seconds of the fake's clock a code or link stays good, so `fake.advance()` expires them; 0 expires
    them at once), `cookie_chunk_size` (split new session cookies into NextAuth's `.0`, `.1`, ... chunks of this
    size). TOTP codes follow the wall clock, as authenticator apps do.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.variants: set[str] = {"A", "B", "C"}
        self.code_ttl = 600.0
        self.link_ttl = 600.0
        self.cookie_chunk_size: int | None = None
        self.mails: list[LoginMail] = []
        self.totp_secrets: dict[str, str] = {}
        self._csrf: set[str] = set()
        self._challenges: dict[str, str] = {}  # challenge token -> email

    # ---- test hooks ------------------------------------------------------------------------------

    def mail(self, email: str) -> LoginMail | None:
        """The latest sign-in email sent to `email`, if any."""
        with self._lock:
            return next((m for m in reversed(self.mails) if m.email == email.strip().lower()), None)

    def enable_totp(self, email: str, secret: str = DEFAULT_TOTP_SECRET) -> str:
        """Give `email` a second factor; return its base32 secret."""
        self.totp_secrets[email.strip().lower()] = secret
        return secret

    def totp_code(self, email: str) -> str:
        """The current authenticator code of `email` (which must have TOTP enabled)."""
        return totp(self.totp_secrets[email.strip().lower()])

    # ---- used by the routes ------------------------------------------------------------------------

    def new_csrf(self) -> str:
        token = secrets.token_hex(32)
        with self._lock:
            self._csrf.add(token)
        return token

    def csrf_ok(self, sent: Any, cookies: dict[str, str]) -> bool:
        """NextAuth's double submit: the body's csrfToken is the one in the csrf cookie, and was issued here."""
        cookie = cookies.get(CSRF_COOKIE, "").replace("%7C", "|").split("|", 1)[0]
        return isinstance(sent, str) and sent == cookie and sent in self._csrf

    def send_mail(self, base_url: str, email: str, *, with_code: bool, callback_url: str, now: float) -> LoginMail:
        link_token = secrets.token_urlsafe(24)
        query = urlencode({"callbackUrl": callback_url, "token": link_token, "email": email})
        mail = LoginMail(
            email=email,
            code=f"{secrets.randbelow(1_000_000):06d}" if with_code else None,
            link=f"{base_url}/api/auth/callback/email?{query}",
            link_token=link_token,
            sent_at=now,
        )
        with self._lock:
            self.mails.append(mail)
        return mail

    def take_code(self, email: str, code: Any, now: float) -> LoginMail | None:
        """The mail whose code this is, unexpired at `now` (the code is then used up), or None."""
        with self._lock:
            for mail in reversed(self.mails):
                fresh = now - mail.sent_at < self.code_ttl
                if mail.email == email and mail.code is not None and mail.code == code and fresh and not mail.code_used:
                    mail.code_used = True
                    return mail
        return None

    def take_link(self, email: str, link_token: str, now: float) -> bool:
        """True once for a link of `email` unexpired at `now`; a used or expired link is refused."""
        with self._lock:
            for mail in self.mails:
                if mail.link_token == link_token and mail.email == email:
                    good = not mail.link_used and now - mail.sent_at < self.link_ttl
                    mail.link_used = True
                    return good
        return False

    def challenge(self, email: str) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._challenges[token] = email
        return token

    def check_totp(self, challenge: Any, code: Any) -> str | None:
        """The email of a challenge answered with its current code (a step either side is allowed)."""
        with self._lock:
            email = self._challenges.get(challenge) if isinstance(challenge, str) else None
            secret = self.totp_secrets.get(email or "")
            now = time.time()
            if secret is None or code not in {totp(secret, now + d * TOTP_STEP) for d in (-1, 0, 1)}:
                return None
            del self._challenges[challenge]
            return email


def _cookies(req: RecordedRequest) -> dict[str, str]:
    jar: dict[str, str] = {}
    for pair in req.headers.get("cookie", "").split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep:
            jar[name] = value
    return jar


def _fields(req: RecordedRequest) -> dict[str, Any]:
    """The body, JSON or form-encoded (NextAuth reads either)."""
    if isinstance(req.json, dict):
        return req.json
    return dict(parse_qsl(req.body.decode("utf-8", "replace")))


def _email(value: Any) -> str | None:
    email = value.strip().lower() if isinstance(value, str) else ""
    return email if "@" in email and "." in email.rsplit("@", 1)[-1] and " " not in email else None


def _open_session(h: RouteHandler, email: str) -> list[tuple[str, str]]:
    """Start a session for `email`, whose token the fake accepts from now on; the Set-Cookie headers to send.

    The account of that email gets a new token (as a rotation does: its other sessions keep working); an email
    no account has becomes a new account (`fake.add_account`, gone at the next `reset()`).
    """
    fake = h.fake
    owner = next((a for a in fake.accounts.values() if (a.email or "").lower() == email), None)
    if owner is not None:
        token = fake.rotate_token(owner.label)
    else:
        token = fake.add_account(f"login-{secrets.token_urlsafe(32)}", email=email).token
    size = fake.logins.cookie_chunk_size
    if size:
        pieces = [token[i : i + size] for i in range(0, len(token), size)]
        cookies = [f"{COOKIE_NAME}.{i}={piece}; {_COOKIE_ATTRS}" for i, piece in enumerate(pieces)]
        cookies.append(f"{COOKIE_NAME}=; Max-Age=0; {_COOKIE_ATTRS}")  # NextAuth clears the unchunked name
    else:
        cookies = [f"{COOKIE_NAME}={token}; {_COOKIE_ATTRS}"]
    # A real sign-in sets several other cookies too (protocol 2.9); clients must pick the session's out.
    cookies += [f"pplx.visitor-id={secrets.token_hex(8)}; Path=/", f"{CSRF_COOKIE}=; Max-Age=0; {_COOKIE_ATTRS}"]
    return [("Set-Cookie", cookie) for cookie in cookies]


def _served(h: RouteHandler, variant: str) -> bool:
    if variant in h.fake.logins.variants:
        return True
    h.send_json(404, {"detail": "Not Found"})
    return False


@route("GET", r"/api/auth/csrf")
def csrf(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    token = h.fake.logins.new_csrf()
    digest = hashlib.sha256(token.encode()).hexdigest()
    h.send_json(200, {"csrfToken": token}, [("Set-Cookie", f"{CSRF_COOKIE}={token}%7C{digest}; {_COOKIE_ATTRS}")])


@route("POST", r"/api/auth/signin-email")
def signin_email(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Variant C: email a code and a link."""
    if not _served(h, "C"):
        return
    body, logins = _fields(req), h.fake.logins
    if not logins.csrf_ok(body.get("csrfToken"), _cookies(req)):
        return h.send_json(403, {"status": "failure", "error_code": "INVALID_CSRF"})
    email = _email(body.get("email"))
    if email is None:
        return h.send_json(400, {"status": "failure", "error_code": "INVALID_EMAIL"})
    logins.send_mail(h.fake.url, email, with_code=True, callback_url=h.fake.url + "/", now=h.fake.now())
    h.send_json(200, {"status": "success"})


@route("POST", r"/api/auth/signin-otp")
def signin_otp(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Variant C: a right code opens a session, or asks for the second factor."""
    if not _served(h, "C"):
        return
    body, logins = _fields(req), h.fake.logins
    if not logins.csrf_ok(body.get("csrfToken"), _cookies(req)):
        return h.send_json(403, {"status": "failure", "error_code": "INVALID_CSRF"})
    email = _email(body.get("email")) or ""
    if logins.take_code(email, body.get("otp"), h.fake.now()) is None:
        return h.send_json(401, {"status": "failure", "error_code": "INVALID_OTP"})
    if email in logins.totp_secrets:
        return h.send_json(200, {"status": "totp_challenge_required", "challenge_token": logins.challenge(email)})
    h.send_json(200, {"status": "success"}, _open_session(h, email))


@route("POST", r"/api/auth/totp/challenge-verify")
def totp_verify(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    body = _fields(req)
    email = h.fake.logins.check_totp(body.get("token"), body.get("code"))
    if email is None:
        return h.send_json(401, {"status": "failure", "error_code": "INVALID_TOTP_CODE"})
    h.send_json(200, {"status": "success"}, _open_session(h, email))


@route("POST", r"/api/auth/signin/email")
def signin_nextauth(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Variants A and B: NextAuth's email provider; B's `useNumericOtp` adds a code to the email."""
    logins = h.fake.logins
    if not logins.variants & {"A", "B"}:
        return h.send_json(404, {"detail": "Not Found"})
    body = _fields(req)
    if not logins.csrf_ok(body.get("csrfToken"), _cookies(req)):
        return h.send_json(200, {"url": f"{h.fake.url}/api/auth/signin?csrf=true"})
    email = _email(body.get("email"))
    if email is None:
        return h.send_json(200, {"url": f"{h.fake.url}/api/auth/error?error=EmailSignin"})
    with_code = "B" in logins.variants and str(body.get("useNumericOtp")).lower() == "true"
    callback_url = str(body.get("callbackUrl") or "/")
    logins.send_mail(h.fake.url, email, with_code=with_code, callback_url=callback_url, now=h.fake.now())
    h.send_json(200, {"url": f"{h.fake.url}/api/auth/verify-request?provider=email&type=email"})


@route("POST", r"/api/auth/otp-redirect-link")
def otp_redirect_link(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """Variant B: a right code is swapped for the magic link's callback (relative, as Perplexity answers it)."""
    if not _served(h, "B"):
        return
    body = _fields(req)
    email = _email(body.get("email")) or ""
    mail = h.fake.logins.take_code(email, body.get("otp"), h.fake.now())
    if mail is None:
        return h.send_json(400, {"error": "INVALID_OTP"})
    query = urlencode({"callbackUrl": body.get("redirectUrl") or "/", "token": mail.link_token, "email": email})
    h.send_json(200, {"redirect": f"/api/auth/callback/email?{query}"})


@route("GET", r"/api/auth/callback/email")
def callback(h: RouteHandler, req: RecordedRequest, _: dict[str, str]) -> None:
    """The magic link: good once, until `link_ttl`; then NextAuth's Verification error."""
    email = _email(req.query.get("email")) or ""
    if not h.fake.logins.take_link(email, req.query.get("token", ""), h.fake.now()):
        return h.send_bytes(302, b"", [("Location", h.fake.url + _VERIFICATION_ERROR)])
    target = req.query.get("callbackUrl") or "/"
    location = target if target.startswith((h.fake.url + "/", "/")) else h.fake.url + "/"
    h.send_bytes(302, b"", [("Location", location), *_open_session(h, email)])
