"""Where the four features built together meet: several Ollama servers (llm.servers) with embeddings, token budgets,
shared caps (Redis) and metadata-only consumers. Three fake Ollama servers on loopback, the gateway served over a
real socket; Redis in database 12, under a key prefix of each test's own."""

import asyncio
import json
import logging
import os
import uuid

import httpx
import pytest

from llm import admission, servers
from llm.models import Consumer, Generation, OllamaServer
from tests.conftest import wait_for
from tests.llm.test_servers import MODEL, chat, fakes, listed, poll_now, served_by  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = "redis://127.0.0.1:6379/12"
CANARY = "zebracanary7f3a9q"


@pytest.fixture
def redis_cache(settings):
    """The cache in Redis (database 12) under this test's own key prefix; its keys deleted afterwards, and the
    cache set back before the suite's own fixture clears it (a Redis cache's clear() is a FLUSHDB)."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no Redis here
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"test-seams-{uuid.uuid4().hex}"
    before = settings.CACHES
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                                   "KEY_PREFIX": prefix}}
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    settings.CACHES = before


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
