"""Shared-state mode: conversations in a real Redis on 127.0.0.1:6379, across gunicorn workers."""

from __future__ import annotations

import secrets
import time

import anthropic
import openai
import pytest

from api.stores import Conversation
from api.stores.redis_store import RedisConversationStore, redis_client
from perplexity.types import ThreadIds

from .conftest import REDIS_URL, free_port


@pytest.fixture
def store(redis_up):
    prefix = f"pplx-test-{secrets.token_hex(4)}:"
    client = redis_client(REDIS_URL)
    yield RedisConversationStore(client, 60, prefix=prefix)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


def conversation(cid, caller, key="k1", updated=None):
    now = updated or time.time()
    return Conversation(cid, caller, ThreadIds("b1", "c1", "rw", "s"), "perplexity-auto", now, now, 1, "t", (key,))


def test_redis_store_round_trip_and_caller_scope(store):
    store.save(conversation("conv_a", "alice"))
    assert store.get("alice", "conv_a").thread.read_write_token == "rw"
    assert store.get("bob", "conv_a") is None
    assert store.find("alice", "k1").id == "conv_a" and store.find("bob", "k1") is None
    with pytest.raises(PermissionError):
        store.save(conversation("conv_a", "bob"))
    store.save(conversation("conv_b", "alice", "k2", updated=time.time() + 1))
    assert [c.id for c in store.list("alice")] == ["conv_b", "conv_a"] and store.list("bob") == []
    assert store.count() == 2
    assert 0 < store.redis.ttl(store.prefix + "conv:conv_a") <= 60  # expires with CONVERSATION_TIMEOUT
    assert store.delete("alice", "conv_a") and not store.delete("alice", "conv_a")
    assert store.find("alice", "k1") is None


def test_a_dead_redis_degrades_to_not_found():
    dead = RedisConversationStore(redis_client(f"redis://127.0.0.1:{free_port()}/0"), 60)
    dead.save(conversation("conv_x", "alice"))  # logged, not raised
    assert dead.get("alice", "conv_x") is None and dead.list("alice") == [] and dead.count() == 0
    dead.redis.close()


def test_conversations_continue_across_workers(fake, live_server_factory, redis_up):
    key = "ck-" + secrets.token_hex(6)
    server = live_server_factory(WEB_CONCURRENCY="2", CONVERSATION_STORE_URI=REDIS_URL, API_KEYS=key)
    messages = [{"role": "user", "content": "Turn 1?"}]
    for turn in range(2, 8):  # a fresh connection per turn, so both workers take turns
        with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as client:
            answer = client.chat.completions.create(model="perplexity-auto", messages=messages)
        messages += [{"role": "assistant", "content": answer.choices[0].message.content}]
        messages += [{"role": "user", "content": f"Turn {turn}?"}]
    sources = [a.json["params"]["query_source"] for a in fake.asks]
    assert sources == ["home"] + ["followup"] * 5
    assert len({a.thread for a in fake.asks}) == 1


def test_responses_chain_across_workers(fake, live_server_factory, redis_up):
    key = "rk-" + secrets.token_hex(6)
    server = live_server_factory(WEB_CONCURRENCY="2", CONVERSATION_STORE_URI=REDIS_URL, API_KEYS=key)
    previous = None
    for turn in range(1, 6):  # fresh connections: the chain hops between workers
        with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as client:
            response = client.responses.create(
                model="perplexity-auto", input=f"Turn {turn}?", previous_response_id=previous
            )
            assert client.responses.retrieve(response.id).id == response.id
        previous = response.id
    assert [a.json["params"]["query_source"] for a in fake.asks] == ["home"] + ["followup"] * 4
    assert len({a.thread for a in fake.asks}) == 1


def test_a_messages_session_continues_across_workers(fake, live_server_factory, redis_up):
    """Anthropic clients resend the history each turn; with Redis any worker continues the thread."""
    key = "ak-" + secrets.token_hex(6)
    server = live_server_factory(WEB_CONCURRENCY="2", CONVERSATION_STORE_URI=REDIS_URL, API_KEYS=key)
    messages: list[dict] = [{"role": "user", "content": "Turn 1?"}]
    for turn in range(2, 7):  # a fresh connection per turn, so both workers take turns
        with anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0) as client:
            message = client.messages.create(model="sonnet", max_tokens=1024, messages=messages)
        messages += [
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]}
        ]
        messages += [{"role": "user", "content": f"Turn {turn}?"}]
    assert [a.json["params"]["query_source"] for a in fake.asks] == ["home"] + ["followup"] * 4
    assert len({a.thread for a in fake.asks}) == 1


def test_redis_response_store_scope(redis_up):
    from api.stores import StoredResponse
    from api.stores.redis_store import RedisResponseStore

    client = redis_client(REDIS_URL)
    store = RedisResponseStore(client, 60, prefix=f"pplx-test-{secrets.token_hex(4)}:")
    store.save(StoredResponse("resp_1", "alice", time.time(), "conv_1", {"id": "resp_1"}, []))
    assert store.get("alice", "resp_1").conversation_id == "conv_1" and store.get("bob", "resp_1") is None
    with pytest.raises(PermissionError):
        store.save(StoredResponse("resp_1", "bob", time.time(), "conv_2", {"id": "resp_1"}, []))
    assert store.count() == 1 and not store.delete("bob", "resp_1") and store.delete("alice", "resp_1")
    client.close()
