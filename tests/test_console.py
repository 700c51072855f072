"""The console page as HTTP sees it: public, locked down (CSP and friends), no secret in it; the version in /stats.

The page's behaviour in a browser is tests/test_console_browser.py.
"""

from __future__ import annotations

import json
import re
import tomllib
from html.parser import HTMLParser

import pytest

from .conftest import ROOT, TOKEN

KEY = "console-page-key-7f3a91c2"


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> and <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in and data.strip():
            self.inline.append(data)


@pytest.fixture
def keyed_app(fake):
    from app import create_app

    application = create_app(
        {"TESTING": True, "PERPLEXITY_SESSION_TOKEN": TOKEN, "PERPLEXITY_BASE_URL": fake.url, "OPENAI_API_KEY": KEY}
    )
    yield application
    application.extensions["perplexity"].close()


def test_the_page_is_public_and_locked_down(keyed_app):
    with keyed_app.test_client() as client:
        page = client.get("/console")  # no key sent
        assert page.status_code == 200 and page.mimetype == "text/html"
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert client.get("/console/").status_code == 200


def test_the_page_has_no_inline_code_and_no_secret(keyed_app):
    with keyed_app.test_client() as client:
        html = client.get("/console").get_data(as_text=True)
    parsed = _Tags()
    parsed.feed(html)
    assert parsed.inline == []  # the CSP would block them anyway
    assert not [attrs for _, attrs in parsed.tags if "style" in attrs or any(k.startswith("on") for k in attrs)]
    scripts = [attrs["src"] for tag, attrs in parsed.tags if tag == "script"]
    assert scripts == ["/console/static/console.js"]
    assert KEY not in html and TOKEN not in html
    body = next(attrs for tag, attrs in parsed.tags if tag == "body")
    assert body["data-keys-required"] == "true"  # a boolean, not the key


def test_a_key_file_alone_makes_the_page_ask_for_a_key(fake, tmp_path):
    from app import create_app

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key": KEY, "label": "team"}]}))
    config = {"TESTING": True, "PERPLEXITY_SESSION_TOKEN": TOKEN, "PERPLEXITY_BASE_URL": fake.url}
    application = create_app({**config, "API_KEYS_FILE": str(keys)})
    try:
        html = application.test_client().get("/console").get_data(as_text=True)
    finally:
        application.extensions["perplexity"].close()
    assert 'data-keys-required="true"' in html and KEY not in html


def test_an_open_server_tells_the_page_no_key_is_needed(client):
    html = client.get("/console").get_data(as_text=True)
    assert 'data-keys-required="false"' in html


@pytest.mark.parametrize(
    ("name", "mimetype"),
    [("console.js", "text/javascript"), ("console.css", "text/css"), ("favicon.svg", "image/svg+xml")],
)
def test_the_static_files_are_public_typed_and_locked_down(keyed_app, name, mimetype):
    with keyed_app.test_client() as client:
        response = client.get(f"/console/static/{name}")
        assert response.status_code == 200 and response.mimetype == mimetype
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        response.close()


def test_the_script_never_writes_html():
    """Model text reaches the page as text nodes only: no innerHTML, outerHTML, insertAdjacentHTML or eval."""
    script = (ROOT / "api" / "console" / "static" / "console.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", script)


def test_the_keyed_api_still_wants_the_key(keyed_app):
    """/console is public; the API calls it makes are not."""
    with keyed_app.test_client() as client:
        assert client.get("/conversations").status_code == 401
        assert client.get("/conversations", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_stats_names_the_version_from_the_project(client):
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert client.get("/stats").json["version"] == expected
