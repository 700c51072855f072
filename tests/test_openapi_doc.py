"""The API reference: /openapi.json is a valid OpenAPI 3.1 document of every route, /docs serves Swagger UI from
the server, and schemathesis finds no server error and no response outside the document on real gunicorn."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks
from schemathesis.specs.openapi.definitions import OPENAPI_31

from api.state import server_version

KEY = "sk-openapi-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
_UNDOCUMENTED = re.compile(r"^/(docs|openapi\.json|console|static)(/|$)")
# A few examples per operation, the same ones every run, no shrinking: the run stays within about a minute.
_BOUNDED = settings(
    max_examples=75,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def keyed_server(live_server_factory):
    """gunicorn against the fake with an API key: requests without it get 401."""
    return live_server_factory(OPENAI_API_KEY=KEY)


@pytest.fixture(scope="module")
def document(keyed_server) -> dict:
    with requests.get(keyed_server.url + "/openapi.json", timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        return response.json()


@pytest.fixture(scope="module")
def api_schema(document, keyed_server):
    schema = schemathesis.openapi.from_dict(document)
    schema.config.base_url = keyed_server.url
    # The documented examples, then a few generated requests each, valid and invalid; the coverage phase (hundreds
    # of boundary cases per operation) is for the CLI, not a minute-long test.
    schema.config.phases.coverage.enabled = False
    return schema


# ---- the document -----------------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    jsonschema.Draft202012Validator(OPENAPI_31).validate(document)  # the OAS 3.1 meta-schema, bundled offline
    schemathesis.openapi.from_dict(document).validate()  # schemathesis's own loader and validation
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": "API key"}
    assert schemes["x-api-key"]["in"] == "header"
    assert document["info"]["version"] == server_version()
    assert document["paths"]["/health"]["get"]["security"] == []


def _route_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_route_is_documented_with_its_methods(app, document):
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or _UNDOCUMENTED.match(rule.rule):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((method.lower(), _route_path(rule.rule)))
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served - documented == set()
    assert documented - served == set()


def test_answers_document_streams_perplexity_fields_and_error_shapes(document):
    schemas = document["components"]["schemas"]
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    request = schemas["ChatCompletionRequest"]["properties"]
    for name in ("citation_mode", "search_domain_filter", "search_recency_filter", "return_images", "conversation_id"):
        assert name in request, name
    assert request["web_search_options"] == {
        "anyOf": [{"$ref": "#/components/schemas/WebSearchOptions"}, {"type": "null"}]
    }
    assert {"citations", "search_results"} <= set(schemas["ChatCompletion"]["properties"])
    assert {"400", "401", "403", "404", "429", "502", "503"} <= set(chat["responses"])
    messages = document["paths"]["/v1/messages"]["post"]["responses"]
    assert messages["529"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnthropicErrorResponse"
    }
    assert "502" not in messages
    assert set(schemas["Error"]["required"]) == {"message", "type", "param", "code"}


def test_an_undocumented_method_gets_405_with_allow(keyed_server, document):
    """What the document cannot say: any other method on a documented path is a 405 that names the allowed ones."""
    templates = {path: re.compile(re.sub(r"\{[a-z_]+\}", "[^/]+", path) + "$") for path in document["paths"]}
    templates["/v1/models/{model_id}"] = re.compile("/v1/models/.+$")  # a model id may contain `/`
    for path in document["paths"]:
        concrete = re.sub(r"\{[a-z_]+\}", "x", path)
        # /v1/models/refresh is also a model id to GET: every documented path the URL matches counts.
        methods = {
            method for other, item in document["paths"].items() if templates[other].match(concrete) for method in item
        }
        with requests.request("PATCH", keyed_server.url + concrete, headers=AUTH, timeout=10) as response:
            assert response.status_code == 405, path
            allowed = {method.strip().lower() for method in response.headers["Allow"].split(",")}
            assert allowed - {"head", "options"} == methods, path
            body = response.json()
        if path.startswith("/v1/messages"):
            assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        else:
            assert body["error"]["code"] == "method_not_allowed"


# ---- Swagger UI -------------------------------------------------------------------------------------------------


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self.document_url: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.found.append(("script", values["src"] or ""))
        elif tag == "link" and values.get("href"):
            self.found.append((values.get("rel") or "", values["href"] or ""))
        elif tag == "body":
            self.document_url = values.get("data-openapi-url")


_TYPES = {"script": "text/javascript", "stylesheet": "text/css", "icon": "image/png"}


def test_docs_serves_swagger_ui_with_its_assets_from_the_server(keyed_server):
    with requests.get(keyed_server.url + "/docs", timeout=10) as page:  # no key: a public page
        assert page.status_code == 200
        assert page.headers["Content-Type"].startswith("text/html")
        csp = page.headers["Content-Security-Policy"]
        html = page.text
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "<script>" not in html  # no inline script: the initializer is a file
    parser = _Assets()
    parser.feed(html)
    kinds = {kind for kind, _ in parser.found}
    assert {"script", "stylesheet", "icon"} <= kinds
    assert [src for kind, src in parser.found if kind == "script"][0].endswith("swagger-ui-bundle.js")
    for kind, src in parser.found:
        url = urljoin(keyed_server.url + "/docs", src)
        assert url.startswith(keyed_server.url + "/docs/"), url  # served here, never from a CDN
        with requests.get(url, timeout=10) as asset:
            assert asset.status_code == 200, url
            assert asset.headers["Content-Type"].startswith(_TYPES[kind]), (url, asset.headers["Content-Type"])
            assert len(asset.content) > 100
    with requests.get(keyed_server.url + "/docs/initializer.js", timeout=10) as script:
        assert parser.document_url is not None
        assert "SwaggerUIBundle(" in script.text and "dataset.openapiUrl" in script.text
    assert parser.document_url == "/openapi.json"  # Swagger UI 5 reads the 3.1 document itself
    with requests.get(keyed_server.url + "/docs/oauth2-redirect.js", timeout=10) as unused:
        assert unused.status_code == 404  # only the files the page uses are served


def _conforms(api_schema, document, method: str, path: str, response: requests.Response) -> None:
    assert str(response.status_code) in document["paths"][path][method]["responses"], (path, response.status_code)
    api_schema[path][method.upper()].validate_response(response)


def test_stored_objects_keep_to_the_document(keyed_server, api_schema, document):
    """What generated ids cannot reach (they are never found): stored responses, background ones, conversations."""
    url = keyed_server.url
    with requests.Session() as http:
        http.headers.update(AUTH)
        created = http.post(url + "/v1/responses", json={"model": "perplexity-auto", "input": "Hi"}, timeout=20)
        _conforms(api_schema, document, "post", "/v1/responses", created)
        path = "/v1/responses/" + created.json()["id"]
        for method, suffix, tail in (
            ("get", "", ""),
            ("get", "/input_items", "/input_items?order=asc&limit=1"),
            ("post", "/cancel", "/cancel"),  # not a background response: 400
            ("delete", "", ""),
            ("get", "", ""),  # deleted: 404
        ):
            response = http.request(method, url + path + tail, timeout=20)
            _conforms(api_schema, document, method, "/v1/responses/{response_id}" + suffix, response)
        queued = http.post(
            url + "/v1/responses", json={"model": "perplexity-auto", "input": "Hi", "background": True}, timeout=20
        )
        _conforms(api_schema, document, "post", "/v1/responses", queued)
        assert queued.json()["status"] in ("queued", "in_progress")
        replay = http.get(url + "/v1/responses/" + queued.json()["id"] + "?stream=true", timeout=20)
        assert replay.headers["Content-Type"].startswith("text/event-stream")
        _conforms(api_schema, document, "get", "/v1/responses/{response_id}", replay)
        finished = http.get(url + "/v1/responses/" + queued.json()["id"], timeout=20)
        _conforms(api_schema, document, "get", "/v1/responses/{response_id}", finished)
        chat = {"model": "perplexity-auto", "messages": [{"role": "user", "content": "Hi"}], "user": "openapi-doc"}
        answered = http.post(url + "/v1/chat/completions", json=chat, timeout=20)
        _conforms(api_schema, document, "post", "/v1/chat/completions", answered)
        listed = http.get(url + "/conversations?user=openapi-doc", timeout=20)
        _conforms(api_schema, document, "get", "/conversations", listed)
        assert listed.json()["data"]
        deleted = http.delete(url + "/conversations/" + answered.headers["X-Conversation-ID"] + "?user=openapi-doc")
        _conforms(api_schema, document, "delete", "/conversations/{conversation_id}", deleted)
        assert deleted.status_code == 200


# ---- schemathesis -----------------------------------------------------------------------------------------------

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.timeout(300)  # one test item for every operation: room for a slow box
@schema.parametrize()
@_BOUNDED
def test_the_api_keeps_to_its_document(case):
    """Generated requests with the key: no 5xx, every status, content type, body and header as documented."""
    case.call_and_validate(headers=AUTH, checks=_CHECKS, timeout=20)


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(_BOUNDED, max_examples=2)
def test_the_api_keeps_to_its_document_without_a_key(case):
    """The same without a key: 401 in the documented shape, public endpoints still answer."""
    response = case.call_and_validate(checks=_CHECKS, timeout=20)
    public = case.operation.definition.raw.get("security") == []
    assert public or response.status_code == 401
