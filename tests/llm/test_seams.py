"""Where the four features built together meet: several Ollama servers (llm.servers) with embeddings, token budgets,
shared caps (Redis) and metadata-only consumers. Three fake Ollama servers on loopback, the gateway served over a
real socket; Redis in database 12, under a key prefix of each test's own."""

import asyncio
import json
import logging
import time

import httpx
import pytest

from llm import servers
from llm.models import Consumer, Generation, OllamaServer
from tests.conftest import cache_in_redis, wait_for
from tests.llm.test_servers import MODEL, chat, fakes, listed, poll_now, served_by  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = "redis://127.0.0.1:6379/12"
CANARY = "zebracanary7f3a9q"


@pytest.fixture
def redis_cache(settings):
    """The cache in Redis (database 12) under this test's own key prefix; its keys deleted afterwards."""
    with cache_in_redis(settings, REDIS_URL, "test-seams") as prefix:
        yield prefix


def redis_counts(prefix: str, part: str) -> dict:
    """The members of each sorted set under the prefix whose key contains `part` (leases, budget reservations)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    return {key.decode(): client.zcard(key) for key in client.scan_iter(f"{prefix}:*") if part in key.decode()}


def finished(count: int) -> list[Generation]:
    assert wait_for(lambda: Generation.objects.exclude(status="pending").count() >= count, 10)
    rows = list(Generation.objects.order_by("created_at"))
    assert len(rows) == count and all(row.status != "pending" for row in rows), [r.status for r in rows]
    return rows


def embed(gateway, texts, *, model=MODEL, key=None):
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False,
                      headers={"Authorization": f"Bearer {key or gateway.key}"}) as client:
        return client.post("/api/embed", json={"model": model, "input": texts})


def embedded_by(fake):
    return [r for r in fake.requests if r.path == "/api/embed"]


# -- several servers + embeddings -------------------------------------------------------------------------------------


def test_embeddings_go_to_the_server_that_has_the_model_and_fail_over_before_any_byte(listed, fakes):
    a, b, c = fakes
    a.models[:] = ["other:1b"]
    b.models[:] = ["nomic-embed-text", MODEL]
    c.models[:] = [MODEL]
    poll_now()
    assert wait_for(lambda: servers.pool().health_of("a").models == {"other:1b"}, 3)

    # A model only b has: b, recorded as the row's server.
    response = embed(listed, ["one", "two"], model="nomic-embed-text")
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == 2
    assert len(embedded_by(b)) == 1 and not embedded_by(a) and not embedded_by(c)
    row = finished(1)[0]
    assert row.kind == "embedding" and row.server == "b" and row.attempts == 1
    assert row.models_tried == [{"model": "nomic-embed-text", "server": "b", "outcome": "succeeded"}]

    # b and c have MODEL and are each busy (503) once: one, then the other, then the first again answers; the
    # row names each call and counts them all.
    for fake in (b, c):
        fake.fault("status", paths="/api/embed", status=503, message="server busy", times=1)
    response = embed(listed, ["three"])
    assert response.status_code == 200, response.text
    row = finished(2)[-1]
    assert [t["outcome"] for t in row.models_tried] == ["upstream_error", "upstream_error", "succeeded"]
    assert {t["server"] for t in row.models_tried[:2]} == {"b", "c"}
    assert row.server == row.models_tried[-1]["server"] == row.models_tried[0]["server"]
    assert row.attempts == 3 == len(embedded_by(b)) + len(embedded_by(c)) - 1

    # A model no server has: model_not_found, the row naming the servers asked.
    response = embed(listed, ["four"], model="nowhere:1b")
    assert response.status_code == 404
    row = finished(3)[-1]
    assert row.error_type == "model_not_found" and {t["server"] for t in row.models_tried} == {"a", "b", "c"}


# -- several servers: a slot is never kept -----------------------------------------------------------------------------


def only_a(fakes, **fields):
    OllamaServer.objects.filter(name__in=["b", "c"]).update(state="disabled")
    OllamaServer.objects.filter(name="a").update(**fields)
    servers.registry.refresh()
    return fakes[0]


def test_a_generation_ended_during_the_backoff_before_a_retry_gives_its_slot_back(listed, fakes, settings):
    """One server left: a 503 is retried on it after the backoff, holding its slot; the deadline (or the client
    leaving) during that pause must not keep the slot, or the server's one slot is gone for good."""
    a = only_a(fakes, slots=1)
    settings.OLLAMA_RETRY_BACKOFF = 5.0
    settings.GENERATION_DEADLINE = 1.0
    settings.UPSTREAM_QUEUE_TIMEOUT = 1.5
    a.fault("status", paths="/api/chat", status=503, message="server busy", times=1)
    response = chat(listed, "first")
    assert response.status_code == 504, response.text
    assert wait_for(lambda: not servers.pool().health_of("a").in_flight, 2), servers.pool().health_of("a").in_flight
    assert servers.pool().leases.held() == 0
    settings.GENERATION_DEADLINE = 30
    response = chat(listed, "second")
    assert response.status_code == 200, response.text
    assert served_by(a, "second")


# -- several servers + token budgets + shared caps ---------------------------------------------------------------------


@pytest.fixture
def budgeted(consumer):
    Consumer.objects.filter(pk=consumer.pk).update(tokens_per_day=100_000, max_concurrent=5)
    consumer.refresh_from_db()
    return consumer


def settled(prefix: str) -> None:
    """Nothing held in Redis any more: no budget reservation, no consumer lease, no server slot."""
    assert wait_for(lambda: not any(redis_counts(prefix, ":held").values()), 3), redis_counts(prefix, ":held")
    assert wait_for(lambda: not any(redis_counts(prefix, "consumer-slots").values()), 3), \
        redis_counts(prefix, "consumer-slots")
    assert wait_for(lambda: not any(redis_counts(prefix, ":llm:slots:").values()), 3), \
        redis_counts(prefix, ":llm:slots:")


def test_waiting_in_the_fair_queue_settles_the_budget_and_releases_the_lease_whatever_ends_it(
        listed, fakes, settings, budgeted, redis_cache):
    """a's one slot taken for 2 s: the next generation waits in the model's queue and times out (503
    upstream_busy), one more is past its consumer's queue bound (429); each row is completed once, counts nothing
    against the budget, and gives back its reservation and its consumer lease. The slots are leases under the
    cache's key prefix, like the consumers' caps."""
    a = only_a(fakes, slots=1)
    settings.UPSTREAM_QUEUE_TIMEOUT = 1.0
    settings.UPSTREAM_QUEUE_PER_CONSUMER = 1
    a.fault("slow", paths="/api/chat", times=1, delay=2.0)

    async def run():
        async with listed.async_client() as client:
            body = {"model": MODEL, "stream": False}
            first = asyncio.create_task(client.post("/api/chat", json={
                **body, "messages": [{"role": "user", "content": "holds the slot"}]}))
            assert await asyncio.to_thread(wait_for, lambda: served_by(a, "holds the slot"), 3)
            # The slot is a lease under the cache's key prefix, as the consumer's is.
            assert sum(redis_counts(redis_cache, ":llm:slots:").values()) == 1
            waiting = asyncio.create_task(client.post("/api/chat", json={
                **body, "messages": [{"role": "user", "content": "waits"}]}))
            while servers.pool().queued_everywhere() < 1:
                await asyncio.sleep(0.01)
            over = await client.post("/api/chat", json={**body, "messages": [{"role": "user", "content": "over"}]})
            return await first, await waiting, over

    first, waiting, over = asyncio.run(run())
    assert first.status_code == 200, first.text
    assert waiting.status_code == 503 and "upstream_busy" in json.dumps(waiting.json()) or \
        waiting.json()["error"], waiting.text
    assert over.status_code == 429 and over.headers["Retry-After"] == "1"
    rows = finished(3)
    by_prompt = {row.prompt[-1]["content"] if row.prompt else "": row for row in rows}
    assert by_prompt["holds the slot"].status == "succeeded" and by_prompt["holds the slot"].budget_tokens > 0
    assert by_prompt["waits"].error_type == "upstream_busy" and by_prompt["waits"].budget_tokens == 0
    assert by_prompt["over"].error_type == "rate_limited" and by_prompt["over"].budget_tokens == 0
    # Neither reached a server: no call made, none tried.
    for refused in (by_prompt["waits"], by_prompt["over"]):
        assert refused.attempts == 0 and refused.models_tried == [] and refused.server == ""
    settled(redis_cache)
    assert servers.pool().queued_everywhere() == 0


def test_an_abandoned_stream_on_a_pooled_server_settles_its_reservation_and_lets_go_of_everything(
        listed, fakes, settings, budgeted, redis_cache):
    a = only_a(fakes, slots=1)
    a.chunks, a.chunk_delay = 40, 0.05

    async def run():
        async with listed.async_client() as client:
            async with client.stream("POST", "/api/chat", json={
                    "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "left early"}]}) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.strip():
                        return json.loads(line)

    first = asyncio.run(run())
    assert "message" in first
    row = finished(1)[0]
    assert row.status == "failed" and row.error_type == "client_disconnected" and row.server == "a"
    assert row.budget_tokens and row.budget_tokens > 0
    settled(redis_cache)
    assert wait_for(lambda: not servers.pool().health_of("a").in_flight, 2)
    # The slot is back: the next generation is served at once.
    assert chat(listed, "next").status_code == 200


# -- several servers + metadata-only consumers -------------------------------------------------------------------------


def test_a_pooled_servers_error_text_of_a_metadata_only_consumer_is_kept_nowhere(listed, fakes, audit_spool_dir,
                                                                                 admin_client, caplog):
    """Each server answers 500 with a canary in its error (Ollama quotes what it was sent): whole, streamed and
    embedded, through two servers each. The canary is in no row (error message, models_tried, server), no log
    line, no spooled outcome, no admin page."""
    from tests.llm.test_metadata_only import assert_kept_nowhere

    caplog.set_level(logging.DEBUG)
    Consumer.objects.update(metadata_only=True)
    a, b, c = fakes
    c.models[:] = ["other:1b"]
    poll_now()
    assert wait_for(lambda: servers.pool().health_of("c").models == {"other:1b"}, 3)
    for fake in (a, b):
        fake.fault("status", paths=["/api/chat", "/api/embed"], status=500,
                   message=f"llama runner process has terminated: {CANARY}")
    assert chat(listed, f"whole {CANARY}").status_code == 502
    streamed = chat(listed, f"streamed {CANARY}", stream=True)
    assert streamed.status_code == 502 and CANARY not in streamed.text
    assert embed(listed, [f"embedded {CANARY}"]).status_code == 502
    rows = finished(3)
    for row in rows:
        assert row.error_type == "upstream_error" and row.content_stored is False and not row.error_message
        assert {t["server"] for t in row.models_tried} == {"a", "b"}
    # Mid-stream, once the first byte is out: the error line of the server that streamed.
    for fake in (a, b):
        fake.clear_faults()
        fake.chunks = 6
        fake.fault("stream_error", paths="/api/chat", after=2, message=f"runner crashed: {CANARY}")
    mid = chat(listed, f"mid-stream {CANARY}", stream=True)
    assert mid.status_code == 200 and CANARY not in mid.text and "error" in mid.text.splitlines()[-1]
    row = finished(4)[-1]
    assert row.status == "failed" and row.server in ("a", "b") and not row.error_message
    assert_kept_nowhere(caplog, audit_spool_dir, admin_client)


def test_a_client_that_leaves_while_queued_for_a_slot_releases_its_lease_and_reservation(
        listed, fakes, settings, budgeted, redis_cache):
    a = only_a(fakes, slots=1)
    a.fault("slow", paths="/api/chat", times=1, delay=1.5)

    async def run():
        async with listed.async_client() as client:
            body = {"model": MODEL, "stream": True}
            first = asyncio.create_task(client.post("/api/chat", json={
                **body, "messages": [{"role": "user", "content": "holds the slot"}]}))
            assert await asyncio.to_thread(wait_for, lambda: served_by(a, "holds the slot"), 3)
            leaving = asyncio.create_task(client.post("/api/chat", json={
                **body, "messages": [{"role": "user", "content": "leaves"}]}))
            while servers.pool().queued_everywhere() < 1:
                await asyncio.sleep(0.01)
            assert sum(redis_counts(redis_cache, "consumer-slots").values()) == 2
            leaving.cancel()
            return await first

    assert asyncio.run(run()).status_code == 200
    rows = finished(2)
    left = next(row for row in rows if row.status == "failed")
    assert left.error_type == "client_disconnected" and left.budget_tokens == 0 and not served_by(a, "leaves")
    settled(redis_cache)
    assert servers.pool().queued_everywhere() == 0


# -- no server listed: OLLAMA_BASE_URL exactly as before ---------------------------------------------------------------


def test_with_no_server_listed_the_wait_is_upstream_max_in_flight_as_before(gateway, ollama, settings, consumer):
    """No per-model queue, no fairness and no per-consumer queue bound: UPSTREAM_MAX_IN_FLIGHT's wait, first come
    first served (README: list the one server in the admin for a fair queue); rows as before (no server)."""
    assert not servers.registry.listed
    settings.RATE_LIMIT_PER_MINUTE = 0
    settings.DEFAULT_MAX_CONCURRENT = 0
    settings.UPSTREAM_MAX_IN_FLIGHT = 1
    settings.UPSTREAM_QUEUE_PER_CONSUMER = 1
    ollama.delay = 0.2

    async def run():
        async with gateway.async_client() as client:
            return await asyncio.gather(*(client.post("/api/chat", json={
                "model": MODEL, "stream": False, "messages": [{"role": "user", "content": f"n{i}"}]})
                for i in range(4)))

    assert [r.status_code for r in asyncio.run(run())] == [200] * 4
    assert servers.pool().queued_everywhere() == 0 and ollama.peak_running_total == 1
    for row in finished(4):
        assert row.server == "" and row.models_tried == [{"model": MODEL, "outcome": "succeeded"}]


# -- several servers + listings for an allow-listed, metadata-only consumer --------------------------------------------


def test_listings_over_several_servers_show_only_what_an_allow_listed_metadata_only_consumer_may_use(
        listed, fakes, consumer):
    a, b, c = fakes
    a.models[:] = [MODEL, "secret-a:1b"]
    b.models[:] = ["secret-b:1b", MODEL]
    c.models[:] = ["secret-c:1b"]
    a.preload(MODEL)
    b.preload("secret-b:1b")
    poll_now()
    assert wait_for(lambda: servers.pool().health_of("c").models == {"secret-c:1b"}
                    and "secret-b:1b" in servers.pool().health_of("b").loaded, 3)
    consumer.metadata_only = True
    consumer.allowed_models = [MODEL]
    consumer.save()
    with listed.client() as http:
        assert [m["name"] for m in http.get("/api/tags").json()["models"]] == [MODEL]
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [MODEL]
        assert [m["model"] for m in http.get("/api/ps").json()["models"]] == [MODEL]
        assert http.post("/api/show", json={"model": MODEL}).status_code == 200
        shows = sum(1 for f in fakes for r in f.requests if r.path == "/api/show")
        for hidden in ("secret-a:1b", "secret-b:1b", "secret-c:1b", "nowhere:1b"):
            refused = http.post("/api/show", json={"model": hidden})
            assert refused.status_code == 404 and "secret" not in json.dumps(refused.json()).replace(hidden, "")
        assert sum(1 for f in fakes for r in f.requests if r.path == "/api/show") == shows  # none asked
    assert not Generation.objects.exists()  # listings leave no audit row


def test_a_generation_that_failed_over_counts_once_against_its_budget(listed, fakes, settings, budgeted,
                                                                      redis_cache):
    import redis

    a, b, c = fakes
    a.preload(MODEL)
    poll_now()
    assert wait_for(lambda: MODEL in servers.pool().health_of("a").loaded, 3)
    a.fault("status", paths="/api/chat", status=500, message="model requires more system memory", times=1)
    c.fault("status", paths="/api/chat", status=503, message="busy", times=1)
    response = chat(listed, "counted once")
    assert response.status_code == 200
    row = finished(1)[0]
    assert row.models_tried[0] == {"model": MODEL, "server": "a", "outcome": "upstream_error"}
    assert row.prompt_tokens and row.completion_tokens
    assert row.budget_tokens == row.prompt_tokens + row.completion_tokens
    assert int(response.headers["X-Budget-Remaining-Tokens"]) == 100_000 - row.budget_tokens
    settled(redis_cache)
    client = redis.Redis.from_url(REDIS_URL)
    used = [int(client.get(k)) for k in client.scan_iter(f"{redis_cache}:*") if b":day:" in k and k.endswith(b":used")]
    assert used == [row.budget_tokens]


def test_a_spent_budget_is_refused_at_once_not_after_waiting_for_a_busy_servers_slot(listed, fakes, settings,
                                                                                    consumer):
    a = only_a(fakes, slots=1)
    settings.UPSTREAM_QUEUE_TIMEOUT = 5
    key_b = api_keys_for("spent", tokens_per_day=0)
    a.fault("slow", paths="/api/chat", times=1, delay=2.0)

    async def run():
        async with listed.async_client() as client:
            busy = asyncio.create_task(client.post("/api/chat", json={
                "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "holds the slot"}]}))
            assert await asyncio.to_thread(wait_for, lambda: served_by(a, "holds the slot"), 3)
            started = asyncio.get_running_loop().time()
            refused = await client.post("/api/chat", json={
                "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "no budget"}]},
                headers={"Authorization": f"Bearer {key_b}"})
            took = asyncio.get_running_loop().time() - started
            queued = servers.pool().queued_everywhere()
            return await busy, refused, took, queued

    busy, refused, took, queued = asyncio.run(run())
    assert busy.status_code == 200
    assert refused.status_code == 429 and "budget" in refused.json()["error"] and took < 1.0 and queued == 0
    assert not served_by(a, "no budget")
    assert Generation.objects.get(consumer__name="spent").error_type == "budget_exceeded"


def api_keys_for(name: str, **fields) -> str:
    from llm import api_keys

    return api_keys.issue_key(Consumer.objects.create(name=name, **fields))[1]


def test_a_stream_cut_mid_way_on_a_pooled_server_counts_what_came_and_lets_go_of_everything(
        listed, fakes, settings, budgeted, redis_cache):
    a = only_a(fakes, slots=1)
    a.chunks = 10
    a.fault("cut_off", paths="/api/chat", after=3, times=1)
    response = chat(listed, "cut", stream=True)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert "error" in lines[-1]
    row = finished(1)[0]
    assert row.status == "failed" and row.server == "a" and row.budget_tokens and row.budget_tokens > 0
    assert len(row.models_tried) == 1  # never spliced onto another server
    settled(redis_cache)
    assert chat(listed, "next").status_code == 200


def test_a_models_own_500_does_not_take_its_server_down_for_the_other_models(listed, fakes, monkeypatch):
    """README: a 4xx, a missing model and a model's own 500 (it would not load there) do not count against a
    server's health; three of them must not make the server "down" for every other model it serves."""
    a, b, c = fakes
    a.models[:] = [MODEL, "only-a:1b"]
    b.models[:] = [MODEL]
    c.models[:] = [MODEL]
    poll_now()
    assert wait_for(lambda: servers.pool().health_of("a").models == {MODEL, "only-a:1b"}, 3)
    # No poll in between to reset the count: three failures in a row are what they are.
    monkeypatch.setattr(servers, "PS_EVERY", 600)
    monkeypatch.setattr(servers, "TAGS_EVERY", 600)
    time.sleep(0.5)
    for fake in fakes:
        fake.fault("status", paths="/api/chat", status=500, message="model requires more system memory", times=3)
    for i in range(3):
        assert chat(listed, f"oom {i}").status_code == 502
    assert not servers.pool().health_of("a").down
    assert chat(listed, "other model", model="only-a:1b").status_code == 200


def test_a_pick_cancelled_between_its_two_leases_gives_the_models_slot_back_at_once():
    """A server with a cap of its own takes two leases: the model's, then the server's. Cancelled while waiting
    for the second, the first is released then, not left to expire 30 s later."""
    from llm.leases import LeaseManager

    manager = LeaseManager(None)
    acquire = manager.acquire
    second_asked = asyncio.Event()

    async def slow_for_the_server(key, capacity):
        if "/" not in key:  # the server's own lease: hangs until cancelled
            second_asked.set()
            await asyncio.Event().wait()
        return await acquire(key, capacity)

    manager.acquire = slow_for_the_server
    pool = servers.Pool()
    pool.lease_manager = manager
    server = servers.ServerConfig(name="capped", base_url="http://127.0.0.1:9", state="enabled", slots=1,
                                  max_in_flight=1)

    async def run():
        picking = asyncio.create_task(pool._take(server, "qwen2.5:7b"))
        await second_asked.wait()
        assert await manager.count("capped/qwen2.5:7b") == 1
        picking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await picking
        return await manager.count("capped/qwen2.5:7b")

    assert asyncio.run(run()) == 0


def test_one_queue_timeout_covers_the_process_cap_and_the_servers_slot(listed, fakes, settings):
    """A generation that waited for the process's UPSTREAM_MAX_IN_FLIGHT slot waits in the model's queue only for
    what is left of UPSTREAM_QUEUE_TIMEOUT: one 503 after one timeout, not after two."""
    a = only_a(fakes, slots=1)
    settings.UPSTREAM_MAX_IN_FLIGHT = 2
    settings.UPSTREAM_QUEUE_TIMEOUT = 1.5
    a.fault("slow", paths="/api/chat", times=1, delay=5.0)

    async def run():
        async with listed.async_client() as client:
            body = {"model": MODEL, "stream": False}
            holder = asyncio.create_task(client.post("/api/chat", json={
                **body, "messages": [{"role": "user", "content": "holds the slot"}]}))
            assert await asyncio.to_thread(wait_for, lambda: served_by(a, "holds the slot"), 3)
            # The second holds the process's other slot and waits in the model's queue.
            second = asyncio.create_task(client.post("/api/chat", json={
                **body, "messages": [{"role": "user", "content": "second"}]}))
            while servers.pool().queued_everywhere() < 1:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            # The third waits for the process's cap until the second gives up (1.5 s), then has nothing left.
            third = await client.post("/api/chat", json={**body, "messages": [{"role": "user", "content": "third"}]})
            took = time.monotonic() - started
            return await holder, await second, third, took

    holder, second, third, took = asyncio.run(run())
    assert holder.status_code == 200
    assert second.status_code == 503 and third.status_code == 503, (second.text, third.text)
    assert took < 2.5, f"the third waited {took:.1f}s: a timeout for the cap, then another for the slot"
