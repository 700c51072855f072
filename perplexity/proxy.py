"""The outbound proxy: a proxy URL checked once, handed to both transports, and shown only with its password masked."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from .errors import ConfigurationError

__all__ = ["PROXY_SCHEMES", "ProxyURL", "mask_proxy", "parse_proxy", "proxy_problem"]

# What both engines speak: libcurl takes these four natively, requests/urllib3 too (socks* through PySocks).
# socks5 resolves the target's name here, socks5h lets the proxy resolve it (as curl and urllib3 both read them).
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
_MASK = "***"


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A parsed proxy URL. `url` (credentials percent-encoded) is for the transports only; `str()`, `repr()` and
    `masked` show the password as `***`, so a proxy can be named in a log line or an error message."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # The value as configured, kept to scrub it from third-party error texts.
    raw: str = field(default="", repr=False, compare=False)

    @property
    def url(self) -> str:
        """The URL the transports are given (userinfo percent-encoded, so either engine decodes the same)."""
        return f"{self.scheme}://{self._userinfo(self.password)}{self._netloc()}"

    @property
    def masked(self) -> str:
        """The URL with its password replaced by `***` (the user name stays: it tells which proxy account)."""
        return f"{self.scheme}://{self._userinfo(_MASK if self.password is not None else None)}{self._netloc()}"

    @property
    def is_socks(self) -> bool:
        return self.scheme.startswith("socks")

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"ProxyURL({self.masked!r})"

    def scrub(self, text: str) -> str:
        """`text` with this proxy's credentials masked wherever a library may have echoed them."""
        masked = self.masked
        for form in (self.raw, self.url):
            if form:
                text = text.replace(form, masked)
        if self.password:
            for password in {self.password, quote(self.password, safe="")}:
                text = text.replace(f":{password}@", f":{_MASK}@")
                if len(password) >= 6:  # shorter values would mask ordinary text
                    text = text.replace(password, _MASK)
        return text

    def _userinfo(self, password: str | None) -> str:
        if self.username is None and password is None:
            return ""
        user = quote(self.username or "", safe="")
        if password is None:
            return f"{user}@"
        shown = password if password == _MASK else quote(password, safe="")
        return f"{user}:{shown}@"

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_proxy(value: str) -> ProxyURL:
    """The proxy `value` names; ConfigurationError (with no credential in its text) when it cannot be used."""
    why = proxy_problem(value)
    if why is not None:
        raise ConfigurationError(f"the proxy URL {why}")
    parts = urlsplit(value.strip())
    return ProxyURL(
        scheme=parts.scheme.lower(),
        host=parts.hostname or "",
        port=parts.port or 0,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        raw=value,
    )


def proxy_problem(value: str) -> str | None:
    """Why `value` is not a usable proxy URL (a phrase that never repeats a password), or None."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return f"is not a valid URL with a numeric port: {mask_proxy(text)}"
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        shown = f"{scheme}://" if scheme.isalnum() and len(scheme) <= 8 else "no scheme"  # never a password
        return f"must start with http://, https://, socks5:// or socks5h://, not {shown}"
    if not parts.hostname:
        return f"names no host: {mask_proxy(text)}"
    if not port:
        return f"must name its port, e.g. {scheme}://proxy.example:3128, not {mask_proxy(text)}"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"must be scheme://[user:password@]host:port with no path, not {mask_proxy(text)}"
    if any(ch.isspace() for ch in text):
        return f"must not contain spaces: {mask_proxy(text)}"
    return None


def mask_proxy(value: str) -> str:
    """`value` with the password of its userinfo masked, for messages about a URL that may not even parse."""
    scheme, sep, rest = value.strip().partition("://")
    if not sep:
        scheme, rest = "", scheme
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + _MASK
    shown = f"{userinfo}{at}{hostport}{slash}{tail}"
    return f"{scheme}{sep}{shown}"
