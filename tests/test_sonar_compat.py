"""Perplexity Sonar API compatibility: its model names, domain/date filters, language, search type and usage."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import openai
import pytest
import requests

from api.core.citations import CitationRenderer
from api.core.modelmap import BUILTIN_CATALOGUE, ModelMap
from api.core.sonar import recency_after
from perplexity.testing import Reply
from perplexity.types import Source

USER = [{"role": "user", "content": "Tell me about the news"}]
ANSWER = "First fact [1]. Second fact [2]. Third fact [3][2]."


def _sources(*hosts_and_dates: tuple[str, str | None]) -> list[dict]:
    items = []
    for n, (host, published) in enumerate(hosts_and_dates, 1):
        item = {"name": f"Source {n}", "url": f"https://{host}/{n}", "snippet": f"snippet {n}"}
        if published:
            item["meta_data"] = {"published_date": published}
        items.append(item)
    return items


THREE = _sources(("news.example.org", "2025-03-10"), ("other.com", "2024-06-01"), ("example.org", None))


def _post(server, body):
    return requests.post(server.url + "/v1/chat/completions", json=body, timeout=20)


def _stream(server, body):
    """The streamed content and the last chunk that carried citations."""
    url = server.url + "/v1/chat/completions"
    with requests.post(url, json={**body, "stream": True}, stream=True, timeout=20) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data: {")]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    cited = [c for c in chunks if "citations" in c]
    return content, cited[-1] if cited else {}, r.headers


# ---- 1. model names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "upstream"),
    [("sonar", "experimental"), ("sonar-pro", "pplx_pro"), ("sonar-deep-research", "pplx_alpha")],
)
def test_sonar_names_resolve_to_the_closest_web_models(name, upstream):
    found = ModelMap(BUILTIN_CATALOGUE).resolve(name)
    assert found is not None and found.id == name and found.upstream == upstream


def test_sonar_reasoning_names_pick_a_thinking_model():
    models = ModelMap(BUILTIN_CATALOGUE)
    for name in ("sonar-reasoning", "sonar-reasoning-pro"):
        found = models.resolve(name)
        assert found is not None and found.reasoning and found.upstream == "gpt55_thinking"
    assert all(not m.id.startswith("sonar") for m in models.models())  # resolved, not listed


SONAR_NAMES = ["sonar", "sonar-pro", "sonar-reasoning", "sonar-reasoning-pro", "sonar-deep-research"]


@pytest.mark.parametrize("name", SONAR_NAMES)
def test_sonar_names_answer_on_chat_and_name_themselves(fake, sdk, name):
    fake.enqueue(Reply(answer="Hello [1]."))
    raw = sdk.chat.completions.with_raw_response.create(model=name, messages=USER)
    assert raw.parse().model == name
    assert raw.headers["x-perplexity-requested-model"] == name


def test_sonar_names_answer_on_responses_and_legacy_completions(fake, sdk):
    fake.enqueue(Reply(answer="Hello."))
    assert sdk.responses.create(model="sonar-pro", input="Hi").model == "sonar-pro"
    fake.enqueue(Reply(answer="Hello."))
    assert sdk.completions.create(model="sonar", prompt="Hi").model == "sonar"
    assert fake.asks[-1].json["params"]["model_preference"] == "experimental"


# ---- 2. search_domain_filter -------------------------------------------------------------------------------------


def test_domain_allow_list_reaches_the_query_and_filters_sources(fake, live_server):
    fake.enqueue(Reply(sources=THREE, answer=ANSWER))
    r = _post(live_server, {"model": "sonar", "messages": USER, "search_domain_filter": ["https://www.example.org"]})
    assert r.status_code == 200, r.text
    assert fake.asks[-1].json["query_str"].endswith(" site:example.org")
    body = r.json()
    assert body["citations"] == ["https://news.example.org/1", "https://example.org/3"]
    assert [s["url"] for s in body["search_results"]] == body["citations"]
    message = body["choices"][0]["message"]
    assert message["content"] == "First fact [1]. Second fact. Third fact [2]."
    assert [a["url_citation"]["url"] for a in message["annotations"]] == body["citations"]
    assert r.headers["x-perplexity-approximated"] == "search_domain_filter"


def test_domain_deny_list_and_markdown_citations(fake, live_server):
    fake.enqueue(Reply(sources=THREE, answer=ANSWER))
    body = {"model": "sonar", "messages": USER, "search_domain_filter": ["-other.com"], "citation_mode": "markdown"}
    r = _post(live_server, body)
    assert "-site:other.com" in fake.asks[-1].json["query_str"]
    assert r.json()["choices"][0]["message"]["content"] == (
        "First fact [1](https://news.example.org/1). Second fact. Third fact [2](https://example.org/3)."
    )


def test_domain_filter_holds_on_a_stream(fake, live_server):
    fake.enqueue(Reply(sources=THREE, answer=ANSWER, chunk_size=3))
    body = {"model": "sonar", "messages": USER, "search_domain_filter": ["example.org"]}
    content, cited, headers = _stream(live_server, body)
    assert content == "First fact [1]. Second fact. Third fact [2]."
    assert cited["citations"] == ["https://news.example.org/1", "https://example.org/3"]
    assert headers["x-perplexity-approximated"] == "search_domain_filter"


@pytest.mark.parametrize("mode", ["default", "markdown", "clean"])
def test_renumbering_is_the_same_in_any_chunking(mode):
    sources = [Source(f"s{n}", f"https://h{n}.com/") for n in (1, 3)]
    numbers = {1: 1, 2: None, 3: 2}
    text = "A [1]. B [2]. C [3][2] and [2]x `[2]` [9]. D [2][3]. E [2][2]. F [2][link."
    whole = CitationRenderer(mode)
    whole.set_sources(sources, numbers)
    expected = whole.render(text)
    for size in range(1, 8):
        renderer = CitationRenderer(mode)
        renderer.set_sources(sources, numbers)
        out = "".join(renderer.feed(text[i : i + size]) for i in range(0, len(text), size)) + renderer.flush()
        assert out == expected
        assert renderer.annotations == whole.annotations
    if mode == "default":
        assert expected == "A [1]. B. C [2] and x `[2]` [9]. D [2]. E. F [link."


# ---- 3. date filters ---------------------------------------------------------------------------------------------


def test_after_date_filters_sources_and_sends_the_nearest_recency(fake, live_server):
    fake.enqueue(Reply(sources=THREE, answer=ANSWER))
    body = {"model": "sonar", "messages": USER, "search_after_date_filter": "1/1/2025"}
    r = _post(live_server, body)
    assert r.status_code == 200, r.text
    # More than a year back: no window reaches it, so none is sent and only the filter applies.
    assert fake.asks[-1].json["params"]["search_recency_filter"] is None
    assert r.json()["citations"] == ["https://news.example.org/1", "https://example.org/3"]  # undated kept
    assert r.headers["x-perplexity-approximated"] == "search_after_date_filter"


def test_recent_after_date_sends_a_week_window(fake, live_server):
    fake.enqueue(Reply(answer="Hi."))
    recent = (datetime.now(UTC).date() - timedelta(days=3)).strftime("%m/%d/%Y")
    _post(live_server, {"model": "sonar", "messages": USER, "last_updated_after_filter": recent})
    assert fake.asks[-1].json["params"]["search_recency_filter"] == "WEEK"


def test_explicit_recency_wins_over_the_date(fake, live_server):
    fake.enqueue(Reply(answer="Hi."))
    recent = (datetime.now(UTC).date() - timedelta(days=3)).strftime("%m/%d/%Y")
    body = {"model": "sonar", "messages": USER, "search_after_date_filter": recent, "search_recency_filter": "year"}
    _post(live_server, body)
    assert fake.asks[-1].json["params"]["search_recency_filter"] == "YEAR"


def test_before_date_filters_sources(fake, live_server):
    fake.enqueue(Reply(sources=THREE, answer=ANSWER))
    body = {"model": "sonar", "messages": USER, "search_before_date_filter": "12/31/2024"}
    r = _post(live_server, body)
    assert r.json()["citations"] == ["https://other.com/2", "https://example.org/3"]
    assert r.json()["choices"][0]["message"]["content"] == "First fact. Second fact [1]. Third fact [2][1]."


def test_a_bad_date_is_a_400(fake, live_server):
    r = _post(live_server, {"model": "sonar", "messages": USER, "search_after_date_filter": "yesterday"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_date"


def test_recency_windows():
    today = date(2026, 6, 30)
    assert recency_after(date(2026, 6, 29), today) == "day"
    assert recency_after(date(2026, 6, 1), today) == "month"
    assert recency_after(date(2025, 1, 1), today) is None


# ---- 4. language -------------------------------------------------------------------------------------------------


def test_language_preference_and_default(fake, live_server):
    fake.enqueue(Reply(answer="Salut."))
    _post(live_server, {"model": "sonar", "messages": USER, "language_preference": "fr-FR"})
    assert fake.asks[-1].json["params"]["language"] == "fr-FR"
    fake.enqueue(Reply(answer="Hi."))
    r = _post(live_server, {"model": "sonar", "messages": USER})
    assert fake.asks[-1].json["params"]["language"] == "en-US"
    assert "x-perplexity-approximated" not in r.headers


def test_language_setting(fake, live_server_factory):
    server = live_server_factory(PERPLEXITY_LANGUAGE="de-DE")
    fake.enqueue(Reply(answer="Hallo."))
    assert _post(server, {"model": "sonar", "messages": USER}).status_code == 200
    assert fake.asks[-1].json["params"]["language"] == "de-DE"


# ---- 5. search type, social, num_search_queries --------------------------------------------------------------------


@pytest.mark.parametrize(("search_type", "mode"), [("fast", "concise"), ("pro", "copilot"), ("auto", "copilot")])
def test_search_type_selects_the_ask_mode(fake, live_server, search_type, mode):
    fake.enqueue(Reply(answer="Hi."))
    body = {"model": "sonar", "messages": USER, "web_search_options": {"search_type": search_type}}
    r = _post(live_server, body)
    assert fake.asks[-1].json["params"]["mode"] == mode
    assert ("x-perplexity-approximated" in r.headers) == (search_type != "auto")


def test_social_search_mode(fake, sdk):
    fake.enqueue(Reply(answer="Hi."))
    sdk.chat.completions.create(model="sonar", messages=USER, extra_body={"search_mode": "social"})
    assert fake.asks[-1].json["params"]["sources"] == ["social"]


def test_num_search_queries_counts_the_plan_searches(fake, live_server):
    fake.enqueue(Reply(answer="Hi [1]."))
    body = _post(live_server, {"model": "sonar", "messages": USER}).json()
    reasoning = body["choices"][0]["message"].get("reasoning_content") or ""
    assert body["usage"]["num_search_queries"] == reasoning.count("Searching the web: ")


def test_num_search_queries_reaches_the_sdk(fake, sdk):
    fake.enqueue(Reply(answer="Hi."))
    completion = sdk.chat.completions.create(model="sonar", messages=USER)
    assert isinstance(completion.usage.model_extra.get("num_search_queries"), int)


def test_unknown_search_mode_still_refused(sdk):
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="sonar", messages=USER, extra_body={"search_mode": "nope"})


# ---- 6. result count, image filters, context size ----------------------------------------------------------------


def test_num_search_results_keeps_the_first_sources_and_renumbers(fake, live_server):
    fake.enqueue(Reply(sources=THREE, answer=ANSWER))
    r = _post(live_server, {"model": "sonar", "messages": USER, "num_search_results": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["citations"] == ["https://news.example.org/1", "https://other.com/2"]
    assert body["choices"][0]["message"]["content"] == "First fact [1]. Second fact [2]. Third fact [2]."
    assert r.headers["x-perplexity-approximated"] == "num_search_results"


def test_num_search_results_out_of_range_is_a_400(fake, live_server):
    r = _post(live_server, {"model": "sonar", "messages": USER, "num_search_results": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "num_search_results"
    assert fake.asks == []


IMAGES = [
    {"image": "https://img.example.org/a.png", "url": "https://news.example.org/1"},
    {"image": "https://cdn.other.com/b.jpg", "url": "https://other.com/2"},
    {"image": "https://img.example.org/c.webp", "url": "https://example.org/3"},
]


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        ({"image_domain_filter": ["example.org"]}, ["a.png", "c.webp"]),
        ({"image_domain_filter": ["-example.org"]}, ["b.jpg"]),
        ({"image_format_filter": ["JPG", ".webp"]}, ["b.jpg", "c.webp"]),
        ({"image_domain_filter": ["example.org"], "image_format_filter": ["png"]}, ["a.png"]),
        ({}, ["a.png", "b.jpg", "c.webp"]),
    ],
)
def test_image_filters_apply_to_returned_images(fake, live_server, extra, kept):
    fake.enqueue(Reply(sources=THREE, answer=ANSWER, media=IMAGES))
    r = _post(live_server, {"model": "sonar", "messages": USER, "return_images": True, **extra})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["image_url"].rsplit("/", 1)[-1] for i in body["images"]] == kept
    assert len(body["citations"]) == 3  # image filters leave the sources alone
    assert r.headers.get("x-perplexity-approximated", "") == ", ".join(extra)  # in the order sonar lists them


def test_image_filters_hold_on_a_stream(fake, live_server):
    fake.enqueue(Reply(sources=THREE, answer=ANSWER, media=IMAGES, chunk_size=4))
    body = {"model": "sonar", "messages": USER, "return_images": True, "image_format_filter": ["png"]}
    url = live_server.url + "/v1/chat/completions"
    with requests.post(url, json={**body, "stream": True}, stream=True, timeout=20) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data: {")]
    shown = [c["images"] for c in chunks if "images" in c]
    assert shown and [i["image_url"] for i in shown[-1]] == ["https://img.example.org/a.png"]


@pytest.mark.parametrize(("size", "mode"), [("low", "concise"), ("high", "copilot"), ("medium", None)])
def test_search_context_size_reads_as_a_search_type(fake, live_server, size, mode):
    fake.enqueue(Reply(answer="ok"))
    body = {"model": "sonar", "messages": USER, "web_search_options": {"search_context_size": size}}
    r = _post(live_server, body)
    assert r.status_code == 200, r.text
    assert fake.asks[-1].json["params"].get("mode") == (mode or fake.asks[-1].json["params"].get("mode"))
    approximated = r.headers.get("x-perplexity-approximated")
    assert approximated == ("web_search_options.search_context_size" if mode else None)


def test_search_type_wins_over_context_size(fake, live_server):
    fake.enqueue(Reply(answer="ok"))
    web = {"search_type": "fast", "search_context_size": "high"}
    r = _post(live_server, {"model": "sonar", "messages": USER, "web_search_options": web})
    assert fake.asks[-1].json["params"]["mode"] == "concise"
    assert r.headers["x-perplexity-approximated"] == "web_search_options.search_type"
