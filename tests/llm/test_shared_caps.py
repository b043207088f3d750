"""A consumer's max_concurrent across gateway processes that share Redis (llm.admission with llm.leases)."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from llm import admission
from llm.models import Consumer, Generation
from tests.conftest import cache_in_redis, wait_for

PROJECT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/10"
HELLO = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "Say hello."}], "stream": False}

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_cache(settings):
    """The cache in Redis (database 10) under a key prefix of this test's own; its keys deleted afterwards."""
    with cache_in_redis(settings, REDIS_URL, "test-caps") as prefix:
        yield prefix


def test_max_concurrent_holds_across_two_processes_sharing_redis(gateway, ollama, consumer, redis_cache, settings):
    settings.RATE_LIMIT_PER_MINUTE = 0
    Consumer.objects.filter(pk=consumer.pk).update(max_concurrent=3)
    ollama.fault("slow", paths="/api/chat", delay=1.0)
    with holding(redis_cache, consumer, count=2, ttl=30):
        # Another gateway process runs two of the consumer's three: this one may start one more.
        async def run():
            async with gateway.async_client() as http:
                return await asyncio.gather(*(http.post("/api/chat", json=HELLO) for _ in range(3)))

        responses = asyncio.run(run())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 429, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert "across the gateway's processes" in refused.json()["error"] and refused.headers["Retry-After"] == "1"
    # Every attempt has its one completed row; the refusals are rate_limited.
    rows = wait_for(lambda: list(Generation.objects.exclude(status="pending")) if
                    Generation.objects.exclude(status="pending").count() == 3 else None)
    assert sorted(row.error_type for row in rows) == ["", "rate_limited", "rate_limited"]
    # The other process ended and gave its slots back (SIGTERM: it released them); this one gave back its own.
    async def again():
        async with gateway.async_client() as http:
            return await asyncio.gather(*(http.post("/api/chat", json=HELLO) for _ in range(3)))

    assert [r.status_code for r in asyncio.run(again())] == [200, 200, 200]


def test_no_cap_takes_no_lease(gateway, ollama, consumer, redis_cache, settings):
    import redis

    Consumer.objects.filter(pk=consumer.pk).update(max_concurrent=0)
    with gateway.client() as http:
        assert http.post("/api/chat", json=HELLO).status_code == 200
    assert not [key for key in redis.Redis.from_url(REDIS_URL).scan_iter(f"{redis_cache}:*") if b"slots" in key]


HOLDER = """
import asyncio
import signal
import sys

import django
from django.test.utils import override_settings

django.setup()
from llm import admission
from llm.models import Consumer

location, prefix, pk, cap, count, ttl = sys.argv[1:]
admission.LEASE_TTL, admission.LEASE_RENEW_EVERY = float(ttl), float(ttl) / 5
caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location,
                      "KEY_PREFIX": prefix}}


async def hold():
    consumer = Consumer(pk=int(pk), name="test-team", max_concurrent=int(cap))
    leases = [await admission.take_shared_consumer_slot(consumer) for _ in range(int(count))]
    print("held", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.wait_for(stop.wait(), 600)  # renewed meanwhile; SIGKILL leaves them to expire
    for lease in leases:
        await lease.release()


with override_settings(CACHES=caches):
    asyncio.run(hold())
"""


@contextmanager
def holding(prefix, consumer, *, count, ttl, cap=None):
    """Another gateway process holding `count` of the consumer's slots (cap: its max_concurrent) until the block
    ends (then SIGTERM: it releases them) or it is killed (holder.send_signal(SIGKILL))."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, REDIS_URL, prefix, str(consumer.pk), str(cap or count), str(count), str(ttl)],
        cwd=PROJECT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        if holder.poll() is None:
            holder.terminate()
        assert holder.wait(10) in (0, -signal.SIGKILL)


def test_the_slots_of_a_killed_process_come_back_within_the_lease_lifetime(gateway, ollama, consumer, redis_cache,
                                                                           settings):
    settings.RATE_LIMIT_PER_MINUTE = 0
    Consumer.objects.filter(pk=consumer.pk).update(max_concurrent=2)
    ttl = 1.5
    with holding(redis_cache, consumer, count=2, ttl=ttl) as holder, gateway.client() as http:
        # Held past their first lifetime: the other process renews them while it lives.
        time.sleep(ttl * 1.5)
        assert http.post("/api/chat", json=HELLO).status_code == 429
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed = time.monotonic()
        while http.post("/api/chat", json=HELLO).status_code == 429:
            assert time.monotonic() - killed < ttl + 1, "the dead process's slots did not come back"
            time.sleep(0.1)


def test_without_redis_the_cap_stays_per_process(client, api_key, consumer, ollama, db):
    assert not admission.caps_shared()
    Consumer.objects.filter(pk=consumer.pk).update(max_concurrent=1)
    consumer.refresh_from_db()
    admission.take_consumer_slot(consumer)  # one in flight in this process
    try:
        response = client.post("/api/chat", data=HELLO, content_type="application/json",
                               HTTP_AUTHORIZATION=f"Bearer {api_key}")
        assert response.status_code == 429 and "on this gateway process" in response.json()["error"]
    finally:
        admission.release_consumer_slot(consumer.pk)
