"""Property test: no request body, however wrong, gets a 5xx from the answering endpoints (against the fake).

Each example starts from a valid body of an endpoint and replaces fields (top-level, or inside the first
message / input item) with arbitrary JSON values: wrong types, huge integers, deep nesting, empty containers.
The server must answer 2xx or an OpenAI-shaped 4xx; a 5xx would mean a crash, or an ask sent upstream for a
body that should have been refused first.
"""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .openapi import validate

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)

VALID = {
    "/v1/chat/completions": {
        "model": "perplexity-auto",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 50,
        "stop": ["x"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    },
    "/v1/responses": {
        "model": "perplexity-auto",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        "max_output_tokens": 50,
        "text": {"format": {"type": "text"}},
    },
    "/v1/completions": {"model": "perplexity-auto", "prompt": "Hi", "max_tokens": 50},
    "/v1/messages": {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    },
}
# Where a mutation may land: top-level fields, and the fields of the first message or input item.
FIELDS = {
    "/v1/chat/completions": ["model", "messages", "max_tokens", "stop", "tools", "tool_choice", "response_format",
                             "n", "stream", "temperature", "web_search_options", "search_mode", "citation_mode"],
    "/v1/responses": ["model", "input", "max_output_tokens", "text", "tools", "tool_choice", "instructions",
                      "previous_response_id", "metadata", "reasoning", "store", "include"],
    "/v1/completions": ["model", "prompt", "max_tokens", "stop", "echo", "suffix", "n"],
    "/v1/messages": ["model", "max_tokens", "messages", "system", "tools", "tool_choice", "thinking",
                     "stop_sequences", "metadata", "output_config"],
}  # fmt: skip
ITEM_FIELDS = ["role", "content", "type", "text", "tool_calls", "call_id", "name"]


@st.composite
def mutated_body(draw) -> tuple[str, object]:
    path = draw(st.sampled_from(sorted(VALID)))
    body = copy.deepcopy(VALID[path])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if draw(st.booleans()):
            body[draw(st.sampled_from(FIELDS[path]))] = draw(JSON_VALUES)
        else:
            container = body.get("messages") or body.get("input")
            if isinstance(container, list) and container and isinstance(container[0], dict):
                container[0][draw(st.sampled_from(ITEM_FIELDS))] = draw(JSON_VALUES)
    return path, body


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=mutated_body())
def test_no_body_gets_a_5xx(client, fake, case) -> None:
    path, body = case
    response = client.post(path, json=body)
    assert response.status_code < 500, (path, body, response.get_data(as_text=True)[:500])
    if response.status_code >= 400:
        payload = response.get_json()
        if path == "/v1/messages":
            assert payload["type"] == "error" and payload["error"]["message"]
        else:
            validate(payload, "ErrorResponse")


def test_the_reported_cases(client, fake) -> None:
    """The issue's cases: a non-string item type, a 2**64 token cap (after the ask ran), an image-only message."""
    item = {"type": ["message"], "role": "user", "content": "Hi"}
    assert client.post("/v1/responses", json={"model": "perplexity-auto", "input": [item]}).status_code == 400
    asks = len(fake.asks)
    huge = client.post("/v1/responses", json={"model": "perplexity-auto", "input": "Hi", "max_output_tokens": 2**64})
    assert huge.status_code == 400 and len(fake.asks) == asks  # refused before anything was asked
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    only_image = client.post(
        "/v1/chat/completions", json={"model": "perplexity-auto", "messages": [{"role": "user", "content": [image]}]}
    )
    assert only_image.status_code == 400, only_image.get_json()
