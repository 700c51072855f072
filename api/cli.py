"""`flask --app app perplexity login | import-cookie` (or `python -m api.cli ...`): save a session token for the server.

`login` signs in by email (the 6-digit code or the emailed link, then the authenticator code when the account has
a second factor); `import-cookie` takes the cookie as copied from a browser, in any of the usual forms. Both write
the token to `.env` (PERPLEXITY_SESSION_TOKEN) or, with `--accounts-file` (or PERPLEXITY_ACCOUNTS_FILE set), as
an account line. The token is never shown, not even in part; codes and links are not echoed on a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import click
from click.core import ParameterSource
from flask import current_app, has_app_context
from flask.cli import ScriptInfo

from perplexity.errors import PerplexityError

from .config import SETTINGS, defaults, load_dotenv_file, settings_from_env, validate
from .core import signin
from .edge import redact

__all__ = ["group", "main"]

# The settings the commands use; only these are checked, so a broken unrelated one does not stop a login.
_USED = (
    "PERPLEXITY_BASE_URL",
    "PERPLEXITY_IMPERSONATE",
    "PERPLEXITY_CA_BUNDLE",
    "PERPLEXITY_CONNECT_TIMEOUT",
    "PERPLEXITY_READ_TIMEOUT",
    "PERPLEXITY_PROXY",
    "PERPLEXITY_ACCOUNTS_FILE",
)
_TRIES = 3  # answers that are neither a code nor a link are asked again, this many times in all

group = click.Group("perplexity", help="Sign in to Perplexity and save the session token where the server reads it.")


def _settings() -> Mapping[str, Any]:
    """The app's config under `flask`; standalone, the environment and `.env`, as the server reads them."""
    if has_app_context():
        return current_app.config
    info = click.get_current_context().find_object(ScriptInfo)  # under `flask` (or its test runner), no context yet
    if info is not None:
        return info.load_app().config
    load_dotenv_file()
    values = defaults() | settings_from_env(os.environ)
    validate(values, [s for s in SETTINGS if s.name in _USED])
    return values


def _destination_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--env-file",
            default=".env",
            show_default=True,
            type=click.Path(dir_okay=False),
            help="The dotenv file whose PERPLEXITY_SESSION_TOKEN is set.",
        ),
        click.option(
            "--accounts-file",
            type=click.Path(dir_okay=False),
            help="Write an account line ('label token [proxy]') to this file instead; "
            "the default when PERPLEXITY_ACCOUNTS_FILE is set (unless --env-file is given).",
        ),
        click.option("--label", help="The account's label in the accounts file; its line is replaced."),
        click.option("--proxy", help="The account's proxy URL in the accounts file (also used to sign in)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _destination(
    ctx: click.Context, settings: Mapping[str, Any], options: dict[str, Any], default_label: str | None = None
) -> signin.Destination:
    accounts_file = options["accounts_file"]
    if accounts_file is None and ctx.get_parameter_source("env_file") is not ParameterSource.COMMANDLINE:
        accounts_file = settings.get("PERPLEXITY_ACCOUNTS_FILE") or None
    if accounts_file is None and (options["label"] or options["proxy"]):
        raise click.UsageError("--label and --proxy describe an accounts-file line: add --accounts-file.")
    if accounts_file is None:
        for name in ("PERPLEXITY_ACCOUNTS_FILE", "PERPLEXITY_SESSION_TOKENS"):
            if settings.get(name):
                click.echo(f"Note: {name} is set, and the server reads it before {signin.TOKEN_SETTING}.", err=True)
    label = options["label"] or (default_label if accounts_file else None)
    return signin.Destination(options["env_file"], accounts_file, label, options["proxy"])


def _prompt_secret(text: str) -> str:
    # Hidden on a terminal; piped input is read as is (getpass would go looking for a terminal to read from).
    return str(click.prompt(text, hide_input=sys.stdin.isatty(), prompt_suffix=": "))


def _save(token: str, destination: signin.Destination) -> None:
    try:
        outcome = signin.save_token(token, destination)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"Could not write {destination.describe()}: {exc}") from None
    done = {"added": "added", "replaced": "updated", "unchanged": "already there"}.get(outcome, outcome)
    click.echo(f"Session token {done} in {destination.describe()}, readable by you only.")
    if destination.accounts_file:  # the server's account watcher reloads the file when it changes
        click.echo("A running server with this accounts file picks the change up by itself.")
    else:
        click.echo("Restart the server to use it.")


def _verify(token: str, settings: Mapping[str, Any], proxy: str | None) -> None:
    """Ask Perplexity who the token is logged in as; stop when it says nobody, carry on when it cannot say."""
    try:
        email = signin.session_email(token, settings, proxy)
    except PerplexityError as exc:
        click.echo(f"Warning: could not check the session with Perplexity ({exc.kind}): saving it anyway.", err=True)
        return
    if email is None:
        raise click.ClickException("Perplexity says this session is not logged in (expired or wrong): not saved.")
    click.echo(f"Logged in as {email}.")


# ---- login ----------------------------------------------------------------------------------


def _ask_code_or_link(wanted: str) -> tuple[str, str]:
    for attempt in range(_TRIES):
        answer = signin.classify_answer(_prompt_secret(f"Enter {wanted} from the email"))
        if answer is not None:
            return answer
        if attempt + 1 < _TRIES:
            click.echo("That is neither a 6-digit code nor a link starting with https://.", err=True)
    raise click.ClickException("No code or link given.")


def _sign_in(flow: signin.EmailLogin, variant: str) -> str:
    """Ask for the code or link (then the authenticator code) and return the session token."""
    kind, value = _ask_code_or_link("the sign-in link" if variant == "A" else "the 6-digit code, or the link,")
    if kind == "link":
        return flow.open_link(value)
    try:
        result = flow.submit_code(value)
    except signin.LoginError as exc:
        if exc.reason != "no_code":
            raise
        click.echo(exc.message, err=True)  # an older sign-in that mails a link only: ask for it
        return flow.open_link(_ask_code_or_link("the sign-in link")[1])
    if not isinstance(result, signin.TotpChallenge):
        return result
    click.echo("This account has two-factor authentication.")
    code = "".join(_prompt_secret("Enter the 6-digit code of your authenticator app").split())
    return flow.submit_totp(result, code)


@group.command("login")
@click.option("--email", help="The account's email address (asked for when not given).")
@_destination_options
@click.pass_context
def login(ctx: click.Context, email: str | None, **options: Any) -> None:
    """Sign in to Perplexity by email and save the session token.

    Perplexity emails a 6-digit code and a sign-in link: enter either. With an accounts file, the account's
    label is its email unless --label says otherwise.
    """
    settings = _settings_or_exit()
    email = (email or str(click.prompt("Email"))).strip()
    destination = _destination(ctx, settings, options, default_label=email)
    try:
        with signin.email_login(email, settings, options["proxy"]) as flow:
            variant = flow.send_code()
            click.echo(f"Perplexity sent a sign-in email to {email}.")
            token = _sign_in(flow, variant)
        redact.register(token)  # from here on, no log line of this process can show it
    except PerplexityError as exc:
        raise click.ClickException(exc.message) from None
    _verify(token, settings, options["proxy"])
    _save(token, destination)


# ---- import-cookie --------------------------------------------------------------------------


def _pasted(cookie: str | None, source: Any) -> str:
    if source is not None:
        return str(source.read())
    if cookie is not None and cookie != "-":
        return cookie
    stdin = click.get_text_stream("stdin")
    if cookie == "-" or not stdin.isatty():
        return stdin.read()
    return _prompt_secret("Paste the cookie (its value, a Cookie header, or one line of JSON)")


@group.command("import-cookie")
@click.argument("cookie", required=False)
@click.option(
    "--file", "-f", "source", type=click.File("r"), help="Read it from a file (a browser's cookie export); - is stdin."
)
@click.option("--check/--no-check", default=False, help="Ask Perplexity first whether the session is logged in.")
@_destination_options
@click.pass_context
def import_cookie(ctx: click.Context, cookie: str | None, source: Any, check: bool, **options: Any) -> None:
    """Save the session token from a copied cookie.

    COOKIE is what you copied (or '-' or nothing, to read it from stdin): the value of
    __Secure-next-auth.session-token, `name=value`, a whole Cookie header, the chunked .0/.1 cookies, or a cookie
    export as JSON (EditThisCookie or Cookie-Editor's list, or a {name: value} object). Stdin keeps the token out
    of your shell history.
    """
    settings = _settings_or_exit()
    destination = _destination(ctx, settings, options)
    try:
        token = signin.pasted_token(_pasted(cookie, source))
    except ValueError as exc:
        raise click.ClickException(f"{exc}.") from None
    redact.register(token)
    if check:
        _verify(token, settings, options["proxy"])
    _save(token, destination)


def _settings_or_exit() -> Mapping[str, Any]:
    try:
        return _settings()
    except ValueError as exc:  # SettingError names the variable, never a secret value
        raise click.ClickException(str(exc)) from None


def main() -> None:
    """`python -m api.cli`: the same commands without loading the app (a broken setting elsewhere is no bar)."""
    handler = logging.StreamHandler()
    handler.addFilter(redact.RedactFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    group(prog_name="python -m api.cli")


if __name__ == "__main__":
    main()
