"""Per-consumer rate limits: 429 rate_limited with Retry-After, audited; counters shared through the cache."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm import api_keys
from llm.models import Consumer, Generation
from tests.conftest import LONG_WINDOW, SNS_REPLY, assert_error, cache_in_redis

pytestmark = pytest.mark.django_db

PROJECT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/5"


@pytest.fixture(autouse=True)
def long_window(settings):
    settings.RATE_LIMIT_WINDOW_SECONDS = LONG_WINDOW
    settings.RATE_LIMIT_PER_MINUTE = 3


def test_over_the_limit_is_429_with_retry_after_and_audited(generate, valid_request, ollama, consumer, api_key):
    ollama.reply = SNS_REPLY
    for _ in range(3):
        assert generate(valid_request).status_code == 200
    upstream_calls = len(ollama.requests)

    response = generate(valid_request)

    error = assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= LONG_WINDOW
    assert error["details"]["retry_after"] == int(response["Retry-After"])
    assert "test-team" in error["message"] and "3" in error["message"]
    assert len(ollama.requests) == upstream_calls  # nothing was generated
    row = Generation.objects.get(id=error["request_id"])
    assert (row.status, row.http_status, row.error_type) == ("failed", 429, "rate_limited")
    assert row.consumer == consumer and api_key.startswith(f"gw_{row.api_key_prefix}_")
    assert row.request is None and row.attempts == 0
    assert Generation.objects.count() == 4


def test_a_consumer_s_own_limit_overrides_the_default(generate, valid_request, consumer, api_key):
    Consumer.objects.filter(pk=consumer.pk).update(rate_limit_per_minute=1)
    other_key = api_keys.issue_key(Consumer.objects.create(name="other-team"))[1]

    assert generate(valid_request).status_code == 200
    assert_error(generate(valid_request), 429, "rate_limited")
    # Limits are per consumer: the other team still has its default three.
    assert [generate(valid_request, key=other_key).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_keys_of_one_consumer_share_its_limit(generate, valid_request, consumer, api_key):
    second_key = api_keys.issue_key(consumer)[1]

    statuses = [generate(valid_request, key=key).status_code for key in (api_key, second_key, api_key, second_key)]

    assert statuses == [200, 200, 200, 429]


def test_zero_means_unlimited(generate, valid_request, consumer, settings):
    settings.RATE_LIMIT_PER_MINUTE = 0

    assert {generate(valid_request).status_code for _ in range(10)} == {200}


def test_unauthenticated_attempts_do_not_use_up_the_allowance(generate, valid_request):
    for _ in range(5):
        assert_error(generate(valid_request, key=None), 401, "not_authenticated")
        assert_error(generate(valid_request, key="gw_bad"), 401, "authentication_failed")

    assert generate(valid_request).status_code == 200


def test_invalid_requests_count(generate, valid_request):
    for _ in range(3):
        assert_error(generate({"role": 1}), 400, "invalid_request")

    assert_error(generate(valid_request), 429, "rate_limited")


def test_the_counter_starts_again_in_the_next_window(generate, valid_request, settings):
    settings.RATE_LIMIT_WINDOW_SECONDS = 1
    settings.RATE_LIMIT_PER_MINUTE = 1
    time.sleep(1 - time.time() % 1 + 0.01)  # start just after a window opens: both requests fall inside it

    assert generate(valid_request).status_code == 200
    response = generate(valid_request)
    assert_error(response, 429, "rate_limited")
    assert response["Retry-After"] == "1"

    time.sleep(1 - time.time() % 1 + 0.01)
    assert generate(valid_request).status_code == 200


# -- Redis: several gateway processes share the counters -----------------------------------------------------------


@pytest.fixture
def redis_cache(settings):
    """Point the gateway's cache at Redis (database 5), under a key prefix of this test's own."""
    with cache_in_redis(settings, REDIS_URL) as prefix:
        yield prefix


ANOTHER_PROCESS = """
import sys
import django
from django.test.utils import override_settings

django.setup()
from llm import rate_limits
from llm.errors import RateLimited
from llm.models import Consumer

location, prefix, pk, name, times, window = sys.argv[1:]
caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location,
                      "KEY_PREFIX": prefix}}
with override_settings(CACHES=caches, RATE_LIMIT_WINDOW_SECONDS=int(window), RATE_LIMIT_PER_MINUTE=3):
    for _ in range(int(times)):
        try:
            rate_limits.count_request(Consumer(pk=int(pk), name=name))
            print("counted")
        except RateLimited:
            print("limited")
"""


def count_in_another_process(consumer: Consumer, times: int, prefix: str) -> list[str]:
    """Count `times` requests of the consumer from a second Python process with its own Redis client."""
    result = subprocess.run(
        [sys.executable, "-c", ANOTHER_PROCESS, REDIS_URL, prefix, str(consumer.pk), consumer.name, str(times),
         str(LONG_WINDOW)],
        cwd=PROJECT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_counters_in_redis_are_shared_by_gateway_processes(generate, valid_request, consumer, api_key, redis_cache):
    assert generate(valid_request).status_code == 200

    # Another gateway process counts the same consumer against the same Redis.
    assert count_in_another_process(consumer, 3, redis_cache) == ["counted", "counted", "limited"]

    assert_error(generate(valid_request), 429, "rate_limited")


def test_a_redis_counter_expires_with_its_window(generate, valid_request, consumer, redis_cache, settings):
    import redis

    generate(valid_request)

    client = redis.Redis.from_url(REDIS_URL)
    keys = client.keys(f"{redis_cache}:*")
    assert len(keys) == 1
    assert LONG_WINDOW < client.ttl(keys[0]) <= LONG_WINDOW + 5


def test_an_unreachable_cache_lets_requests_through_and_says_so_once(generate, valid_request, settings,
                                                                      refused_url, caplog):
    port = refused_url.rsplit(":", 1)[1]
    down = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                        "LOCATION": f"redis://127.0.0.1:{port}/0",
                        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}}}
    up = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    caplog.set_level(logging.INFO, logger="llm.rate_limits")

    settings.CACHES = down
    statuses = [generate(valid_request).status_code for _ in range(5)]  # the limit is 3
    outage = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "llm.rate_limits"]
    caplog.clear()
    settings.CACHES = up
    generate(valid_request)
    generate(valid_request)
    recovery = [r for r in caplog.records if r.name == "llm.rate_limits"]
    caplog.clear()
    settings.CACHES = down
    generate(valid_request)
    generate(valid_request)
    again = [r for r in caplog.records if r.name == "llm.rate_limits"]

    assert statuses == [200] * 5
    # One warning for the outage, not an error per request; one line when it is over; again if it recurs.
    assert outage == [("WARNING", "rate limits not enforced: the cache is unavailable; requests are let through "
                                  "until it answers")]
    assert [(r.levelname, r.getMessage(), r.occurrences) for r in recovery] == [
        ("INFO", "rate limits enforced again: the cache answers", 5)]
    assert [r.levelname for r in again] == ["WARNING"] and again[0].consumer == "test-team"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
