"""Pure pieces of the client: error classification, ask payload, catalogue parsing, cookie rotation, redaction."""

import pytest

from perplexity.catalogue import parse_catalogue
from perplexity.errors import (
    AuthenticationError,
    BadRequestError,
    CloudflareChallengeError,
    RateLimitError,
    ThreadNotFoundError,
    UploadError,
    UpstreamServerError,
    redact,
)
from perplexity.payload import build_ask_payload
from perplexity.session import COOKIE_NAME, SessionCookie
from perplexity.status import error_for_status, parse_retry_after
from perplexity.types import AskOptions, ThreadIds
from perplexity.uploads import attachment_url, presigned_target, validate_upload

CF_PAGE = "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>cf_chl_opt</body></html>"


@pytest.mark.parametrize(
    ("status", "headers", "body", "thread_call", "expected"),
    [
        (403, {"content-type": "text/html; charset=UTF-8", "cf-ray": "x"}, CF_PAGE, False, CloudflareChallengeError),
        (503, {"content-type": "text/html"}, CF_PAGE, False, CloudflareChallengeError),
        (403, {"content-type": "application/json"}, '{"detail": "Forbidden"}', False, AuthenticationError),
        (401, {}, "", False, AuthenticationError),
        (403, {"content-type": "application/json"}, "{}", True, ThreadNotFoundError),
        (403, {"content-type": "application/json"}, "{}", False, AuthenticationError),
        (429, {"retry-after": "3"}, "", False, RateLimitError),
        (500, {}, "oops", False, UpstreamServerError),
        (503, {"content-type": "application/json"}, "{}", False, UpstreamServerError),
        (422, {}, '{"detail": "missing field"}', False, BadRequestError),
    ],
)
def test_error_statuses_are_classified(status, headers, body, thread_call, expected):
    error = error_for_status(status, headers, body, what="ask", thread_call=thread_call)
    assert type(error) is expected
    assert error.status_code == status


def test_rate_limit_keeps_retry_after():
    error = error_for_status(429, {"retry-after": "7"}, "", what="ask")
    assert error.retry_after == 7.0
    assert "retry after 7s" in error.message


def test_retry_after_accepts_http_dates():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0


def test_messages_tell_the_operator_what_to_do():
    assert "PERPLEXITY_SESSION_TOKEN" in error_for_status(401, {}, "", what="ask").message
    assert "PERPLEXITY_IMPERSONATE" in error_for_status(403, {"content-type": "text/html"}, CF_PAGE).message


def test_redact_masks_cookies_tokens_and_jwts():
    text = (
        f"Cookie: {COOKIE_NAME}=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..abc; other=1 "
        '{"read_write_token": "4119-36fe"} secret-value'
    )
    out = redact(text, "secret-value")
    assert "eyJhbGci" not in out and "4119-36fe" not in out and "secret-value" not in out


def test_first_ask_payload_has_the_first_message_fields():
    body = build_ask_payload("What is 2+2?", AskOptions(model="claude48opus", recency="week"), "f-1")
    params = body["params"]
    assert body["query_str"] == "What is 2+2?"
    assert params["model_preference"] == "claude48opus"
    assert params["search_recency_filter"] == "WEEK"
    assert params["frontend_uuid"] == params["frontend_context_uuid"] == "f-1"
    assert params["query_source"] == "home" and params["dsl_query"] == "What is 2+2?"
    assert params["is_incognito"] is True and params["version"] == "2.18"
    assert params["should_ask_for_mcp_tool_confirmation"] is False
    assert "diff_blocks" in params["supported_block_use_cases"]


def test_follow_up_payload_continues_the_thread():
    thread = ThreadIds("b-1", "c-1", "rw-1", "slug")
    params = build_ask_payload("More?", AskOptions(follow_up=thread), "f-2")["params"]
    assert params["query_source"] == "followup" and params["followup_source"] == "link"
    assert params["last_backend_uuid"] == "b-1" and params["read_write_token"] == "rw-1"
    assert "frontend_context_uuid" not in params and "dsl_query" not in params


def test_payload_options_map_to_perplexity_fields():
    options = AskOptions(
        sources=("web", "scholar", "finance"), latitude=48.85, longitude=2.35, compare_models=("a", "b", "c")
    )
    params = build_ask_payload("q", options, "f")["params"]
    assert params["sources"] == ["web", "scholar", "finance"]
    assert params["client_coordinates"]["location_lat"] == 48.85 and params["local_search_enabled"]
    assert params["compare_model_preferences"] == ["a", "b", "c"]
    writing = build_ask_payload("q", AskOptions(search_focus="writing"), "f")["params"]
    assert writing["sources"] == [] and writing["search_focus"] == "writing"


V1 = {
    "config_schema": "v1",
    "models": {
        "turbo": {"label": "Best", "mode": "search", "provider": "PERPLEXITY"},
        "claude48opus": {"label": "Claude Opus 4.8", "mode": "search", "provider": "ANTHROPIC"},
        "claude48opusthinking": {"label": "Claude Opus 4.8 Thinking", "mode": "search", "provider": "ANTHROPIC"},
        "pplx_alpha": {"label": "Deep Research", "mode": "research", "provider": "PERPLEXITY"},
        "secret": {"label": "Hidden", "mode": "search"},
    },
    "config": [
        {"label": "Best", "subscription_tier": "pro", "non_reasoning_model": "turbo", "reasoning_model": None},
        {
            "label": "Claude Opus 4.8",
            "subscription_tier": "max",
            "non_reasoning_model": "claude48opus",
            "reasoning_model": "claude48opusthinking",
        },
        {"label": "Hidden", "audience": "internal", "non_reasoning_model": "secret", "subscription_tier": "pro"},
    ],
    "default_models": {"search": "pplx_pro", "research": "pplx_alpha"},
    "agentic_research_compare_models": ["gpt55_thinking", "claude48opusthinking", "gemini31pro_high"],
}

V2 = {
    "config_schema": "v2",
    "models": {"gpt55": {"label": "GPT-5.5", "mode": "search"}, "gpt55_thinking": {"label": "GPT-5.5 Thinking"}},
    "default_models": {"research": "pplx_alpha"},
    "search_config": [
        {"subscription_tier": "pro", "non_reasoning_model": "gpt55", "reasoning_model": "gpt55_thinking"},
    ],
    "computer_config": [],
}


def test_catalogue_v1():
    catalogue = parse_catalogue(V1)
    opus = catalogue.get("claude48opus")
    assert catalogue.schema == "v1"
    assert opus.provider == "ANTHROPIC" and opus.tier == "max" and opus.reasoning_variant == "claude48opusthinking"
    assert catalogue.get("claude48opusthinking").reasoning
    assert catalogue.get("pplx_alpha").mode == "research"
    assert catalogue.get("secret").tier is None  # internal config entries give nothing away
    assert catalogue.compare_models[0] == "gpt55_thinking"
    assert catalogue.default_models["research"] == "pplx_alpha"


def test_catalogue_v2():
    catalogue = parse_catalogue(V2)
    assert catalogue.schema == "v2"
    assert catalogue.get("gpt55").reasoning_variant == "gpt55_thinking"
    assert catalogue.get("gpt55_thinking").reasoning and catalogue.get("gpt55_thinking").tier == "pro"


@pytest.mark.parametrize("junk", [None, [], "x", {"models": []}])
def test_catalogue_tolerates_junk(junk):
    assert parse_catalogue(junk).models == ()


def test_session_cookie_rotation_and_repr():
    rotated = []
    cookie = SessionCookie("old-token-value", on_rotate=rotated.append)
    assert "old-token-value" not in repr(cookie)
    assert cookie.header() == f"{COOKIE_NAME}=old-token-value"
    assert not cookie.update_from({"other": "x"})
    assert not cookie.update_from({COOKIE_NAME: ""})
    assert cookie.update_from({COOKIE_NAME: "new-token-value"})
    assert rotated == ["new-token-value"] and cookie.value == "new-token-value"
    assert cookie.update_from({f"{COOKIE_NAME}.1": "B", f"{COOKIE_NAME}.0": "A"})
    assert cookie.value == "AB"
    assert f"{COOKIE_NAME}.0=A" in cookie.header()


def test_upload_validation():
    assert validate_upload("dir/notes.txt", b"hi").content_type == "text/plain"
    assert validate_upload("x.png", b"\x89PNG").is_image
    with pytest.raises(UploadError, match="limit"):
        validate_upload("big.txt", b"x" * 11, max_bytes=10)
    with pytest.raises(UploadError, match="empty"):
        validate_upload("a.txt", b"")
    with pytest.raises(UploadError, match="does not take"):
        validate_upload("a.exe", b"MZ", "application/x-msdownload")
    with pytest.raises(UploadError, match="type"):
        validate_upload("noext", b"data")


def test_presign_answers_and_cloudinary_urls():
    answer = {"results": {"k": {"s3_bucket_url": "https://b/", "s3_object_url": "https://b/o.txt", "fields": {"a": 1}}}}
    assert presigned_target(answer, "k") == ("https://b/", {"a": "1"}, "https://b/o.txt")
    with pytest.raises(UploadError, match="rate limited"):
        presigned_target({"results": {"k": {"rate_limited": True}}}, "k")
    with pytest.raises(UploadError):
        presigned_target({"results": {}}, "k")
    secure = "https://res.cloudinary.com/pplx/image/private/s--abc--/v123/user_uploads/x.png"
    assert attachment_url("https://res.cloudinary.com/image/upload/x", {"secure_url": secure}).endswith(
        "/private/user_uploads/x.png"
    )
    assert attachment_url("https://s3/obj", None) == "https://s3/obj"
