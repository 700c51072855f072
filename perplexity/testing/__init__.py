"""A fake Perplexity web upstream (a real loopback HTTP server, stdlib only) for tests and local runs.

    from perplexity.testing import FakePerplexity, Reply, Fault

    with FakePerplexity(session_token="test-session-token") as fake:
        fake.enqueue(Fault("rate_limit", retry_after=1), Reply(answer="Paris [1].", format="diff"))
        ...  # point the client at fake.url; inspect fake.asks, fake.threads, fake.open_streams

`Reply` scripts one answer stream (formats "text", "markdown", "diff", "workflow", "plaintext");
`Fault` scripts one failure (pre-stream statuses, stalls, resets, malformed or failed frames, ...);
`load_capture_frames` turns a real capture into frames for `Reply(frames=...)`.
`fake.responder = ProtocolModel()` answers unscripted asks like a model following the server's tool and
JSON-output prompt protocol; `tool_call_text`, `tool_calls_text`, `false_positive_text` and `json_text`
script the answer texts models emit, and `example_instance` makes an instance of a JSON Schema (see `.agents`).
`FakePerplexity(tls=True, http2=True)` serves HTTPS with ALPN h2 like perplexity.ai's Cloudflare front
(trust `fake.ca_path`); that mode needs the test requirements (trustme, h2), plain HTTP needs nothing.
Run `python -m perplexity.testing --port 8765` (add `--tls --http2`) to serve one by hand.

Sign-in (protocol 2.9, see `.login`): the fake serves the email sign-in flows C (`/api/auth/csrf`, `signin-email`,
`signin-otp`, `totp/challenge-verify`), B (`signin/email` with `useNumericOtp`, `otp-redirect-link`) and A (the
`/api/auth/callback/email` magic link, good once). Nothing is mailed: `fake.login_mail(email)` is the latest
sign-in email (`.code`, six digits, None when only a link was asked for; `.link`). `fake.logins` holds the knobs:
`variants` (a set of "A", "B", "C"; the others' endpoints answer 404), `code_ttl` and `link_ttl` (seconds of
the fake's clock, so `fake.advance()` expires them), `cookie_chunk_size` (hand the session out as `.0`, `.1`, ...),
`enable_totp(email)` (a second factor; `totp_code(email)` is its current code). A sign-in opens a new session of
the account with that email (a new account for an unknown email), which the other endpoints accept.

Accounts. `session_token` is the cookie of the account labelled "default" (its user is `fake.user`);
`fake.add_account(token, label=None, tier="pro", email=None, user_id=None) -> FakeAccount` adds another
(its own user id and email; removed by `reset()`), and `FakePerplexity(accounts={label: token})` adds
accounts that survive `reset()`. `fake.account(label)` and `fake.accounts` give them (`.token`, `.tokens`,
`.user`, `.user_id`, `.email`, `.tier`, `.rotations`, `.expired`, `.quota`); `fake.account_of(token)` is
the account a cookie value belongs to. Every recorded request has `account`: the label of the account whose
token its cookie carries (current, rotated or expired alike; None without a cookie the fake issued);
`fake.requests_of(label)`, `fake.asks_of(label)` and `fake.threads_of(label)` filter by it. The session, quota
table, settings, uploads and answer envelopes are the account's own; a thread belongs to the account that
created it, and a follow-up, reconnect, stop, export or delete of it with another account's cookie gets 403 `{}`,
the answer for an unknown thread (protocol 3.8); `list_ask_threads` lists only the caller's threads.

Per-account switches (label None means the default account; `reset()` clears them all):
- `fake.enqueue(*items, account=label)`: a script only that account's asks take, before the shared one.
- `fake.expire(label)` / `fake.revive(label)`: its cookies stop logging in: `/api/auth/session` 200 `{}`,
  `/rest/rate-limit/status` all unavailable (which looks exhausted, protocol 2.7), asks and other calls
  403 JSON. (`fake.session_valid = False` still logs every account out at once.)
- `fake.rate_limit(label, retry_after=30.0)`: each ask is 429 with `Retry-After` (the seconds left,
  rounded up to a tenth; `fake.rate_limited_for(label)`) until `retry_after` seconds of the fake's clock
  pass, then asks answer again; None lifts it. Other calls of the account are not limited.
- `fake.set_quota(label, pro_search=, research=, agentic_research=, labs=, reset=, when_exhausted=)`:
  an int shows `remaining_detail: {"kind": "exact", "remaining": n}` and meters the mode: each ask of it
  that gets a stream spends one (`fake.quota_of(label)` is what is left), the mode coming from
  model_preference (search models and unknown ones: pro_search; pplx_alpha: research;
  pplx_agentic_research: agentic_research; pplx_beta: labs). None shows `not_provided`, unmetered. At 0 the
  mode is `available: false` and its asks fail with `when_exhausted`, by default a 200 stream whose first
  frame is `status: FAILED, error_code: RATE_LIMIT_EXCEEDED` (protocol 3.8; no capture shows an exhausted
  account, so this is a choice; pass e.g. `Fault("rate_limit", retry_after=3600)` for a 429 instead).
  `reset=s` refills the metered modes to the counts set every `s` seconds of the fake's clock. Until a
  test sets them, the table shows research 20, agentic_research 5, labs 50 and pro_search not_provided,
  never spent.
- `fake.set_rotation(label, on_session=True, on_ask=False, grace=None)`: a logged-in `/api/auth/session`
  answer (and/or each ask's 200 stream) rotates the account's token and carries
  `Set-Cookie: __Secure-next-auth.session-token=<new>`; the replaced token keeps working for `grace`
  seconds of the fake's clock (None: for ever, a rolling session; 0: it stops at once, then it is refused
  like an expired one). `fake.rotate_token(label) -> str` rotates by hand; `fake.rotate_on_session = True`
  rotates every account on its session call (with each account's grace, for ever by default).
- The clock: `fake.now()` is `fake.clock()` (default `time.monotonic`) plus what `fake.advance(seconds)`
  added; rate limits, quota resets and rotation grace follow it, so tests need not sleep.
"""

from __future__ import annotations

from .accounts import DEFAULT_ACCOUNT, QUOTA_MODES, FakeAccount
from .agents import (
    CALL_FORMS,
    ProtocolModel,
    example_instance,
    false_positive_text,
    json_text,
    tool_call_text,
    tool_calls_text,
)
from .captures import load_capture_frames
from .script import FAULT_KINDS, REPLY_FORMATS, Fault, RecordedRequest, Reply, ThreadRecord
from .server import FakePerplexity

__all__ = [
    "CALL_FORMS",
    "DEFAULT_ACCOUNT",
    "FAULT_KINDS",
    "QUOTA_MODES",
    "REPLY_FORMATS",
    "FakeAccount",
    "FakePerplexity",
    "Fault",
    "ProtocolModel",
    "RecordedRequest",
    "Reply",
    "ThreadRecord",
    "example_instance",
    "false_positive_text",
    "json_text",
    "load_capture_frames",
    "tool_call_text",
    "tool_calls_text",
]
