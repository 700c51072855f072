"""Every setting the server reads, declared once with its default and its valid values, read and checked in one place.

The app's settings become Flask config keys of the same name; gunicorn's (`PORT`, `WEB_CONCURRENCY`, ...) are
read by `gunicorn.conf.py` through `gunicorn_settings`. Both read `.env` from the working directory first, so
a value there works for either. A value that cannot be used stops the start with one line naming the variable
(`SettingError`), never a fallback to the default that hides the typo.

This module imports nothing but the standard library: gunicorn's master loads it before gevent patches sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "GUNICORN_SETTINGS",
    "SETTINGS",
    "Setting",
    "SettingError",
    "app_setting",
    "defaults",
    "gunicorn_settings",
    "load_dotenv_file",
    "parse_model_map",
    "settings_from_env",
    "validate",
]

log = logging.getLogger(__name__)

CITATION_MODES = ("default", "markdown", "clean", "footnotes")
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_IMPERSONATE_WORDS = ("auto", "off", "false", "0", "none", "no")
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
# Settings older releases read that are gone: say so once instead of ignoring them silently.
_RETIRED = {"PERPLEXITY_HTTP_ADAPTER": "the requests engine is urllib3 alone now"}


class SettingError(ValueError):
    """A setting that cannot be used; the message is one line naming the variable."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable (its Flask config key is the same name) and what values it accepts."""

    name: str
    default: Any
    kind: type
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None  # returns why a value is refused, or None

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None."""
        if value is None:
            return None if self.default is None else "must be set"
        if self.kind in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"must be a number, not {self._shown(value)}"
        if self.kind is str and not isinstance(value, str):
            return f"must be text, not {self._shown(value)}"
        if self.kind is bool and not isinstance(value, bool):
            return f"must be true or false, not {self._shown(value)}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, not {self._shown(value)}"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum:g}, not {value:g}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum:g}, not {value:g}"
        return self.check(value) if self.check is not None else None

    def _shown(self, value: Any) -> str:
        return "<hidden>" if self.secret else repr(value)


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    return None if parts.scheme in ("http", "https") and parts.hostname else f"must be an http(s) URL, not {value!r}"


def _store_uri(*schemes: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value.startswith(schemes):
            return None
        return f"must start with one of {', '.join(schemes)}"  # never echo it: it may carry a password

    return check


def _impersonation(value: str) -> str | None:
    word = value.strip().lower()
    if word in _IMPERSONATE_WORDS or word == "":
        return None
    try:
        from curl_cffi.requests.impersonate import BrowserType
    except ImportError:
        return f"needs the curl_cffi package to impersonate {value!r}"
    # curl_cffi also takes the bare family names, which it resolves to its newest fingerprint.
    known = {b.value for b in BrowserType} | {"chrome", "safari", "safari_ios", "firefox", "edge", "chrome_android"}
    if word in known:
        return None
    return f"must be auto, off or a curl_cffi browser such as chrome, safari or firefox, not {value!r}"


def parse_model_map(value: str) -> list[tuple[str, str]]:
    """`ANTHROPIC_MODEL_MAP`: comma-separated `pattern=model` pairs (fnmatch patterns), in order; ValueError if
    a pair is malformed."""
    pairs = []
    for item in value.split(","):
        if not item.strip():
            continue
        pattern, sep, model = item.partition("=")
        if not sep or not pattern.strip() or not model.strip():
            raise ValueError(f"{item.strip()!r} is not pattern=model")
        pairs.append((pattern.strip(), model.strip()))
    return pairs


def _model_map(value: str) -> str | None:
    try:
        parse_model_map(value)
    except ValueError as exc:
        return f"must be comma-separated pattern=model pairs: {exc}"
    return None


def _proxy(value: str) -> str | None:
    # The rules of perplexity.proxy (which the transports apply again), in this module's standard-library terms;
    # the reason never repeats the value, which may carry a password.
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return "must be scheme://[user:password@]host:port with a numeric port"
    if parts.scheme.lower() not in _PROXY_SCHEMES:
        scheme = parts.scheme
        shown = f"{scheme}://" if scheme.isalnum() and len(scheme) <= 8 else "no scheme"  # never a password
        return f"must start with http://, https://, socks5:// or socks5h://, not {shown}"
    if not parts.hostname or not port or parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be scheme://[user:password@]host:port, with its host and port and no path"
    if any(ch.isspace() for ch in text):
        return "must be scheme://[user:password@]host:port, without spaces"
    return None


def _log_level(value: str) -> str | None:
    return None if value.upper() in _LOG_LEVELS else f"must be one of {', '.join(_LOG_LEVELS)}, not {value!r}"


SETTINGS: tuple[Setting, ...] = (
    Setting("PERPLEXITY_SESSION_TOKEN", None, str, "Value of the __Secure-next-auth.session-token cookie", True),
    Setting(
        "PERPLEXITY_SESSION_TOKENS", None, str, "Several accounts' session tokens, comma-separated (a pool)", True
    ),
    Setting(
        "PERPLEXITY_ACCOUNTS_FILE", None, str, "A file of accounts, one a line: [label] token [proxy-url] (a pool)"
    ),
    Setting("PERPLEXITY_TOKEN_FILE", None, str, "File that keeps the rotated session cookie across restarts"),
    Setting(
        "PERPLEXITY_BASE_URL", "https://www.perplexity.ai", str, "Perplexity web app URL (a fake for tests)",
        check=_http_url,
    ),
    Setting(
        "PERPLEXITY_IMPERSONATE", "auto", str, "curl_cffi browser to impersonate: auto, off, chrome, ...",
        check=_impersonation,
    ),
    Setting("PERPLEXITY_CA_BUNDLE", None, str, "CA bundle (PEM) to trust for Perplexity instead of certifi's"),
    Setting("PERPLEXITY_CONNECT_TIMEOUT", 10.0, float, "Seconds to connect to Perplexity", minimum=0.1),
    Setting(
        "PERPLEXITY_READ_TIMEOUT", 60.0, float, "Longest silence (seconds) accepted from Perplexity mid-answer",
        minimum=1,
    ),
    Setting("PERPLEXITY_POOL_SIZE", 256, int, "Upstream connections kept per worker", minimum=1, maximum=100_000),
    Setting(
        "PERPLEXITY_MAX_RETRIES", 2, int, "Retries of connect errors, 429 and 5xx before the answer starts",
        minimum=0, maximum=10,
    ),
    Setting("PERPLEXITY_INCOGNITO", True, bool, "Keep asks out of the account's library"),
    Setting("OPENAI_API_KEY", None, str, "Key clients must send as Bearer token (one key)", True),
    Setting("API_KEYS", None, str, "Comma-separated keys clients may send (several callers)", True),
    Setting(
        "API_KEYS_FILE", None, str,
        "A JSON file of keys with a policy each (label, models, rpm, streams, expires), re-read when it changes",
    ),  # fmt: skip
    Setting("DEFAULT_MODEL", "perplexity-auto", str, "Model used when a request names none"),
    Setting(
        "ANTHROPIC_MODEL_MAP", None, str, "Anthropic model names to serve as which model: pattern=model, ...",
        check=_model_map,
    ),
    Setting(
        "DEFAULT_CITATION_MODE", "default", str,
        "default keeps [n], markdown links them, clean drops them, footnotes adds a list of the sources cited",
        choices=CITATION_MODES,
    ),
    Setting(
        "CONVERSATION_TIMEOUT", 3600, int, "Seconds a conversation's thread is remembered after its last turn",
        minimum=1,
    ),
    Setting(
        "CONVERSATION_STORE_URI", "memory://", str, "Conversations: memory:// or a redis:// URL (shared)",
        check=_store_uri("memory://", "redis://", "rediss://", "unix://"),
    ),
    Setting(
        "HEARTBEAT_INTERVAL", 10.0, float, "Seconds of upstream silence before a ': ping' comment is sent",
        minimum=0.05, maximum=300,
    ),
    Setting(
        "MAX_REQUEST_BYTES", 25 * 1024 * 1024, int, "Largest request body accepted (attachments included)",
        minimum=1024,
    ),
    Setting("ENABLE_RATE_LIMITING", False, bool, "Enforce REQUESTS_PER_MINUTE per caller"),
    Setting("REQUESTS_PER_MINUTE", 60, int, "Requests per minute per caller when rate limiting is on", minimum=1),
    Setting(
        "RATELIMIT_STORAGE_URI", "memory://", str, "Quota counters: memory:// or a redis:// URL (shared)",
        check=_store_uri("memory://", "redis://", "rediss://", "redis+", "unix://", "memcached://", "mongodb"),
    ),
    Setting("MAX_CONCURRENT_STREAMS", 0, int, "Open streams one caller may hold at once (0: no cap)", minimum=0),
    Setting("TRUST_PROXY", 0, int, "Proxies in front whose X-Forwarded-For is trusted (0: none)", minimum=0),
    Setting("MODELS_REFRESH_SECONDS", 3600, int, "Seconds the model catalogue is cached before a refresh", minimum=1),
    Setting(
        "SESSION_CHECK_SECONDS", 300, int, "Seconds the readiness probe caches the session check", minimum=0
    ),
    Setting(
        "STREAM_LEASE_SECONDS", 30.0, float, "Seconds a stream slot held in Redis outlives a killed worker",
        minimum=1, maximum=3600,
    ),
    Setting(
        "BODY_READ_TIMEOUT", 60.0, float, "Seconds a request body may go without data before a 408 (nginx's 60)",
        minimum=0.1, maximum=3600,
    ),
    Setting(
        "BODY_TOTAL_TIMEOUT", 300.0, float, "Seconds from a request's headers to the end of its body before a 408",
        minimum=0.1, maximum=86400,
    ),
    Setting(
        "RESPONSE_STORE_MAX_BYTES", 64 * 1024 * 1024, int,
        "Bytes of stored responses kept in all (per worker in memory, per Redis), least recently used evicted",
        minimum=1024,
    ),
    Setting(
        "RESPONSE_STORE_MAX_BYTES_PER_CALLER", 16 * 1024 * 1024, int,
        "Bytes of stored responses kept per key (or address), whatever user it names", minimum=1024,
    ),
    Setting(
        "CONVERSATION_STORE_MAX_ITEMS", 20_000, int,
        "Conversations kept in memory per worker, least recently used evicted", minimum=1,
    ),
    Setting(
        "CONVERSATION_STORE_MAX_ITEMS_PER_CALLER", 5_000, int,
        "Conversations kept in memory per key (or address) per worker, whatever user it names", minimum=1,
    ),
    Setting(
        "PERPLEXITY_PROXY", None, str, "Proxy for every upstream request: http://, https://, socks5:// or socks5h:// "
        "URL, user:password@ optional", secret=True, check=_proxy,
    ),
    Setting(
        "SESSION_KEEPALIVE_SECONDS", 4 * 3600, int,
        "Seconds between each account's session checks (keeps it alive; Perplexity rotates the cookie on them)",
        minimum=1,
    ),
    Setting(
        "ALERT_WEBHOOK_URL", None, str, "Where account state changes are POSTed as JSON (no token in them)",
        check=_http_url,
    ),
    Setting(
        "QUOTA_FALLBACK_MODEL", None, str, "Model served when every account is out of the requested mode's quota"
    ),
    Setting(
        "QUOTA_REFRESH_SECONDS", 60, int, "Seconds an account's quota (Perplexity's rate-limit status) is cached",
        minimum=1,
    ),
    Setting(
        "QUOTA_RETRY_AFTER", 3600, int, "Retry-After (seconds) of a quota_exhausted 429 when Perplexity names no reset",
        minimum=1,
    ),
    Setting("PERPLEXITY_LANGUAGE", "en-US", str, "Ask language (a request's language_preference overrides)"),
    Setting(
        "BACKGROUND_MAX_EVENTS", 10000, int,
        "Events kept per background response for resuming its stream (past it only the final event is kept)",
        minimum=1,
    ),  # fmt: skip
    Setting("BACKGROUND_MAX_JOBS", 0, int, "Background responses running at once in all (0: no cap)", minimum=0),
    Setting(
        "BACKGROUND_MAX_JOBS_PER_CALLER", 0, int, "Background responses one key or address may run at once (0: no cap)",
        minimum=0,
    ),  # fmt: skip
    Setting(
        "BACKGROUND_LEASE_SECONDS", 30.0, float,
        "Seconds a background response outlives the worker running it before a poll marks it failed", minimum=1,
    ),  # fmt: skip
    Setting("LOG_LEVEL", "INFO", str, "Python log level", check=_log_level),
    Setting(
        "LOG_FORMAT", "text", str, "text (one key=value line) or json (one JSON object per line, access log too)",
        choices=("text", "json"),
    ),
)  # fmt: skip

# Read by gunicorn.conf.py in the master; not Flask config.
GUNICORN_SETTINGS: tuple[Setting, ...] = (
    Setting("PORT", 8000, int, "Port gunicorn binds", minimum=1, maximum=65535),
    Setting("WEB_CONCURRENCY", 1, int, "gunicorn workers", minimum=1, maximum=256),
    Setting("WORKER_CONNECTIONS", 10000, int, "Connections (open streams) per worker", minimum=1),
    Setting("GUNICORN_TIMEOUT", 60, int, "Worker heartbeat timeout (seconds)", minimum=1),
    Setting("GRACEFUL_TIMEOUT", 120, int, "Seconds in-flight streams get to finish on shutdown", minimum=0),
    Setting("KEEPALIVE", 65, int, "Seconds a kept-alive client connection may idle", minimum=1, maximum=3600),
    Setting("FORWARDED_ALLOW_IPS", "127.0.0.1", str, "Addresses whose X-Forwarded-* headers gunicorn trusts"),
    Setting("ACCESS_LOG", True, bool, "One access line per request on stdout"),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def defaults() -> dict[str, Any]:
    """Every app setting at its default."""
    return {s.name: s.default for s in SETTINGS}


def load_dotenv_file() -> None:
    """Load `.env` from the working directory (what the README promises); the environment wins over it."""
    from dotenv import find_dotenv, load_dotenv

    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)


def _parse(setting: Setting, raw: str) -> Any:
    text = raw.strip()
    if setting.kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise SettingError(f"{setting.name} must be true or false, not {setting._shown(raw)}")
    if setting.kind in (int, float):
        try:
            return setting.kind(text)
        except ValueError:
            kind = "a whole number" if setting.kind is int else "a number"
            raise SettingError(f"{setting.name} must be {kind}, not {setting._shown(raw)}") from None
    return text or None


def _read(settings: Iterable[Setting], environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in settings:
        raw = environ.get(setting.name)
        if raw is not None:
            values[setting.name] = _parse(setting, raw)
    return values


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The app settings `environ` sets, parsed; SettingError for a value of the wrong type."""
    for name, why in _RETIRED.items():
        if name in environ:
            log.warning("%s is no longer read (%s)", name, why)
    return _read(SETTINGS, environ)


def validate(values: Mapping[str, Any], settings: Iterable[Setting] = SETTINGS) -> None:
    """SettingError naming the first setting whose value cannot be used."""
    for setting in settings:
        why = setting.problem(values.get(setting.name, setting.default))
        if why is not None:
            raise SettingError(f"{setting.name} {why}")


def app_setting(name: str, environ: Mapping[str, str]) -> Any:
    """One app setting read from `environ` and checked (for gunicorn.conf.py, which reads LOG_FORMAT too)."""
    setting = next(s for s in SETTINGS if s.name == name)
    values = {name: setting.default} | _read((setting,), environ)
    validate(values, (setting,))
    return values[name]


def gunicorn_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """gunicorn's settings from `environ`, with defaults, checked."""
    values = {s.name: s.default for s in GUNICORN_SETTINGS} | _read(GUNICORN_SETTINGS, environ)
    validate(values, GUNICORN_SETTINGS)
    return values
