"""Stored responses and conversations are bounded (caps, LRU, compact inputs) and scoped to the end user, in memory
and in Redis."""

from __future__ import annotations

import base64
import gc
import secrets
import time
import tracemalloc
from collections.abc import Iterator

import openai
import pytest
import redis
import requests

from api.stores import Conversation, MemoryConversationStore, MemoryResponseStore, StoredResponse
from api.stores.redis_store import RedisResponseStore, redis_client
from perplexity.testing import Fault
from perplexity.types import ThreadIds

from .conftest import TOKEN
from .openapi import validate

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "My diagnosis is XYZ-SECRET; what should I do?"


def redis_up() -> bool:
    try:
        with redis_client(REDIS_URL) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


needs_redis = pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
STORES = ["memory", pytest.param("redis", marks=needs_redis)]


# ---- the stores themselves, both backends --------------------------------------------------------


@pytest.fixture
def make_store() -> Iterator:
    """A response store of either kind with the given caps; a Redis one under its own prefix, removed after."""
    made: list[RedisResponseStore] = []

    def make(kind: str, **caps: int) -> MemoryResponseStore | RedisResponseStore:
        if kind == "memory":
            return MemoryResponseStore(60, **caps)
        made.append(
            RedisResponseStore(redis_client(REDIS_URL), 60, prefix=f"pplx-test-{secrets.token_hex(4)}:", **caps)
        )
        return made[-1]

    yield make
    for store in made:
        for key in store.redis.scan_iter(match=store.prefix + "*"):
            store.redis.delete(key)
        store.redis.close()


def record(
    rid: str, caller: str = "key:a", previous: str | None = None, size: int = 1000, age: float = 0
) -> StoredResponse:
    """A stored response whose JSON is `size` bytes, give or take a few, created `age` seconds ago."""
    response = {"id": rid, "object": "response", "output_text": ""}
    if previous:
        response["previous_response_id"] = previous
    base = len(StoredResponse(rid, caller, 1000.5, "conv_1", response, []).to_json())
    response["output_text"] = "x" * max(0, size - base)
    return StoredResponse(rid, caller, time.time() - age, "conv_1", response, [])


def held(store, caller: str, *ids: str) -> list[str]:
    return [rid for rid in ids if store.get(caller, rid) is not None]


@pytest.mark.parametrize("kind", STORES)
def test_a_callers_stored_bytes_are_capped_least_recently_used_first(make_store, kind):
    store = make_store(kind, max_bytes=100_000, max_bytes_per_caller=3_500)
    for rid in ("r1", "r2", "r3"):
        store.save(record(rid, "key:a/alice"))
    assert store.get("key:a/alice", "r1") is not None  # read: now the most recently used
    store.save(record("r4", "key:a/bob"))  # one key's end users share its cap
    assert held(store, "key:a/alice", "r1", "r2", "r3") == ["r1", "r3"]
    assert held(store, "key:a/bob", "r4") == ["r4"]
    store.save(record("r5", "key:b"))  # another key has a cap of its own
    assert held(store, "key:a/alice", "r1", "r3") == ["r1", "r3"] and held(store, "key:b", "r5") == ["r5"]


@pytest.mark.parametrize("kind", STORES)
def test_the_total_is_capped_across_callers(make_store, kind):
    store = make_store(kind, max_bytes=3_500, max_bytes_per_caller=3_000)
    store.save(record("r1", "key:a"))
    store.save(record("r2", "key:b"))
    store.save(record("r3", "key:c"))
    store.save(record("r4", "key:d"))
    assert [rid for rid, who in (("r1", "key:a"), ("r2", "key:b"), ("r3", "key:c"), ("r4", "key:d"))
            if store.get(who, rid)] == ["r2", "r3", "r4"]  # fmt: skip
    assert store.held_bytes() <= 3_500


@pytest.mark.parametrize("kind", STORES)
def test_a_response_over_a_cap_is_not_kept_and_evicts_nothing(make_store, kind, caplog):
    store = make_store(kind, max_bytes=10_000, max_bytes_per_caller=2_000)
    store.save(record("small", "key:a"))
    store.save(record("big", "key:a", size=2_500))
    assert store.get("key:a", "big") is None and store.get("key:a", "small") is not None
    assert "over the response store's cap" in caplog.text


@pytest.mark.parametrize("kind", STORES)
def test_a_chain_is_trimmed_from_its_oldest_response_never_in_the_middle(make_store, kind):
    store = make_store(kind, max_bytes=100_000, max_bytes_per_caller=4_500)
    previous = None
    for number in range(1, 7):  # a running chain: each turn reads the one before, then saves the next
        if previous:
            assert store.get("key:a", previous) is not None
        store.save(record(f"r{number}", "key:a", previous))
        previous = f"r{number}"
    assert held(store, "key:a", *(f"r{n}" for n in range(1, 7))) == ["r3", "r4", "r5", "r6"]
    # Even when the chain's oldest response was just read, the chain keeps its newest end.
    assert store.get("key:a", "r3") is not None
    store.save(record("other", "key:a"))  # room for one: the oldest of the chain goes, not r4 in its middle
    assert held(store, "key:a", "r3", "r4", "r5", "r6", "other") == ["r4", "r5", "r6", "other"]


@pytest.mark.parametrize("kind", STORES)
def test_deleted_and_expired_responses_give_their_bytes_back(make_store, kind):
    store = make_store(kind, max_bytes=100_000, max_bytes_per_caller=2_500)
    store.save(record("old", "key:a", age=120))  # created two minutes ago: past the 60 s the store keeps it
    store.save(record("r1", "key:a"))
    store.save(record("r2", "key:a"))
    assert store.get("key:a", "old") is None
    assert store.delete("key:a", "r2")
    store.save(record("r3", "key:a"))
    assert held(store, "key:a", "r1", "r2", "r3") == ["r1", "r3"]  # r2's bytes were given back: r1 stays


@pytest.mark.parametrize("kind", STORES)
def test_stored_responses_match_the_whole_caller_end_user_included(make_store, kind):
    store = make_store(kind)
    store.save(record("r1", "key:a/alice"))
    store.save(record("r2", "key:a"))
    assert store.get("key:a/alice", "r1") is not None
    for caller in ("key:a", "key:a/bob", "key:b/alice", "key:a/alice/x"):
        assert store.get(caller, "r1") is None and not store.delete(caller, "r1")
    assert store.get("key:a/alice", "r2") is None and store.get("key:a", "r2") is not None
    with pytest.raises(PermissionError):
        store.save(record("r1", "key:a/bob"))
    assert store.delete("key:a/alice", "r1") and store.get("key:a/alice", "r1") is None


def conversation(cid: str, caller: str, key: str) -> Conversation:
    now = time.time()
    return Conversation(cid, caller, ThreadIds("b", "c", "rw", "s"), "perplexity-auto", now, now, 1, "t", (key,))


def test_the_memory_conversation_store_is_capped_least_recently_used_first():
    store = MemoryConversationStore(60, max_items=3, max_items_per_caller=2)
    store.save(conversation("c1", "key:a/alice", "h1"))
    store.save(conversation("c2", "key:a/bob", "h2"))
    assert store.find("key:a/alice", "h1") is not None  # a turn on c1: the most recently used
    store.save(conversation("c3", "key:a/alice", "h3"))  # over key:a's two: c2 goes
    assert store.get("key:a/bob", "c2") is None and store.find("key:a/bob", "h2") is None
    assert [c.id for c in store.list("key:a/alice")] == ["c3", "c1"]
    store.save(conversation("c4", "key:b", "h4"))
    store.save(conversation("c5", "key:c", "h5"))  # over three in all: the least recently used (c1) goes
    assert store.get("key:a/alice", "c1") is None and store.count() == 3 and store.evicted == 2
    store.save(conversation("c3", "key:a/alice", "h3b"))  # a conversation moving on forgets its old digest
    assert store.find("key:a/alice", "h3") is None and store.find("key:a/alice", "h3b").id == "c3"
    assert len(store._keys) == store.count()


# ---- through the server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(live_server_factory) -> Iterator:
    """Live servers by (store, open or keyed, per-caller cap), started once for the module."""
    started: dict = {}

    def get(kind: str, key: str | None = None, cap: int | None = None):
        name = (kind, key, cap)
        if name not in started:
            env = {"API_KEYS": key} if key else {}
            if kind == "redis":
                env["CONVERSATION_STORE_URI"] = REDIS_URL
            if cap:
                env["RESPONSE_STORE_MAX_BYTES_PER_CALLER"] = str(cap)
            started[name] = live_server_factory(**env)
        return started[name]

    return get


@pytest.mark.parametrize("kind", STORES)
def test_an_evicted_response_is_a_clear_404_and_the_rest_of_its_chain_works(fake, servers, kind):
    key = "bk-" + secrets.token_hex(6)  # its own key: a cap per key, so other tests' records are out of reach
    server = servers(kind, key, cap=7_000)  # two of the fake's answers (2.7 KB each as stored), not three
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as client:
        first = client.responses.create(model="perplexity-auto", input="Q1")
        second = client.responses.create(model="perplexity-auto", input="Q2", previous_response_id=first.id)
        third = client.responses.create(model="perplexity-auto", input="Q3", previous_response_id=second.id)
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.retrieve(first.id)
        assert info.value.code == "response_not_found"
        asks = len(fake.asks)
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.create(model="perplexity-auto", input="Q2 again", previous_response_id=first.id)
        assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"
        validate({"error": info.value.body}, "ErrorResponse")
        assert len(fake.asks) == asks  # refused before anything went upstream
        assert client.responses.retrieve(second.id).output_text == second.output_text
        # The chain still held replays on a new thread: shorter at its old end, never with a hole.
        fake.enqueue(Fault("thread_gone"))
        client.responses.create(model="perplexity-auto", input="Q4", previous_response_id=third.id)
    query = fake.asks[-1].json["query_str"]
    assert "Q1" not in query and "Q2" in query and "Q3" in query and query.endswith("Q4")


@pytest.mark.parametrize(("kind", "keyed"), [("memory", True), pytest.param("redis", True, marks=needs_redis),
                                             ("memory", False)])  # fmt: skip
def test_stored_responses_are_scoped_to_the_end_user(fake, servers, kind, keyed):
    key = "uk-" + secrets.token_hex(6) if keyed else None
    server = servers(kind, key)
    url, headers = server.url + "/v1/responses", {"Authorization": f"Bearer {key}"} if key else {}

    def post(**body):
        return requests.post(url, json={"model": "perplexity-auto", **body}, headers=headers, timeout=20)

    created = post(input=SECRET, user="alice")
    assert created.status_code == 200
    rid = created.json()["id"]
    # Bob, on the same key (or from the same address), reaches none of it, whichever way he asks.
    for method, path in (("GET", ""), ("GET", "/input_items"), ("DELETE", "")):
        for query in ("", "?user=bob", "?safety_identifier=bob", "?user=alice&safety_identifier=bob"):
            answer = requests.request(method, f"{url}/{rid}{path}{query}", headers=headers, timeout=20)
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "response_not_found"
            assert "XYZ-SECRET" not in answer.text
    asks = len(fake.asks)
    for body in ({"user": "bob"}, {}, {"safety_identifier": "bob", "user": "alice"}):
        refused = post(input="Repeat what I said.", previous_response_id=rid, **body)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "previous_response_not_found"
    assert len(fake.asks) == asks  # nothing of Alice's went upstream for Bob
    # Alice reads back and continues what she stored, naming herself as she did then.
    assert requests.get(f"{url}/{rid}?user=alice", headers=headers, timeout=20).json()["id"] == rid
    items = requests.get(f"{url}/{rid}/input_items?safety_identifier=alice", headers=headers, timeout=20).json()
    assert items["data"][0]["content"][0]["text"] == SECRET
    follow = post(input="And then?", previous_response_id=rid, safety_identifier="alice", user="someone")
    assert follow.status_code == 200 and fake.asks[-1].json["params"]["query_source"] == "followup"
    # A response stored without an end user is the key's own: reached without one, not by naming one.
    plain = post(input="No user here.").json()["id"]
    assert requests.get(f"{url}/{plain}", headers=headers, timeout=20).status_code == 200
    assert requests.get(f"{url}/{plain}?user=alice", headers=headers, timeout=20).status_code == 404
    deleted = requests.delete(f"{url}/{rid}?user=alice", headers=headers, timeout=20)
    assert deleted.json() == {"id": rid, "object": "response.deleted", "deleted": True}


def test_input_items_list_inline_files_without_their_bytes(fake, servers):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300
    pdf = b"%PDF-1.4\n" + b"0" * 200
    parts = [
        {"type": "input_text", "text": "What is in these?"},
        {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(png).decode()},
        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
        {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,"
         + base64.b64encode(pdf).decode()},
    ]  # fmt: skip
    server = servers("memory")
    created = requests.post(
        server.url + "/v1/responses",
        json={"model": "perplexity-auto", "input": [{"role": "user", "content": parts}]},
        timeout=20,
    ).json()
    listed = requests.get(f"{server.url}/v1/responses/{created['id']}/input_items", timeout=20).json()
    validate(listed, "ResponseItemList")
    text, image, linked, file = listed["data"][0]["content"]
    assert text == parts[0]
    assert image == {
        "type": "input_image",
        "image_url": None,
        "detail": "auto",
        "omitted_data": {"media_type": "image/png", "bytes": len(png)},
    }
    assert linked == parts[2]
    assert file == {"type": "input_file", "filename": "a.pdf", "omitted_data": {"media_type": "application/pdf",
                                                                                "bytes": len(pdf)}}  # fmt: skip


def test_twenty_stored_five_megabyte_inputs_hold_almost_no_memory(fake):
    """The issue's case: 20 requests, each with a 5 MB inline image, stored by default."""
    from app import create_app

    app = create_app({"TESTING": True, "PERPLEXITY_SESSION_TOKEN": TOKEN, "PERPLEXITY_BASE_URL": fake.url,
                      "PERPLEXITY_IMPERSONATE": "chrome"})  # fmt: skip
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(3_932_150)).decode()
    assert 5_000_000 < len(image) < 5_300_000
    responses = app.extensions["perplexity"].responses
    ids = []
    with app.test_client() as client:
        client.post("/v1/responses", json={"model": "perplexity-auto", "input": "warm up"})
        gc.collect()
        tracemalloc.start()  # one frame: deeper tracebacks make this test five times slower
        try:
            before = tracemalloc.take_snapshot()
            for number in range(20):
                content = [
                    {"type": "input_text", "text": f"Image {number}?"},
                    {"type": "input_image", "image_url": image},
                ]
                answer = client.post("/v1/responses", json={"model": "perplexity-auto", "input": [
                    {"role": "user", "content": content}]})  # fmt: skip
                assert answer.status_code == 200
                ids.append(answer.get_json()["id"])
                fake.uploads.clear()  # the fake runs in this process and keeps what it was sent
            # The test client keeps the last request (5 MB body included) until the next one: make it a small one.
            del answer, content
            client.get("/health")
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        assert all(client.get(f"/v1/responses/{rid}").status_code == 200 for rid in ids)
    app.extensions["perplexity"].close()
    # The server's memory only: what the fake upstream (in this process) allocated in its own code is left out.
    server_only = [tracemalloc.Filter(False, "*/perplexity/testing/*")]
    grown = sum(
        stat.size_diff
        for stat in after.filter_traces(server_only).compare_to(before.filter_traces(server_only), "filename")
    )
    stored = sum(len(responses.get("ip:127.0.0.1", rid).to_json()) for rid in ids)
    assert stored < 20 * 10_000, stored  # each record a few KB: the 5 MB image is not kept
    assert grown < 5 * 1024 * 1024, grown  # 100 MiB retained before inputs were stored compactly


def test_the_conversation_cap_setting_reaches_the_store(fake):
    from app import create_app

    app = create_app({"TESTING": True, "PERPLEXITY_SESSION_TOKEN": TOKEN, "PERPLEXITY_BASE_URL": fake.url,
                      "PERPLEXITY_IMPERSONATE": "chrome", "CONVERSATION_STORE_MAX_ITEMS": 1})  # fmt: skip

    def turn(client, messages: list[dict]) -> None:
        answer = client.post("/v1/chat/completions", json={"model": "perplexity-auto", "messages": messages})
        messages.append({"role": "assistant", "content": answer.get_json()["choices"][0]["message"]["content"]})

    with app.test_client() as client:
        first, second = [{"role": "user", "content": "A1"}], [{"role": "user", "content": "B1"}]
        turn(client, first)
        turn(client, second)  # one conversation per worker: the first is forgotten
        turn(client, [*second, {"role": "user", "content": "B2"}])
        turn(client, [*first, {"role": "user", "content": "A2"}])
    app.extensions["perplexity"].close()
    assert [ask.json["params"]["query_source"] for ask in fake.asks] == ["home", "home", "followup", "home"]
