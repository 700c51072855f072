"""Background responses (`background: true`): poll, cancel and resume the stream, on live gunicorn with the fake."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import openai
import pytest
import redis

from api.stores.redis_store import redis_client
from perplexity.testing import Reply

ANSWER = "Paris is the capital of France. It has about two million people and many museums."
SLOW = " ".join(f"word{n}" for n in range(200))
REDIS_URL = "redis://127.0.0.1:6379/0"
FINISHED = ("completed", "incomplete", "failed", "cancelled")


@pytest.fixture(scope="module")
def server(live_server_factory):
    return live_server_factory(WEB_CONCURRENCY="1")


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as sdk:
        yield sdk


def wait_finished(client, response_id, *, user_query=None):
    for _ in range(400):  # bounded: a job that never finishes fails the test
        response = client.responses.retrieve(response_id, extra_query=user_query)
        if response.status in FINISHED:
            return response
        client.with_options(timeout=5).models.list()  # a round trip between polls, no sleep needed
    raise AssertionError(f"{response_id} still {response.status}")


def test_background_is_queued_then_completed_with_the_whole_output(fake, client):
    fake.enqueue(Reply(answer=ANSWER, chunk_size=8))
    created = client.responses.create(model="perplexity-auto", input="Capital of France?", background=True)
    assert created.status == "queued" and created.background is True and created.output == []
    done = wait_finished(client, created.id)
    assert done.status == "completed" and done.background is True
    assert done.output_text == ANSWER
    with pytest.raises(openai.BadRequestError):  # a finished job cannot be cancelled
        client.responses.cancel(created.id)


def test_background_needs_store(fake, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="perplexity-auto", input="hi", background=True, store=False)
    assert info.value.body["param"] == "store"


def test_a_plain_response_cannot_be_cancelled_or_streamed_again(fake, client):
    fake.enqueue(Reply(answer=ANSWER))
    plain = client.responses.create(model="perplexity-auto", input="hi")
    assert plain.background is False
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)
    with pytest.raises(openai.BadRequestError):
        list(client.responses.retrieve(plain.id, stream=True))


def test_cancel_stops_a_running_job(fake, client):
    fake.enqueue(Reply(answer=SLOW, chunk_size=4, frame_delay=0.05))
    created = client.responses.create(model="perplexity-auto", input="Talk slowly", background=True)
    for _ in range(400):  # until the job is reading the answer
        if client.responses.retrieve(created.id).status == "in_progress":
            break
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"  # again: the same answer
    final = wait_finished(client, created.id)
    assert final.status == "cancelled"  # the job saw the cancel and did not overwrite it


def _resume(client, created_stream):
    seen, events = [], iter(created_stream)
    for event in events:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) > 8:
            break
    created_stream.close()  # the connection drops mid-answer; the job carries on
    response_id = seen[0].response.id
    last = seen[-1].sequence_number
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
    numbers = [event.sequence_number for event in seen + rest]
    assert numbers == list(range(len(numbers)))  # every event exactly once, in order
    assert rest[-1].type == "response.completed"
    text = "".join(event.delta for event in seen + rest if event.type == "response.output_text.delta")
    assert text == SLOW == rest[-1].response.output_text
    # From the start, a late reader gets all of them again.
    again = list(client.responses.retrieve(response_id, stream=True))
    assert [event.sequence_number for event in again] == numbers
    return response_id


def test_a_background_stream_resumes_after_a_disconnect(fake, client):
    fake.enqueue(Reply(answer=SLOW, chunk_size=6, frame_delay=0.01))
    stream = client.responses.create(model="perplexity-auto", input="Talk", background=True, stream=True)
    response_id = _resume(client, stream)
    assert client.responses.retrieve(response_id).status == "completed"


@pytest.fixture
def redis_server(live_server_factory):
    try:
        redis_client(REDIS_URL).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    key = "sk-bg-" + secrets.token_hex(6)
    server = live_server_factory(WEB_CONCURRENCY="2", CONVERSATION_STORE_URI=REDIS_URL, API_KEYS=key)
    return server, key


def test_with_redis_any_worker_answers_polls_and_streams(fake, redis_server):
    server, key = redis_server
    fake.enqueue(Reply(answer=ANSWER, chunk_size=8))
    fake.enqueue(Reply(answer=SLOW, chunk_size=6, frame_delay=0.01))
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20) as first:
        created = first.responses.create(model="perplexity-auto", input="Capital?", background=True)
    for _ in range(20):  # a fresh connection per poll, so both workers answer some
        with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20) as poll:
            done = wait_finished(poll, created.id)
            assert done.status == "completed" and done.output_text == ANSWER
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20) as streamer:
        stream = streamer.responses.create(model="perplexity-auto", input="Talk", background=True, stream=True)
        with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20) as resumer:
            _resume(resumer, stream)


def test_running_jobs_are_capped_per_caller(fake, live_server_factory):
    server = live_server_factory(WEB_CONCURRENCY="1", BACKGROUND_MAX_JOBS_PER_CALLER="1")
    fake.enqueue(Reply(answer=SLOW, chunk_size=4, frame_delay=0.05))
    fake.enqueue(Reply(answer=ANSWER))
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as client:
        first = client.responses.create(model="perplexity-auto", input="Talk slowly", background=True)
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="perplexity-auto", input="And me?", background=True)
        client.responses.cancel(first.id)
        for _ in range(600):  # the slot comes back once the runner saw the cancel
            try:
                second = client.responses.create(model="perplexity-auto", input="And me?", background=True)
                break
            except openai.RateLimitError:
                time.sleep(0.05)
        else:
            raise AssertionError("the cancelled job never gave its slot back")
        assert wait_finished(client, second.id).output_text == ANSWER


def test_running_jobs_are_capped_in_total(fake, live_server_factory):
    server = live_server_factory(WEB_CONCURRENCY="1", API_KEYS="bg-a,bg-b", BACKGROUND_MAX_JOBS="1")
    fake.enqueue(Reply(answer=SLOW, chunk_size=4, frame_delay=0.05))
    with (
        openai.OpenAI(base_url=server.url + "/v1", api_key="bg-a", max_retries=0, timeout=20) as a,
        openai.OpenAI(base_url=server.url + "/v1", api_key="bg-b", max_retries=0, timeout=20) as b,
    ):
        first = a.responses.create(model="perplexity-auto", input="Talk slowly", background=True)
        with pytest.raises(openai.RateLimitError) as info:  # another caller, but the server-wide cap is full
            b.responses.create(model="perplexity-auto", input="And me?", background=True)
        assert info.value.code == "rate_limit_exceeded"
        a.responses.cancel(first.id)
        assert wait_finished(a, first.id).status == "cancelled"


def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_job_whose_worker_died_is_marked_failed(fake, live_server_factory, workers):
    try:
        redis_client(REDIS_URL).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    key = "sk-bg-" + secrets.token_hex(6)
    server = live_server_factory(
        WEB_CONCURRENCY=workers, CONVERSATION_STORE_URI=REDIS_URL, API_KEYS=key, BACKGROUND_LEASE_SECONDS="1"
    )
    fake.enqueue(Reply(answer=SLOW * 4, chunk_size=4, frame_delay=0.05))
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20) as client:
        created = client.responses.create(model="perplexity-auto", input="Talk slowly", background=True)
        for _ in range(400):
            if client.responses.retrieve(created.id).status == "in_progress":
                break
        # Every worker of this test's server dies, so the one running the job does too, mid-job.
        for pid in _workers(server.process.pid):
            os.kill(pid, signal.SIGKILL)
        for _ in range(600):  # gunicorn starts a new worker; its polls find the lease lapsed
            try:
                response = client.responses.retrieve(created.id)
            except openai.APIConnectionError:
                response = None
            if response is not None and response.status == "failed":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the orphaned job was never marked failed")
        assert response.error.code == "server_error"
        assert response.error.message == "the server running it stopped"
        with pytest.raises(openai.BadRequestError):
            client.responses.cancel(created.id)


def test_events_past_the_cap_are_not_kept_but_the_final_one_is(fake, live_server_factory):
    server = live_server_factory(WEB_CONCURRENCY="1", BACKGROUND_MAX_EVENTS="5")
    fake.enqueue(Reply(answer=ANSWER, chunk_size=4))
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as client:
        created = client.responses.create(model="perplexity-auto", input="Capital?", background=True)
        done = wait_finished(client, created.id)
        events = list(client.responses.retrieve(created.id, stream=True))
    assert [event.sequence_number for event in events[:5]] == [0, 1, 2, 3, 4]
    assert len(events) == 6 and events[-1].type == "response.completed"
    assert events[-1].response.output_text == done.output_text == ANSWER


def test_deleting_a_running_job_stops_it_for_good(fake, client):
    fake.enqueue(Reply(answer=SLOW, chunk_size=4, frame_delay=0.05))
    created = client.responses.create(model="perplexity-auto", input="Talk slowly", background=True)
    client.responses.delete(created.id)
    for _ in range(100):  # its runner must not store it again
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(created.id)
