"""PerplexityClient against the fake upstream: formats, faults and retries, threads, uploads, account calls."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from perplexity import errors
from perplexity.client import PerplexityClient
from perplexity.testing import FakePerplexity, Fault, Reply
from perplexity.types import AnswerDelta, AskOptions, ClarifyingQuestions

from .conftest import TOKEN, free_port

ANSWER = "Paris is the capital of France [1]. It has about two million people [2]."


def collect(stream):
    events = list(stream)
    text = "".join(e.text for e in events if isinstance(e, AnswerDelta))
    return events, text


@pytest.mark.parametrize("fmt", ["text", "markdown", "diff", "workflow", "plaintext"])
def test_every_answer_format_streams_the_whole_answer(fake, px, fmt):
    fake.enqueue(Reply(answer=ANSWER, format=fmt, chunk_size=5))
    with px.ask("capital of france") as stream:
        events, text = collect(stream)
    done = stream.completed
    assert text == done.answer == done.final_answer == ANSWER
    assert [s.url for s in done.sources] == ["https://example.com/1", "https://example.com/2", "https://example.com/3"]
    assert done.thread.backend_uuid and done.thread.context_uuid and done.thread.read_write_token
    assert done.title and done.related_questions
    assert fake.open_streams == 0 or fake.wait_until(lambda: fake.open_streams == 0)


def test_the_request_carries_cookie_headers_and_query(fake, px):
    fake.enqueue(Reply(answer=ANSWER))
    px.ask_complete("hello")
    ask = fake.asks[-1]
    assert ask.query == {"version": "2.18", "source": "default"}
    assert f"__Secure-next-auth.session-token={TOKEN}" in ask.headers["cookie"]
    assert ask.headers["accept"] == "text/event-stream"
    assert ask.headers["x-request-id"] == ask.json["params"]["frontend_uuid"]
    assert ask.json["query_str"] == "hello" and ask.json["params"]["is_incognito"] is True


def test_thinking_model_reasoning_stays_out_of_the_answer(fake, px):
    fake.enqueue(Reply(answer=ANSWER, format="diff", reasoning=True))
    result = px.ask_complete("think", AskOptions(model="claude48opusthinking"))
    assert result.answer == ANSWER
    assert result.reasoning and ANSWER not in result.reasoning
    assert fake.asks[-1].json["params"]["model_preference"] == "claude48opusthinking"


def test_clarifying_questions_do_not_stop_the_run(fake, px):
    fake.enqueue(Reply(answer=ANSWER, clarifying=True, format="text"))
    with px.ask("research this") as stream:
        events, text = collect(stream)
    assert any(isinstance(e, ClarifyingQuestions) and e.questions for e in events)
    assert text == ANSWER and stream.completed is not None


def test_deep_research_answers_with_the_report(fake, px):
    fake.enqueue(Reply(answer="# Report\n\nFindings [1].", research=True))
    result = px.ask_complete("research", AskOptions(model="pplx_alpha"))
    assert result.answer == "# Report\n\nFindings [1]."


def test_revised_terminal_answer_is_flagged(fake, px):
    revised = ANSWER.replace("[1]", "[3]")
    fake.enqueue(Reply(answer=ANSWER, revise_final=revised))
    with px.ask("q") as stream:
        _, text = collect(stream)
    assert text == stream.completed.answer == ANSWER
    assert stream.completed.revised and stream.completed.final_answer == revised
    # A collected (non-streamed) result takes Perplexity's final text.
    fake.enqueue(Reply(answer=ANSWER, revise_final=revised))
    assert px.ask_complete("q").answer == revised


def test_media_items_come_through(fake, px):
    media = [{"medium": "image", "image": "https://img.example/a.png", "url": "https://page.example/a", "name": "A"}]
    fake.enqueue(Reply(answer=ANSWER, media=media))
    result = px.ask_complete("q")
    assert result.media[0].url == "https://img.example/a.png"


# ---- faults before the stream: classification and retries ----------------------------------


@pytest.mark.parametrize(
    ("kind", "error", "attempts"),
    [
        ("cloudflare", errors.CloudflareChallengeError, 1),
        ("cloudflare_503", errors.CloudflareChallengeError, 1),
        ("auth", errors.AuthenticationError, 1),
        ("auth_401", errors.AuthenticationError, 1),
        ("html_200", errors.MalformedFrameError, 1),
    ],
)
def test_non_retryable_faults_raise_at_once(fake, px, kind, error, attempts):
    fake.enqueue(Fault(kind, times=5))
    with pytest.raises(error):
        px.ask("q")
    assert len(fake.asks) == attempts


def test_rate_limit_is_retried_after_retry_after(fake, px):
    fake.enqueue(Fault("rate_limit", retry_after=0.05), Reply(answer=ANSWER))
    assert px.ask_complete("q").answer == ANSWER
    assert len(fake.asks) == 2


def test_rate_limit_gives_up_after_the_retries_and_keeps_retry_after(fake, px):
    fake.enqueue(Fault("rate_limit", retry_after=0.01, times=5))
    with pytest.raises(errors.RateLimitError) as info:
        px.ask("q")
    assert info.value.retry_after == pytest.approx(0.01)
    assert len(fake.asks) == 3  # one try + max_retries


def test_a_long_retry_after_is_reported_not_slept(fake, px):
    fake.enqueue(Fault("rate_limit", retry_after=3600))
    with pytest.raises(errors.RateLimitError) as info:
        px.ask("q")
    assert info.value.retry_after == 3600 and len(fake.asks) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(fake, px, status):
    fake.enqueue(Fault("server_error", status=status, times=2), Reply(answer=ANSWER))
    assert px.ask_complete("q").answer == ANSWER
    assert len(fake.asks) == 3


def test_persistent_server_errors_raise(fake, px):
    fake.enqueue(Fault("server_error", status=500, times=9))
    with pytest.raises(errors.UpstreamServerError) as info:
        px.ask("q")
    assert info.value.status_code == 500 and len(fake.asks) == 3


def test_connect_errors_are_retried_then_raised():
    port = free_port()  # nothing listens there
    sleeps = []
    with PerplexityClient(TOKEN, base_url=f"http://127.0.0.1:{port}", backoff=0.01, sleep=sleeps.append) as c:
        with pytest.raises(errors.UpstreamConnectError):
            c.ask("q")
    assert len(sleeps) == 2


def test_slow_first_byte_within_the_read_timeout_is_fine(fake, px):
    fake.enqueue(Fault("slow_first_byte", delay=0.3))
    assert px.ask_complete("q").answer


def test_slow_first_byte_past_the_read_timeout_times_out(fake):
    fake.enqueue(Fault("slow_first_byte", delay=1.5, times=3))
    with PerplexityClient(TOKEN, base_url=fake.url, read_timeout=0.3, backoff=0.01) as c:
        with pytest.raises(errors.UpstreamTimeoutError):
            c.ask("q")
    assert len(fake.asks) == 1  # the ask may have reached Perplexity: never retried


# ---- faults after the stream started: never retried ---------------------------------------


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("malformed", errors.MalformedFrameError),
        ("failed", errors.AskFailedError),
        ("rate_limited_in_stream", errors.AskRateLimitedError),
        ("truncated", errors.StreamTruncatedError),
        ("eof", errors.StreamTruncatedError),
        ("reset", errors.StreamTruncatedError),
    ],
)
def test_mid_stream_faults_raise_with_the_partial_answer(fake, px, kind, error):
    fake.enqueue(Fault(kind, after_frames=4, times=3, reply=Reply(answer=ANSWER, chunk_size=4)))
    stream = px.ask("q")
    with pytest.raises(error) as info:
        collect(stream)
    assert len(fake.asks) == 1
    assert ANSWER.startswith(info.value.partial_answer)
    assert px.open_streams == 0


def test_a_stall_past_the_read_timeout_ends_the_stream(fake):
    fake.enqueue(Fault("stall", after_frames=3, delay=3.0))
    with PerplexityClient(TOKEN, base_url=fake.url, read_timeout=0.3) as c:
        stream = c.ask("q")
        with pytest.raises(errors.StreamTruncatedError, match="stopped sending"):
            collect(stream)
    assert fake.wait_until(lambda: fake.open_streams == 0)
    assert len(fake.asks) == 1


def test_failed_run_message_is_kept(fake, px):
    fake.enqueue(Fault("failed", error_code="MODEL_UNAVAILABLE", message="The model is unavailable"))
    with pytest.raises(errors.AskFailedError) as info:
        collect(px.ask("q"))
    assert info.value.code == "MODEL_UNAVAILABLE"
    assert "unavailable" in info.value.message


# ---- early close ---------------------------------------------------------------------------


def test_closing_a_stream_early_closes_the_upstream_connection(fake, px):
    fake.enqueue(Reply(answer=ANSWER * 20, chunk_size=3, frame_delay=0.05))
    stream = px.ask("q")
    first = next(iter(stream))
    assert first is not None
    assert fake.open_streams == 1
    stream.close()
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=5)
    assert fake.streams_closed_by_client == 1
    assert px.open_streams == 0


# ---- threads -------------------------------------------------------------------------------


def test_three_turns_continue_one_thread(fake, px):
    first = px.ask_complete("one")
    second = px.ask_complete("two", AskOptions(follow_up=first.thread))
    third = px.ask_complete("three", AskOptions(follow_up=second.thread))
    asks = fake.asks
    assert [a.json["params"]["query_source"] for a in asks] == ["home", "followup", "followup"]
    assert asks[1].json["params"]["last_backend_uuid"] == first.thread.backend_uuid
    assert asks[2].json["params"]["last_backend_uuid"] == second.thread.backend_uuid
    assert asks[2].json["params"]["read_write_token"] == first.thread.read_write_token
    assert first.thread.context_uuid == second.thread.context_uuid == third.thread.context_uuid
    assert len({first.thread.backend_uuid, second.thread.backend_uuid, third.thread.backend_uuid}) == 3
    assert len(fake.threads[first.thread.context_uuid].entries) == 3


def test_follow_up_on_a_deleted_thread_is_thread_not_found(fake, px):
    first = px.ask_complete("one")
    px.delete_thread(first.thread)
    with pytest.raises(errors.ThreadNotFoundError):
        px.ask("two", AskOptions(follow_up=first.thread))


# ---- uploads --------------------------------------------------------------------------------


def test_upload_then_ask_with_the_attachment(fake, px):
    url = px.upload("notes.txt", b"hello attachment", "text/plain")
    assert url.startswith(fake.url + "/fake-s3/")
    assert fake.uploads[url][2] == b"hello attachment"
    px.ask_complete("summarize", AskOptions(attachments=(url,)))
    assert fake.asks[-1].json["params"]["attachments"] == [url]
    presign = next(r for r in fake.requests if r.path.endswith("batch_create_upload_urls"))
    entry = next(iter(presign.json["files"].values()))
    assert entry["filename"] == "notes.txt" and entry["file_size"] == 16
    s3 = next(r for r in fake.requests if r.path.startswith("/fake-s3"))
    assert "cookie" not in s3.headers  # the bucket never sees the Perplexity cookie


def test_upload_validation_happens_before_any_request(fake, px):
    with pytest.raises(errors.UploadError, match="limit"):
        PerplexityClient(TOKEN, base_url=fake.url, max_upload_bytes=4).upload("a.txt", b"too big", "text/plain")
    assert fake.requests == []


def test_upload_refused_by_the_store_is_an_upload_error(fake, px):
    fake.max_upload_bytes = 3
    with pytest.raises(errors.UploadError, match="refused"):
        px.upload("a.txt", b"four", "text/plain")


# ---- account calls ---------------------------------------------------------------------------


def test_session_check_valid_and_invalid(fake, px):
    info = px.session()
    assert info.valid and info.user_id and info.tier
    fake.session_valid = False
    assert px.session().valid is False


def test_rotated_cookie_is_adopted(fake, px):
    fake.rotate_on_session = True
    px.session()
    assert px.cookie.value != TOKEN and px.cookie.rotations == 1
    px.ask_complete("q")
    assert px.cookie.value in fake.asks[-1].headers["cookie"]


@pytest.mark.parametrize("schema", ["v1", "v2"])
def test_model_catalogue(fake, px, schema):
    fake.models_schema = schema
    catalogue = px.catalogue()
    assert catalogue.schema == schema
    ids = {m.id for m in catalogue.models}
    assert {"claude48opus", "claude48opusthinking"} <= ids
    opus = catalogue.get("claude48opus")
    assert opus.reasoning_variant == "claude48opusthinking" and opus.provider
    assert catalogue.default_models["research"] == "pplx_alpha"


def test_model_catalogue_failure_raises(fake, px):
    fake.fault_for("/rest/models/config", Fault("server_error", status=500, times=5))
    with pytest.raises(errors.UpstreamServerError):
        px.catalogue()


def test_rate_limit_status(fake, px):
    status = px.rate_limits()
    assert status.modes and any(q.available for q in status.modes.values())
    fake.session_valid = False
    assert not any(q.available for q in px.rate_limits().modes.values())


def test_missing_token_is_a_configuration_error(fake):
    with PerplexityClient(None, base_url=fake.url) as c:
        with pytest.raises(errors.ConfigurationError, match="PERPLEXITY_SESSION_TOKEN"):
            c.ask("q")
        assert c.session().valid is False
    assert fake.requests == []


# ---- secrets ---------------------------------------------------------------------------------


def test_the_cookie_never_appears_in_logs_messages_or_reprs(fake, px, caplog):
    caplog.set_level(logging.DEBUG)
    fake.enqueue(Fault("auth"), Fault("rate_limit", retry_after=0.01), Reply(answer=ANSWER))
    seen = [repr(px), repr(px.cookie)]
    with pytest.raises(errors.AuthenticationError) as info:
        px.ask("q")
    seen += [str(info.value), repr(info.value), info.value.body_excerpt]
    result = px.ask_complete("q")
    seen += [repr(result), repr(result.thread)]
    seen += [r.getMessage() for r in caplog.records]
    blob = "\n".join(seen)
    assert TOKEN not in blob
    assert result.thread.read_write_token not in blob


def test_connections_are_reused_across_asks(fake, px):
    """Reading each body to its end returns the connection to the pool (no new TCP/TLS per ask)."""
    from perplexity.types import Completed

    px.ask_complete("one")
    with px.ask("two") as stream:
        next(e for e in stream if isinstance(e, Completed))  # a consumer that stops at Completed
    px.ask_complete("three")
    pools = px.transport.adapter.poolmanager.pools
    (pool,) = (pools[key] for key in pools.keys())  # one pool: the fake's host
    assert pool.num_requests == 3 and pool.num_connections == 1


# ---- idle ticks: one greenlet reads the stream and still acts during silences ----------------------


@pytest.fixture(params=["requests", "curl"])
def ticking_client(request: pytest.FixtureRequest, fake: FakePerplexity) -> Iterator[PerplexityClient]:
    """A client on each transport (both can time a wait and carry on): requests (urllib3) and curl_cffi."""
    with PerplexityClient(
        TOKEN,
        base_url=fake.url,
        impersonate="chrome" if request.param == "curl" else "off",
        connect_timeout=2.0,
        read_timeout=2.0,
        max_retries=2,
        backoff=0.01,
    ) as c:
        assert c.transport.name.startswith("curl_cffi" if request.param == "curl" else "requests")
        yield c


def test_ticks_report_silence_even_when_the_upstream_sends_its_own_pings(fake, ticking_client):
    fake.enqueue(Reply(answer="late answer", first_byte_delay=1.0, heartbeat_every=0.1))
    with ticking_client.ask("q") as stream:
        assert stream.supports_idle
        items = list(stream.ticks(0.25))
    ticks_before_answer = 0
    for item in items:
        if item is not None:
            break
        ticks_before_answer += 1
    assert 2 <= ticks_before_answer <= 5  # about 1.0 / 0.25; the fake's 0.1 s pings did not reset it
    events = [e for batch in items if batch for e in batch]
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == "late answer"


def test_ticks_keep_the_read_timeout(fake, ticking_client):
    """Ticks come every `idle` s, and the read timeout (2 s here) still ends a silent stream."""
    fake.enqueue(Reply(answer="never", first_byte_delay=30))
    with ticking_client.ask("q") as stream:
        ticks = 0
        with pytest.raises(errors.StreamTruncatedError, match="stopped sending"):
            for item in stream.ticks(0.3):
                assert item is None
                ticks += 1
    assert 5 <= ticks <= 7


def test_a_ticking_stream_closed_early_releases_its_connection(fake, ticking_client):
    """Closing mid-stream while reading with ticks ends the upstream stream at once (no reader left behind)."""
    fake.enqueue(Reply(answer="a long answer " * 50, chunk_size=5, frame_delay=0.05))
    with ticking_client.ask("q") as stream:
        for item in stream.ticks(0.2):
            if item:
                break
    assert fake.wait_until(lambda: fake.open_streams == 0, timeout=2)
    assert fake.streams_closed_by_client == 1
    ticking_client.ask_complete("again")  # the client (and its pool) still works


def test_ticks_keep_their_pace_when_upstream_pings_match_the_interval(fake, ticking_client):
    """Ticks count from the last tick, not from the last byte: pings every `idle` s do not halve their rate."""
    fake.enqueue(Reply(answer="late", first_byte_delay=1.5, heartbeat_every=0.3))
    with ticking_client.ask("q") as stream:
        items = list(stream.ticks(0.3))
    ticks = next(i for i, item in enumerate(items) if item is not None)
    assert ticks >= 4  # about 1.5 / 0.3 = 5; ticks every other ping would give 2 or 3


def test_the_production_path_curl_over_tls_and_http2():
    """curl_cffi impersonating Chrome against a TLS + HTTP/2 fake, trusting its CA through `ca_bundle`."""
    with (
        FakePerplexity(session_token=TOKEN, tls=True, http2=True) as fake,
        PerplexityClient(
            TOKEN, base_url=fake.url, impersonate="chrome", ca_bundle=fake.ca_path, connect_timeout=2, read_timeout=2
        ) as client,
    ):
        assert client.transport.name.startswith("curl_cffi")
        for _ in range(2):
            fake.enqueue(Reply(answer=ANSWER, chunk_size=5))
            with client.ask("q") as stream:
                assert collect(stream)[1] == ANSWER
        fake.enqueue(Reply(answer="late", first_byte_delay=0.6, heartbeat_every=0.1))
        with client.ask("q") as stream:
            items = list(stream.ticks(0.2))
        assert 2 <= sum(item is None for item in items) <= 4
        assert {request.http_version for request in fake.requests} == {"2"}
