"""Getting a session token: `perplexity login` by code, link and TOTP, `perplexity import-cookie` for every paste
form, the files they write, and the server taking a pasted-form token; no output or log line ever shows it."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from api.core.accounts import parse_accounts
from api.stores.credentials import write_account, write_env_value
from perplexity.cookies import normalize_session_token, session_token_from_cookies
from perplexity.login import EmailLogin, LoginError, check_session, classify_answer
from perplexity.session import COOKIE_NAME
from perplexity.testing import Fault, Reply

from .conftest import ROOT, TOKEN

EMAIL = "alice@example.com"
CALLBACK = "/api/auth/callback/email"
PASTED = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..pasted-session.token_value-0123456789"


# ---- helpers ----------------------------------------------------------------------------------


class Answers(io.RawIOBase):
    """stdin for the CLI whose lines are computed when the CLI reads them (the code exists only once it is sent)."""

    def __init__(self, *answers: str | Callable[[], str]) -> None:
        self._answers = list(answers)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._pending and self._answers:
            answer = self._answers.pop(0)
            self._pending = ((answer() if callable(answer) else answer) + "\n").encode()
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


@pytest.fixture
def cli_app(fake):
    """An app against the fake, for driving its `perplexity` CLI group in-process (curl engine, as in production)."""
    from app import create_app

    application = create_app(
        {
            "TESTING": True,
            "PERPLEXITY_BASE_URL": fake.url,
            "PERPLEXITY_IMPERSONATE": "chrome",
            "PERPLEXITY_READ_TIMEOUT": 3.0,
            "PERPLEXITY_CONNECT_TIMEOUT": 2.0,
        }
    )
    yield application
    application.extensions["perplexity"].close()


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """Every log record of the process while the test runs, before any redaction."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(level)


def run(app, *args: str, stdin=None):
    """Invoke `flask perplexity ARGS` on the app; the result carries stdout and stderr apart."""
    runner = app.test_cli_runner()
    return runner.invoke(args=["perplexity", *args], input=io.BufferedReader(stdin) if stdin else None)


def sign_in(app, env: Path, *answers: str | Callable[[], str]):
    """`perplexity login` for EMAIL into the dotenv file `env`, answering the prompts with `answers`."""
    return run(app, "login", "--email", EMAIL, "--env-file", str(env), stdin=Answers(*answers))


def output_of(result) -> str:
    return result.stdout + result.stderr


def emailed_code(fake, email: str = EMAIL):
    return lambda: fake.login_mail(email).code


def emailed_link(fake, email: str = EMAIL):
    return lambda: fake.login_mail(email).link


def env_token(path: Path) -> str:
    (line,) = [x for x in path.read_text().splitlines() if x.startswith("PERPLEXITY_SESSION_TOKEN=")]
    return line.partition("=")[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_secret_kept(token: str, *texts: str, records: list[logging.LogRecord] = ()) -> None:
    """The token (or any 12-character piece of it) is in none of the texts or log records."""
    blob = "\n".join([*texts, *(r.getMessage() for r in records), *(str(r.args) for r in records)])
    pieces = {token[i : i + 12] for i in range(0, max(1, len(token) - 11), 6)}
    assert not [piece for piece in pieces if piece in blob]


# ---- login ------------------------------------------------------------------------------------


def test_login_by_code_sets_the_env_file_line_and_nothing_else(fake, cli_app, tmp_path, logged):
    env = tmp_path / ".env"
    before = "# my settings\r\nOPENAI_API_KEY=sk-local\r\nPERPLEXITY_SESSION_TOKEN=old-token\r\nLOG_LEVEL=DEBUG"
    env.write_bytes(before.encode())
    env.chmod(0o644)

    result = sign_in(cli_app, env, emailed_code(fake))

    assert result.exit_code == 0, output_of(result)
    token = env_token(env)
    assert fake.authenticated(token) and fake.account_of(token).email == EMAIL
    assert env.read_bytes() == before.replace("old-token", token).encode()  # CRLF, no final newline: kept
    assert mode(env) == 0o600
    assert f"Logged in as {EMAIL}" in result.stdout and ".env (PERPLEXITY_SESSION_TOKEN)" in result.stdout
    assert_secret_kept(token, output_of(result), records=logged)
    assert [r.path for r in fake.requests][:3] == ["/api/auth/csrf", "/api/auth/signin-email", "/api/auth/signin-otp"]


def test_login_by_pasted_link(fake, cli_app, tmp_path, logged):
    env = tmp_path / ".env"
    result = sign_in(cli_app, env, emailed_link(fake))
    assert result.exit_code == 0, output_of(result)
    token = env_token(env)
    assert fake.authenticated(token)
    assert env.read_text() == f"PERPLEXITY_SESSION_TOKEN={token}\n" and mode(env) == 0o600
    assert_secret_kept(token, output_of(result), records=logged)


def test_login_with_a_second_factor(fake, cli_app, tmp_path, logged):
    fake.logins.enable_totp(EMAIL)
    env = tmp_path / ".env"
    result = sign_in(cli_app, env, emailed_code(fake), lambda: fake.logins.totp_code(EMAIL))
    assert result.exit_code == 0, output_of(result)
    assert "two-factor" in result.stdout
    token = env_token(env)
    assert fake.authenticated(token)
    assert "/api/auth/totp/challenge-verify" in [r.path for r in fake.requests]
    assert_secret_kept(token, output_of(result), records=logged)


@pytest.mark.parametrize(
    "variants, answer, paths",
    [
        ({"A", "B"}, emailed_code, ["/api/auth/signin/email", "/api/auth/otp-redirect-link", CALLBACK]),
        ({"A"}, emailed_link, ["/api/auth/signin/email", CALLBACK]),
    ],
    ids=["B-code", "A-link"],
)
def test_older_flows_are_used_when_the_newest_is_missing(fake, cli_app, tmp_path, variants, answer, paths):
    fake.logins.variants = variants
    fake.logins.cookie_chunk_size = 9  # the session arrives as .0, .1, ... chunks
    env = tmp_path / ".env"
    result = sign_in(cli_app, env, answer(fake))
    assert result.exit_code == 0, output_of(result)
    assert fake.authenticated(env_token(env))
    seen = [r.path for r in fake.requests]
    assert all(path in seen for path in paths)


def test_a_code_for_a_link_only_sign_in_asks_for_the_link(fake, cli_app, tmp_path):
    fake.logins.variants = {"A"}  # NextAuth's email provider alone: the email has a link, no code
    env = tmp_path / ".env"
    result = sign_in(cli_app, env, "123456", emailed_link(fake))
    assert result.exit_code == 0, output_of(result)
    assert "takes no code" in result.stderr and fake.authenticated(env_token(env))


def test_a_wrong_code_is_refused_with_exit_code_1_and_nothing_written(fake, cli_app, tmp_path):
    env = tmp_path / ".env"
    wrong = lambda: "000000" if fake.login_mail(EMAIL).code != "000000" else "111111"  # noqa: E731
    result = sign_in(cli_app, env, wrong)
    assert result.exit_code == 1
    assert "did not accept the code" in result.stderr and "INVALID_OTP" in result.stderr
    assert not env.exists()


def test_a_wrong_authenticator_code_exits_1(fake, cli_app, tmp_path):
    fake.logins.enable_totp(EMAIL)
    env = tmp_path / ".env"
    wrong = lambda: "000000" if fake.logins.totp_code(EMAIL) != "000000" else "111111"  # noqa: E731
    result = sign_in(cli_app, env, emailed_code(fake), wrong)
    assert result.exit_code == 1 and "authenticator code" in result.stderr
    assert not env.exists()


@pytest.mark.parametrize("expire", ["at once", "later"])
def test_an_expired_link_exits_1(fake, cli_app, tmp_path, expire):
    if expire == "at once":
        fake.logins.link_ttl = 0
    env = tmp_path / ".env"

    def expired_link() -> str:
        fake.advance(fake.logins.link_ttl + 1)  # the fake's clock: nothing sleeps
        return fake.login_mail(EMAIL).link

    result = sign_in(cli_app, env, expired_link)
    assert result.exit_code == 1
    assert "expired or was already used" in result.stderr
    assert not env.exists()


def test_a_used_link_exits_1(fake, cli_app, tmp_path):
    env = tmp_path / ".env"
    first = sign_in(cli_app, env, emailed_link(fake))
    assert first.exit_code == 0, output_of(first)
    used = fake.login_mail(EMAIL).link
    before = env.read_bytes()
    again = sign_in(cli_app, env, used)
    assert again.exit_code == 1 and "expired or was already used" in again.stderr
    assert env.read_bytes() == before


def test_answers_that_are_neither_code_nor_link_are_asked_again(fake, cli_app, tmp_path):
    env = tmp_path / ".env"
    result = sign_in(cli_app, env, "12345", emailed_code(fake))
    assert result.exit_code == 0, output_of(result)
    assert "neither a 6-digit code nor a link" in result.stderr
    nothing = sign_in(cli_app, env, "a", "b", "c")
    assert nothing.exit_code == 1 and "No code or link" in nothing.stderr


def test_a_link_to_another_site_is_refused(fake, cli_app, tmp_path):
    evil = "https://evil.example.com/api/auth/callback/email?token=x&email=alice%40example.com"
    result = sign_in(cli_app, tmp_path / ".env", evil)
    assert result.exit_code == 1 and "not a Perplexity sign-in link" in result.stderr
    assert not [r for r in fake.requests if r.path == CALLBACK]


def test_cloudflare_on_the_sign_in_is_named(fake, cli_app, tmp_path):
    fake.fault_for("/api/auth/signin-email", Fault("cloudflare"))
    result = sign_in(cli_app, tmp_path / ".env", "x")
    assert result.exit_code == 1 and "Cloudflare blocked the Perplexity sign-in email" in result.stderr


def test_login_to_an_accounts_file_adds_then_replaces_the_account_line(fake, cli_app, tmp_path, logged):
    accounts = tmp_path / "accounts.txt"
    before = "# pool\nwork other-token-0123456789 socks5://127.0.0.1:1080\n\n"
    accounts.write_text(before)
    args = ["login", "--email", EMAIL, "--accounts-file", str(accounts)]

    first = run(cli_app, *args, stdin=Answers(emailed_code(fake)))
    assert first.exit_code == 0, output_of(first)
    token = accounts.read_text().splitlines()[-1].split()[1]
    assert accounts.read_text() == before + f"{EMAIL} {token}\n" and mode(accounts) == 0o600

    second = run(cli_app, *args, stdin=Answers(emailed_code(fake)))  # the same email: its line, a new token
    assert second.exit_code == 0, output_of(second)
    specs = parse_accounts(accounts.read_text())
    assert [(s.label, s.proxy) for s in specs] == [("work", "socks5://127.0.0.1:1080"), (EMAIL, None)]
    assert specs[1].token != token and fake.authenticated(specs[1].token)
    assert_secret_kept(specs[1].token, output_of(first), output_of(second), records=logged)

    # Another account's line: its token replaced, its proxy kept unless a new one is given.
    assert run(cli_app, "import-cookie", "--accounts-file", str(accounts), "--label", "work", PASTED).exit_code == 0
    assert accounts.read_text() == f"# pool\nwork {PASTED} socks5://127.0.0.1:1080\n\n{EMAIL} {specs[1].token}\n"
    proxy = ["--label", "work", "--proxy", "http://127.0.0.1:3128"]
    assert run(cli_app, "import-cookie", "--accounts-file", str(accounts), *proxy, PASTED).exit_code == 0
    assert parse_accounts(accounts.read_text())[0].proxy == "http://127.0.0.1:3128"


def test_the_configured_accounts_file_is_the_default_destination(fake, tmp_path):
    from app import create_app

    accounts = tmp_path / "accounts.txt"
    accounts.write_text(f"default {TOKEN}\n")
    app = create_app({"TESTING": True, "PERPLEXITY_BASE_URL": fake.url, "PERPLEXITY_ACCOUNTS_FILE": str(accounts)})
    result = run(app, "import-cookie", "--label", "second", PASTED)
    assert result.exit_code == 0, output_of(result)
    assert accounts.read_text() == f"default {TOKEN}\nsecond {PASTED}\n"
    # --env-file says otherwise, and is told the server reads the accounts file first
    env = tmp_path / ".env"
    result = run(app, "import-cookie", "--env-file", str(env), PASTED)
    assert result.exit_code == 0 and env_token(env) == PASTED
    assert "PERPLEXITY_ACCOUNTS_FILE is set" in result.stderr
    app.extensions["perplexity"].close()


def test_label_and_proxy_need_an_accounts_file(cli_app, tmp_path):
    result = run(cli_app, "import-cookie", "--env-file", str(tmp_path / ".env"), "--label", "x", PASTED)
    assert result.exit_code == 2 and "--accounts-file" in result.stderr


def test_an_account_line_the_server_would_refuse_is_not_written(cli_app, tmp_path):
    accounts = tmp_path / "accounts.txt"
    accounts.write_text("account-2 two-token-0123456789\n")
    before = accounts.read_bytes()
    result = run(cli_app, "import-cookie", "--accounts-file", str(accounts), PASTED)  # unlabelled line 2: account-2
    assert result.exit_code == 1 and "used twice" in result.stderr
    result = run(cli_app, "import-cookie", "--accounts-file", str(accounts), "--label", "a#b", PASTED)
    assert result.exit_code == 1 and "one word" in result.stderr
    assert accounts.read_bytes() == before


# ---- import-cookie -------------------------------------------------------------------------------

N = COOKIE_NAME
HALF = len(PASTED) // 2
PASTE_FORMS = {
    "raw": PASTED,
    "raw with spaces and newline": f"  {PASTED}\n",
    "double quoted": f'"{PASTED}"',
    "single quoted": f"'{PASTED}'",
    "name=value": f"{N}={PASTED}",
    "cookie header": f"Cookie: pplx.visitor-id=abc; {N}={PASTED}; __cf_bm=zzz",
    "header without the name": f"pplx.visitor-id=abc; {N}={PASTED}; other=1",
    "chunked": f"Cookie: {N}.1={PASTED[HALF:]}; x=y; {N}.0={PASTED[:HALF]}",
    "set-cookie line": f"set-cookie: {N}={PASTED}; Path=/; HttpOnly; Secure",
    "curl command": f"curl 'https://www.perplexity.ai/' -H 'cookie: a=b; {N}={PASTED}' --compressed",
    "editthiscookie json": json.dumps(
        [
            {"domain": ".perplexity.ai", "name": "pplx.visitor-id", "value": "abc", "httpOnly": False},
            {"domain": "www.perplexity.ai", "name": N, "value": PASTED, "httpOnly": True, "secure": True},
        ],
        indent=2,
    ),
    "cookie-editor chunked json": json.dumps(
        [{"name": f"{N}.0", "value": PASTED[:HALF]}, {"name": f"{N}.1", "value": PASTED[HALF:]}]
    ),
    "name-value dict json": json.dumps({"pplx.visitor-id": "abc", N: PASTED}),
    "playwright storage state": json.dumps({"cookies": [{"name": N, "value": PASTED}], "origins": []}),
    "netscape cookies.txt": f"# Netscape HTTP Cookie File\n#HttpOnly_.perplexity.ai\tTRUE\t/\tTRUE\t0\t{N}\t{PASTED}\n",
}


@pytest.mark.parametrize("text", PASTE_FORMS.values(), ids=PASTE_FORMS.keys())
def test_every_paste_form_normalises_to_the_token(text):
    assert normalize_session_token(text) == PASTED


@pytest.mark.parametrize("text", PASTE_FORMS.values(), ids=PASTE_FORMS.keys())
def test_import_cookie_reads_every_paste_form_from_stdin(cli_app, tmp_path, text, logged):
    env = tmp_path / ".env"
    result = run(cli_app, "import-cookie", "--env-file", str(env), stdin=Answers(text))
    assert result.exit_code == 0, output_of(result)
    assert env_token(env) == PASTED and mode(env) == 0o600
    assert_secret_kept(PASTED, output_of(result), records=logged)


@pytest.mark.parametrize("form", ["raw", "cookie header", "chunked", "name-value dict json"])
def test_import_cookie_takes_it_as_an_argument_or_a_file(cli_app, tmp_path, form):
    env = tmp_path / ".env"
    result = run(cli_app, "import-cookie", "--env-file", str(env), PASTE_FORMS[form])
    assert result.exit_code == 0, output_of(result)
    assert env_token(env) == PASTED
    export = tmp_path / "cookies.json"
    export.write_text(PASTE_FORMS["editthiscookie json"])
    env.unlink()
    result = run(cli_app, "import-cookie", "--env-file", str(env), "--file", str(export))
    assert result.exit_code == 0 and env_token(env) == PASTED
    assert_secret_kept(PASTED, output_of(result))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "nothing pasted"),
        ("pplx.visitor-id=abc; __cf_bm=secret-value-1", "found: __cf_bm, pplx.visitor-id"),
        (json.dumps([{"name": "pplx.visitor-id", "value": "abc"}]), "found: pplx.visitor-id"),
        ('{"a": 1}', "no __Secure-next-auth.session-token cookie"),
        (f"{N}.1=second-half-only", ".0 missing"),
        (f"{N}=one-value-aaaa; {N}=another-value", "several different"),
        ("two words", "characters a cookie cannot"),
        (f"Cookie: a=b; {N}=; c=d", "is empty"),
    ],
)
def test_a_paste_without_a_session_token_is_refused_clearly(cli_app, tmp_path, text, message):
    with pytest.raises(ValueError) as info:
        normalize_session_token(text)
    assert message in str(info.value)
    for value in ("secret-value-1", "second-half-only", "one-value-aaaa", "another-value"):
        assert value not in str(info.value)
    env = tmp_path / ".env"
    env.write_text("A=1\n")
    result = run(cli_app, "import-cookie", "--env-file", str(env), stdin=Answers(text))
    assert result.exit_code == 1 and message in result.stderr
    assert env.read_text() == "A=1\n"


def test_import_cookie_check_asks_perplexity_first(fake, cli_app, tmp_path):
    env = tmp_path / ".env"
    result = run(cli_app, "import-cookie", "--check", "--env-file", str(env), f"{N}={TOKEN}")
    assert result.exit_code == 0, output_of(result)
    assert "Logged in as tester@example.com" in result.stdout and env_token(env) == TOKEN
    result = run(cli_app, "import-cookie", "--check", "--env-file", str(tmp_path / "other.env"), PASTED)
    assert result.exit_code == 1 and "not logged in" in result.stderr
    assert not (tmp_path / "other.env").exists()


# ---- the server takes pasted forms ---------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, value",
    [
        ("PERPLEXITY_SESSION_TOKEN", f"Cookie: pplx.visitor-id=abc; {N}={TOKEN}; __cf_bm=zzz"),
        ("PERPLEXITY_SESSION_TOKEN", json.dumps([{"name": N, "value": TOKEN}])),
        ("PERPLEXITY_SESSION_TOKEN", f'  "{TOKEN}"  '),
        ("PERPLEXITY_SESSION_TOKENS", f"{N}={TOKEN}"),
        ("PERPLEXITY_ACCOUNTS_FILE", f"main {N}={TOKEN}\n"),
    ],
    ids=["cookie header", "json export", "quoted", "tokens list", "accounts file"],
)
def test_the_server_answers_with_a_pasted_form_token(fake, tmp_path, logged, setting, value):
    from app import create_app

    if setting == "PERPLEXITY_ACCOUNTS_FILE":
        (tmp_path / "accounts.txt").write_text(value)
        value = str(tmp_path / "accounts.txt")
    fake.enqueue(Reply(answer="Paris is the capital of France."))
    app = create_app({"TESTING": True, "PERPLEXITY_BASE_URL": fake.url, setting: value})
    try:
        with app.test_client() as client:
            response = client.post(
                "/v1/chat/completions",
                json={"model": "perplexity-auto", "messages": [{"role": "user", "content": "Capital of France?"}]},
            )
    finally:
        app.extensions["perplexity"].close()
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "Paris" in response.get_json()["choices"][0]["message"]["content"]
    assert fake.asks and f"{N}={TOKEN}" in fake.asks[-1].headers["cookie"]
    assert_secret_kept(TOKEN, response.get_data(as_text=True), records=logged)


def test_a_pasted_form_token_keeps_its_rotations_in_the_token_file(fake, tmp_path):
    from app import create_app

    fake.rotate_on_session = True
    token_file = tmp_path / "token.json"
    config = {"PERPLEXITY_SESSION_TOKEN": f"Cookie: {N}={TOKEN}", "PERPLEXITY_TOKEN_FILE": str(token_file)}
    app = create_app({"TESTING": True, "PERPLEXITY_BASE_URL": fake.url, **config})
    try:
        info, error = app.extensions["perplexity"].session(max_age=0)
    finally:
        app.extensions["perplexity"].close()
    assert info is not None and info.valid, error
    rotated = json.loads(token_file.read_text())["token"]
    assert rotated != TOKEN and fake.authenticated(rotated)


def test_a_token_setting_without_a_token_stops_the_start(fake):
    from api.config import SettingError
    from app import create_app

    with pytest.raises(SettingError, match="PERPLEXITY_SESSION_TOKEN: no __Secure-next-auth.session-token"):
        create_app({"TESTING": True, "PERPLEXITY_SESSION_TOKEN": "Cookie: a=b; c=d-secret-value"})


# ---- the real commands, as a user runs them ------------------------------------------------------


def _env(fake, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERPLEXITY_", "FLASK_"))}
    env.update(PYTHONPATH=str(ROOT), PERPLEXITY_BASE_URL=fake.url, LOG_LEVEL="DEBUG")
    return env


def test_flask_perplexity_login_end_to_end(fake, tmp_path):
    """`flask --app app perplexity login`, answers piped in as a user would type them; .env in the working dir."""
    (tmp_path / ".env").write_text("# mine\nKEEP=1\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "perplexity", "login"],
        cwd=tmp_path,
        env=_env(fake, tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        process.stdin.write(EMAIL + "\n")
        process.stdin.flush()
        assert fake.wait_until(lambda: fake.login_mail(EMAIL) is not None, timeout=60)
        out, err = process.communicate(fake.login_mail(EMAIL).code + "\n", timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out + err
    text = (tmp_path / ".env").read_text()
    token = env_token(tmp_path / ".env")
    assert text == f"# mine\nKEEP=1\nPERPLEXITY_SESSION_TOKEN={token}\n" and mode(tmp_path / ".env") == 0o600
    assert fake.authenticated(token)
    assert_secret_kept(token, out, err)


def test_python_m_api_cli_import_cookie_end_to_end(fake, tmp_path):
    accounts = tmp_path / "accounts.txt"
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "import-cookie", "--accounts-file", str(accounts), "--label", "main"],
        cwd=tmp_path,
        env=_env(fake, tmp_path),
        input=PASTE_FORMS["cookie header"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert accounts.read_text() == f"main {PASTED}\n" and mode(accounts) == 0o600
    assert_secret_kept(PASTED, result.stdout, result.stderr)


# ---- the pieces -------------------------------------------------------------------------------------


def test_classify_answer():
    assert classify_answer(" 123 456 ") == ("code", "123456")
    assert classify_answer("123-456") == ("code", "123456")
    assert classify_answer("<https://www.perplexity.ai/api/auth/callback/email?token=x>")[0] == "link"
    assert classify_answer("12345") is None and classify_answer("hello") is None


def test_session_token_from_response_cookies():
    assert session_token_from_cookies({N: "whole", "x": "y"}) == "whole"
    assert session_token_from_cookies({f"{N}.1": "b", f"{N}.0": "a", N: ""}) == "ab"
    assert session_token_from_cookies({f"{N}.1": "b"}) is None
    assert session_token_from_cookies({"next-auth.csrf-token": "x"}) is None


def test_the_login_objects_never_show_secrets(fake):
    fake.logins.enable_totp(EMAIL)
    with EmailLogin(EMAIL, base_url=fake.url) as flow:
        flow.send_code()
        challenge = flow.submit_code(fake.login_mail(EMAIL).code)
        assert challenge.token not in repr(challenge)
        with pytest.raises(LoginError) as info:
            flow.submit_totp(challenge, "abcdef")
        assert info.value.reason == "bad_totp" and challenge.token not in str(info.value)
        token = flow.submit_totp(challenge, fake.logins.totp_code(EMAIL))
    assert check_session(token, base_url=fake.url) == EMAIL
    assert check_session("not-a-session", base_url=fake.url) is None


def test_env_writer_handles_export_multiline_values_and_symlinks(tmp_path):
    real = tmp_path / "real.env"
    real.write_text("A=1\nexport PERPLEXITY_SESSION_TOKEN='old\nstill old'\nB=2\nPERPLEXITY_SESSION_TOKEN=dup\n")
    link = tmp_path / ".env"
    link.symlink_to(real)
    assert write_env_value(link, "PERPLEXITY_SESSION_TOKEN", "new$tok") == "replaced"
    assert link.is_symlink()
    assert real.read_text() == (
        "A=1\nexport PERPLEXITY_SESSION_TOKEN='new$tok'\nB=2\nPERPLEXITY_SESSION_TOKEN='new$tok'\n"
    )
    assert mode(real) == 0o600
    from dotenv import dotenv_values

    assert dotenv_values(real)["PERPLEXITY_SESSION_TOKEN"] == "new$tok"


def test_accounts_writer_keeps_everything_else(tmp_path):
    path = tmp_path / "accounts"
    path.write_text("# comment\r\nfirst-token-0123456789   # the first\r\nwork work-token-0123456789 http://p:1\r\n")
    assert write_account(path, "first-token-0123456789") == "unchanged"
    assert write_account(path, "new-token-0123456789", label="work") == "replaced"
    assert path.read_bytes() == (
        b"# comment\r\nfirst-token-0123456789   # the first\r\nwork new-token-0123456789 http://p:1\r\n"
    )
    assert write_account(path, "third-token-0123456789", label="account-1", check=parse_accounts) == "replaced"
    assert path.read_bytes().splitlines(keepends=True)[1] == b"account-1 third-token-0123456789\r\n"
    with pytest.raises(ValueError, match="proxy"):
        write_account(path, "x-token-0123456789", label="x", proxy="not a url")


def test_on_a_terminal_the_code_is_not_echoed(fake, tmp_path):
    """On a real terminal (a pty here) the email is echoed as typed, the code is not."""
    import pty
    import select

    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "login", "--env-file", str(tmp_path / ".env")],
        cwd=tmp_path,
        env=_env(fake, tmp_path),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,  # no controlling terminal but the pty: getpass must not find the test runner's
    )
    os.close(slave)
    seen = b""

    def read_until(done: Callable[[bytes], bool]) -> None:
        nonlocal seen
        while not done(seen):
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, seen
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process has gone and closed the pty
                return
            if not chunk:
                return
            seen += chunk

    try:
        read_until(lambda text: b"Email: " in text)
        os.write(master, (EMAIL + "\n").encode())
        read_until(lambda text: b"from the email: " in text)
        code = fake.login_mail(EMAIL).code
        os.write(master, (code + "\n").encode())
        read_until(lambda text: b"Restart the server" in text)
        assert process.wait(timeout=60) == 0, seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    output = seen.decode(errors="replace")
    assert EMAIL in output and code not in output
    assert_secret_kept(env_token(tmp_path / ".env"), output)
