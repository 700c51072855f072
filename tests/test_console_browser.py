"""The console at /console in a real browser: headless Chromium (selenium) against gunicorn and the fake upstream.

Set CONSOLE_SCREENSHOT=path to also save a 1280x900 screenshot of the console after an answer with sources
(`docs/console.png` is made so: `CONSOLE_SCREENSHOT=docs/console.png pytest tests/test_console_browser.py -k sources`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from perplexity.testing import Fault, Reply

from .conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="the console's browser test needs Debian's Chromium and chromedriver: "
    "apt-get install chromium chromium-driver (CI installs them)",
)

KEY = "console-browser-key-2d9e41b7"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
WAIT = 15  # seconds any one thing on the page may take to appear

SOURCES = [
    {
        "name": "Lyon - Wikipedia",
        "url": "https://en.wikipedia.org/wiki/Lyon",
        "snippet": "Lyon is the third-largest city of France, at the confluence of the Rhône and the Saône.",
        "timestamp": "2026-03-02T00:00:00",
    },
    {
        "name": "Traboules of Vieux Lyon: the official guide",
        "url": "https://www.visiterlyon.com/en/discover/heritage/traboules",
        "snippet": "Hidden passageways run through the buildings of the old town, once used by silk workers.",
        "timestamp": "2026-02-14T00:00:00",
    },
    {
        "name": "Why Lyon is France's food capital",
        "url": "https://www.bbc.com/travel/article/lyon-food-capital",
        "snippet": "Bouchons, the city's traditional bistros, serve quenelles, andouillette and praline tart.",
        "timestamp": "2026-01-20T00:00:00",
    },
]
ANSWER = (
    "Lyon sits where the Rhône and the Saône meet, and its old town is a UNESCO World Heritage site [1].\n\n"
    "- **Vieux Lyon**: Renaissance streets crossed by hidden traboules [2].\n"
    "- **Food**: the bouchons serve the city's classic dishes [3].\n\n"
    "Most visitors give it two or three days [1][3]."
)
FOLLOW_UP = "The traboules are open to visitors in daytime; many are marked with a bronze plaque [2]."
LONG_WORD = "https://example.com/" + "averylongpathsegmentwithoutanybreak" * 8


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = _browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(live_server_factory):
    """A server that wants a key."""
    return live_server_factory(OPENAI_API_KEY=KEY)


class Console:
    """The console page in the browser, with the waits the tests need."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        self.url = url

    def open(self, *, key: str | None = None) -> Console:
        """Load the page in a fresh tab state: sessionStorage holds `key` (or nothing), the log is drained."""
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        self.driver.get(self.url + "/console")
        self.driver.execute_script("sessionStorage.clear()")
        if key is not None:
            self.driver.execute_script("sessionStorage.setItem('console.apiKey', arguments[0])", key)
        self.driver.get(self.url + "/console")
        self.driver.get_log("browser")  # the first load's entries (if any) belong to no check
        return self

    def wait(self, condition: Callable[[Any], Any], message: str, timeout: float = WAIT) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition, message)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def visible(self, css: str) -> Any:
        return self.wait(lambda d: self.find(css) if self.find(css).is_displayed() else None, f"{css} never shown")

    def text(self, css: str) -> str:
        return self.find(css).get_attribute("textContent") or ""

    def enter_key(self, key: str) -> None:
        field = self.visible("#key-input")
        field.clear()
        field.send_keys(key)
        self.find("#key-submit").click()

    def ask(self, question: str) -> None:
        box = self.wait(lambda d: self.find("#question") if self.find("#question").is_enabled() else None, "busy")
        box.clear()
        box.send_keys(question)
        self.find("#ask").click()

    def wait_turn_done(self, index: int) -> Any:
        """The `index`-th turn (from 0) once its stream has ended (its timing names the total)."""

        def done(_: Any) -> Any:
            turns = self.find_all("#transcript .turn")
            if len(turns) > index and "total" in (turns[index].find_element("css selector", ".timing").text or ""):
                return turns[index]
            return None

        return self.wait(done, f"turn {index} never finished")

    def conversation_row(self, conversation_id: str) -> Any:
        """The conversations list's row of `conversation_id`, or None (looked up in one go: the list re-renders)."""
        return self.driver.execute_script(
            "return document.querySelector(`#conversation-list .conversation[data-id='${CSS.escape(arguments[0])}']`)",
            conversation_id,
        )

    def severe_log(self) -> list[dict[str, Any]]:
        return [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def stored_key(self) -> str | None:
        return self.driver.execute_script("return sessionStorage.getItem('console.apiKey')")


@pytest.fixture
def console(browser, server, fake) -> Console:
    return Console(browser, server.url)


def test_the_page_loads_clean_and_shows_readiness_and_the_account(console):
    console.open()
    console.wait(lambda d: console.text("#readiness") == "ready", "readiness never shown")
    console.wait(lambda d: "default" in console.text("#accounts"), "the account never shown")
    assert "ready" in console.text("#accounts .account .badge")
    console.wait(lambda d: console.text("#uptime") != "–", "the stats never shown")
    assert console.text("#server-version") == VERSION and int(console.text("#requests")) >= 1
    assert console.text("#upstream-errors") == "none"
    assert console.visible("#key-panel")  # a keyed server: the key is asked for at once
    assert console.severe_log() == []


def test_a_question_streams_with_sources_and_reasoning_and_a_follow_up_stays_on_its_thread(console, fake, server):
    fake.enqueue(
        # ~50 frames 50 ms apart: the answer is on the page well before it is complete
        Reply(answer=ANSWER, sources=SOURCES, reasoning=True, chunk_size=6, frame_delay=0.05, title="Visiting Lyon"),
        Reply(answer=FOLLOW_UP, sources=SOURCES[1:2], reasoning=True, chunk_size=6, frame_delay=0.02),
    )
    console.open()
    console.enter_key(KEY)
    console.wait(lambda d: console.find("#key-panel").is_displayed() is False, "the key was not taken")
    console.wait(lambda d: "perplexity-auto" in console.text("#model"), "the models never loaded")
    assert console.stored_key() == KEY and KEY not in console.driver.current_url

    console.ask("What is worth seeing in Lyon?")
    first = console.wait(lambda d: len(console.text("#transcript .turn .answer")) > 0, "no answer text")
    partial = console.text("#transcript .turn .answer")
    turn = console.wait_turn_done(0)
    assert first and 0 < len(partial) < len(console.text("#transcript .turn .answer"))  # it grew
    answer = turn.find_element("css selector", ".answer")
    assert "Lyon sits where the Rhône and the Saône meet" in answer.text
    assert len(answer.find_elements("css selector", "li")) == 2  # the bullets became a list
    assert answer.find_elements("css selector", "sup.cite a")[0].get_attribute("href") == SOURCES[0]["url"]

    cards = turn.find_elements("css selector", ".sources .source-card")
    assert [c.find_element("css selector", ".source-title").text for c in cards] == [s["name"] for s in SOURCES]
    sites = [c.find_element("css selector", ".source-site").text for c in cards]
    assert sites == ["en.wikipedia.org", "visiterlyon.com", "bbc.com"]
    assert "silk workers" in cards[1].find_element("css selector", ".source-snippet").text
    assert cards[0].find_element("css selector", ".source-date").text == "2026-03-02"

    details = turn.find_element("css selector", "details.reasoning")
    assert details.is_displayed() and details.get_attribute("open") is None  # collapsed
    assert "Searching the web" in (details.find_element("css selector", "pre").get_attribute("textContent") or "")
    timing = turn.find_element("css selector", ".timing").text
    assert "first token" in timing and "total" in timing

    if os.environ.get("CONSOLE_SCREENSHOT"):
        _screenshot(console, Path(os.environ["CONSOLE_SCREENSHOT"]))

    console.ask("Can anyone walk through the traboules?")
    second = console.wait_turn_done(1)
    assert "bronze plaque" in second.find_element("css selector", ".answer").text
    asks = fake.asks
    assert [a.json["params"]["query_source"] for a in asks] == ["home", "followup"]
    assert asks[1].json["query_str"] == "Can anyone walk through the traboules?"
    assert len({a.thread for a in asks}) == 1  # one Perplexity thread

    conversation = console.text("#thread-info").split()[1]
    assert conversation.startswith("conv_") and "2 turns" in console.text("#thread-info")
    row = console.wait(lambda d: console.conversation_row(conversation), "the conversation never listed")
    assert "Visiting Lyon" in row.text and "2 turns" in row.text
    row.find_element("css selector", "button.delete").click()
    console.wait(lambda d: console.conversation_row(conversation) is None, "the conversation was not deleted")
    listed = requests.get(server.url + "/conversations", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert conversation not in [c["id"] for c in listed.json()["data"]]
    assert console.severe_log() == []


def test_footnotes_mode_ends_the_answer_with_linked_sources(console, fake):
    """Picking `footnotes` in the page: the answer keeps its markers and ends with the list of the sources it cites,
    each a link the page renders as an anchor to the source (a source never cited is not listed)."""
    from selenium.webdriver.support.ui import Select

    fake.enqueue(Reply(answer="Lyon is old [1]. Its food is famous [3].", sources=SOURCES, chunk_size=8))
    console.open(key=KEY)
    console.wait(lambda d: "perplexity-auto" in console.text("#model"), "the models never loaded")
    Select(console.find("#citation-mode")).select_by_value("footnotes")
    console.ask("Tell me about Lyon")
    answer = console.wait_turn_done(0).find_element("css selector", ".answer")
    assert answer.text.startswith("Lyon is old") and "Sources:" in answer.text
    listed = [a for a in answer.find_elements("css selector", "li a") if a.text in {s["name"] for s in SOURCES}]
    assert [(a.text, a.get_attribute("href")) for a in listed] == [
        (SOURCES[0]["name"], SOURCES[0]["url"]),
        (SOURCES[2]["name"], SOURCES[2]["url"]),
    ]
    assert fake.asks[-1].json["query_str"] == "Tell me about Lyon"
    assert console.severe_log() == []


def test_a_bad_key_is_refused_clearly_and_another_can_be_entered_and_forgotten(console):
    console.open()
    console.enter_key("not-the-key")
    console.wait(lambda d: "The server refused this API key" in console.text("#key-message"), "no refusal shown")
    assert console.find("#key-panel").is_displayed() and console.stored_key() is None
    console.enter_key(KEY)
    console.wait(lambda d: not console.find("#key-panel").is_displayed(), "the good key was not taken")
    console.wait(lambda d: "perplexity-auto" in console.text("#model"), "the models never loaded")
    assert console.stored_key() == KEY
    console.find("#forget-key").click()
    console.visible("#key-panel")
    assert console.stored_key() is None

    console.open(key="a-key-that-was-revoked")  # a stored key the server no longer takes
    console.wait(lambda d: "The server refused this API key" in console.text("#key-message"), "no refusal shown")
    assert console.stored_key() is None


def test_an_open_server_asks_for_no_key(browser, live_server, fake):
    console = Console(browser, live_server.url).open()
    console.wait(lambda d: "perplexity-auto" in console.text("#model"), "the models never loaded")
    assert not console.find("#key-panel").is_displayed()
    assert console.severe_log() == []


def test_the_page_fits_a_phone_without_horizontal_scrolling(console, fake):
    sources = [{**SOURCES[0], "name": "A title " + LONG_WORD, "url": LONG_WORD}, *SOURCES[1:]]
    fake.enqueue(Reply(answer=f"See {LONG_WORD} for more [1].\n\n{ANSWER}", sources=sources, chunk_size=40))
    console.open(key=KEY)
    console.driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
    )
    try:
        console.wait(lambda d: "perplexity-auto" in console.text("#model"), "the models never loaded")
        console.ask("What is worth seeing in Lyon?")
        console.wait_turn_done(0)
        console.wait(lambda d: console.find_all(".conversation"), "the conversation never listed")
        widths = console.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth, document.body.scrollWidth]"
        )
        assert widths[1] == 390 and widths[0] <= widths[1] and widths[2] <= widths[1], widths
    finally:
        console.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _screenshot(console: Console, path: Path) -> None:
    """The console at desktop width after an answer with sources: the top of the page, sources in view."""
    metrics = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    console.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        console.driver.execute_script("window.scrollTo(0, 0)")
        console.wait(lambda d: console.text("#conversation-count") == "1", "the stats never caught up")
        path.parent.mkdir(parents=True, exist_ok=True)
        console.driver.save_screenshot(str(path))
    finally:
        console.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_api_reference_renders_every_operation_in_the_browser(browser, server):
    """/docs in Chromium: Swagger UI (served by the server, under its CSP) reads the OpenAPI 3.1 document itself and
    shows an operation block for every documented operation, with no error in the page or the console."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with requests.get(server.url + "/openapi.json", timeout=10) as response:
        operations = sum(len(item) for item in response.json()["paths"].values())
    browser.get(server.url + "/docs")
    blocks = WebDriverWait(browser, WAIT).until(
        lambda driver: (
            (found := driver.find_elements(By.CSS_SELECTOR, ".opblock")) and len(found) >= operations and found
        )
    )
    assert len(blocks) == operations
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Unable to render" not in text and "Perplexity" in text
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []


def test_the_status_panel_lists_the_latest_upstream_failure_with_its_account(console, fake, server):
    """After a stream Perplexity broke off, the status panel counts it by kind and lists it under Latest with the
    account it happened on (and never the upstream's message). Runs after the clean-load test: it leaves an error."""
    fake.enqueue(Fault("failed", after_frames=4, error_code="MODEL_ERROR", message="Model broke"))
    body = {"model": "perplexity-auto", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with requests.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=20) as response:
        assert '"error"' in response.text
    console.open(key=KEY)
    console.wait(lambda d: "failed: 1" in console.text("#upstream-errors"), "the count never shown")
    latest = console.wait(lambda d: console.text("#recent-errors"), "the latest failure never shown")
    assert latest.startswith("failed on default, ") and latest.endswith(" ago")
    assert console.find("#recent-errors-title").is_displayed()
    assert "Model broke" not in console.driver.page_source
