"""Failed API keys per client address: past FAILED_KEYS_PER_MINUTE, 429 before any key is read, and the refusals
counted in one audit row per address and minute whose counts add up to the refusals answered."""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db.models import Sum
from django.utils import timezone

from llm import failed_keys, metrics, usage
from llm.models import Generation
from tests.conftest import GENERATE_URL, LONG_WINDOW, assert_error, point_cache_at_redis, table_missing

pytestmark = pytest.mark.django_db
PROJECT = Path(__file__).resolve().parents[2]
LIMIT = 5
WRONG = "gw_deadbeef_" + "x" * 43
ATTACKER = "203.0.113.66"
NEIGHBOUR = "198.51.100.23"


@pytest.fixture(autouse=True)
def _limit(settings, monkeypatch):
    settings.FAILED_KEYS_PER_MINUTE = LIMIT
    settings.RATE_LIMIT_PER_MINUTE = 0
    # One window for the whole test: a minute boundary in mid-test would open a second row.
    monkeypatch.setattr(failed_keys, "WINDOW_SECONDS", LONG_WINDOW)


def rows_of(address: str):
    return Generation.objects.filter(client_ip=address).order_by("created_at")


def counted(address: str) -> int:
    return rows_of(address).aggregate(total=Sum("repeat_count"))["total"] or 0


def test_past_the_limit_refusals_are_429_and_counted_in_one_row(generate, valid_request):
    for _ in range(LIMIT * 2):  # valid keys never count
        assert generate(valid_request, REMOTE_ADDR=ATTACKER).status_code == 200
    Generation.objects.all().delete()

    responses = [generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER) for _ in range(LIMIT + 7)]

    assert [r.status_code for r in responses] == [401] * LIMIT + [429] * 7
    for response in responses[LIMIT:]:
        error = assert_error(response, 429, "auth_throttled")
        retry_after = int(response["Retry-After"])
        assert 0 < retry_after <= LONG_WINDOW and error["details"] == {"retry_after": retry_after}
        assert "missing or invalid API key from this address" in error["message"]
    rows = list(rows_of(ATTACKER))
    # The first refusals keep a row each; the rest are one row that counts them.
    assert [(r.http_status, r.error_type, r.repeat_count) for r in rows] == (
        [(401, "authentication_failed", 1)] * LIMIT + [(429, "auth_throttled", 7)])
    throttled = rows[-1]
    assert throttled.status == "failed" and throttled.finished_at >= throttled.created_at
    assert throttled.dialect == "native" and throttled.endpoint == GENERATE_URL and throttled.consumer is None
    assert counted(ATTACKER) == len(responses)


def test_missing_and_malformed_keys_count_too(generate, valid_request):
    for _ in range(LIMIT):
        generate(valid_request, key=None, REMOTE_ADDR=ATTACKER)
    assert_error(generate(valid_request, key=None, HTTP_AUTHORIZATION="Token abc", REMOTE_ADDR=ATTACKER), 429,
                 "auth_throttled")


def test_a_valid_key_from_a_throttled_address_is_served(generate, valid_request):
    """One client's wrong keys must not shut out the others behind the same address (a NAT, an office proxy)."""
    for _ in range(LIMIT + 2):
        generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER)

    assert generate(valid_request, REMOTE_ADDR=ATTACKER).status_code == 200
    assert_error(generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER), 429, "auth_throttled")
    assert generate(valid_request, REMOTE_ADDR=ATTACKER).status_code == 200
    assert counted(ATTACKER) == LIMIT + 5 and rows_of(ATTACKER).filter(status="succeeded").count() == 2


def test_another_address_is_unaffected(generate, valid_request):
    for _ in range(LIMIT + 3):
        generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER)

    assert generate(valid_request, REMOTE_ADDR=NEIGHBOUR).status_code == 200
    assert_error(generate(valid_request, key=WRONG, REMOTE_ADDR=NEIGHBOUR), 401, "authentication_failed")
    assert [(r.status, r.repeat_count) for r in rows_of(NEIGHBOUR)] == [("succeeded", 1), ("failed", 1)]


def test_an_ipv6_client_is_counted_by_its_64(generate, valid_request):
    for n in range(LIMIT):
        generate(valid_request, key=WRONG, REMOTE_ADDR=f"2001:db8:1:2::{n + 1}")
    # Another address of the same /64 (the same host, as far as anyone can tell) is throttled ...
    assert_error(generate(valid_request, key=WRONG, REMOTE_ADDR="2001:db8:1:2:ffff::9"), 429, "auth_throttled")
    # ... a neighbouring /64 is not.
    assert_error(generate(valid_request, key=WRONG, REMOTE_ADDR="2001:db8:1:3::1"), 401, "authentication_failed")


def test_the_limit_is_a_setting_and_zero_is_none(generate, valid_request, settings):
    settings.FAILED_KEYS_PER_MINUTE = 2
    assert [generate(valid_request, key=WRONG).status_code for _ in range(3)] == [401, 401, 429]

    settings.FAILED_KEYS_PER_MINUTE = 0
    assert {generate(valid_request, key=WRONG).status_code for _ in range(LIMIT * 2)} == {401}


def test_the_refusals_of_two_processes_add_up_in_one_row():
    """Each process inserts the row of an address's minute or, finding it there, adds to it."""
    def attempt():
        return Generation(client_ip=ATTACKER, dialect="native", endpoint=GENERATE_URL, status="failed",
                          http_status=429, error_type="auth_throttled", error_message="throttled")

    key = (ATTACKER, 1_900_000_020)
    now = timezone.now()
    failed_keys._write(key, attempt(), 3, 3 * 2.0, now)
    failed_keys._write(key, attempt(), 2, 2 * 7.0, now)  # a second process, its row object not the first's

    row = Generation.objects.get()
    assert row.repeat_count == 5
    assert row.latency_ms == pytest.approx((3 * 2.0 + 2 * 7.0) / 5)  # the mean, so the rollup's sums hold


# -- every door: the generation dialects, the listings, the catalog ---------------------------------------------------


def test_every_door_counts_against_one_throttle_and_one_row(client, generate, valid_request):
    chat = json.dumps({"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "Hi"}]})
    wrong = {"HTTP_AUTHORIZATION": f"Bearer {WRONG}", "REMOTE_ADDR": ATTACKER}
    assert client.post("/v1/chat/completions", chat, content_type="application/json", **wrong).status_code == 401
    assert client.post("/api/chat", chat, content_type="application/json", **wrong).status_code == 401
    assert client.get("/v1/models", **wrong).status_code == 401  # a listing: no row, but counted
    assert client.get("/api/v1/llm/templates", **wrong).status_code == 401
    assert generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER).status_code == 401

    openai = client.post("/v1/chat/completions", chat, content_type="application/json", **wrong)
    ollama = client.post("/api/chat", chat, content_type="application/json", **wrong)
    native = generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER)
    listing = client.get("/api/tags", **wrong)
    catalog = client.get("/api/v1/llm/templates", **wrong)

    assert openai.status_code == 429 and openai.json()["error"]["code"] == "auth_throttled"
    assert openai.json()["error"]["type"] == "rate_limit_error" and "x-should-retry" not in openai
    assert ollama.status_code == 429 and "missing or invalid API key" in ollama.json()["error"]
    assert_error(native, 429, "auth_throttled")
    assert listing.status_code == 429 and "Retry-After" in listing
    assert_error(catalog, 429, "auth_throttled")
    # Three generation rows of their own (the listings leave none), then one row counting the three throttled.
    assert [(r.dialect, r.http_status, r.repeat_count) for r in rows_of(ATTACKER)] == [
        ("openai", 401, 1), ("ollama", 401, 1), ("native", 401, 1), ("openai", 429, 3)]


# -- counted where rows are counted: /metrics and the usage rollup ----------------------------------------------------


def test_metrics_and_the_usage_rollup_count_every_refusal(generate, valid_request):
    def throttled_in_metrics() -> float:
        return metrics.REGISTRY.get_sample_value("llm_gateway_requests_total", {
            "outcome": "failed", "error_type": "auth_throttled", "model": "none", "consumer": "anonymous",
            "dialect": "native"}) or 0.0

    before = throttled_in_metrics()
    statuses = [generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER).status_code for _ in range(LIMIT + 9)]

    assert throttled_in_metrics() - before == statuses.count(429) == 9
    live = usage.usage()
    assert live.total_24h.requests == live.total_24h.failed == LIMIT + 9
    usage.fold(until=timezone.now() + timezone.timedelta(hours=2))
    folded = usage.usage(now=timezone.now())
    assert folded.total_24h.requests == folded.total_24h.failed == LIMIT + 9
    assert sum(folded.total_24h.latency_buckets) == LIMIT + 9


# -- the audit log cannot be written, the cache cannot be read --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_throttled_refusal_that_cannot_be_recorded_is_503(generate, valid_request, shipped_templates):
    for _ in range(LIMIT):
        generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER)
    assert_error(generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER), 429, "auth_throttled")

    with table_missing("llm_generation"):
        response = generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER)

    assert_error(response, 503, "audit_unavailable")


def test_an_unreachable_cache_throttles_nobody_and_says_so_once(generate, valid_request, settings, refused_url,
                                                               caplog):
    port = refused_url.rsplit(":", 1)[1]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{port}/0",
                                   "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2}}}

    with caplog.at_level("WARNING", logger="llm.failed_keys"):
        statuses = [generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER).status_code for _ in range(LIMIT + 2)]

    assert statuses == [401] * (LIMIT + 2)
    assert list(rows_of(ATTACKER).values_list("repeat_count", flat=True)) == [1] * (LIMIT + 2)
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "llm.failed_keys"] == [
        ("WARNING", "failed keys not throttled: the cache is unavailable; each refusal keeps a row of its own "
                    "until it answers")]


REDIS_URL = "redis://127.0.0.1:6379/5"
ANOTHER_PROCESS = """
import sys
import django
from django.test.utils import override_settings

django.setup()
from llm import failed_keys

location, prefix, address, times, window = sys.argv[1:]
failed_keys.WINDOW_SECONDS = int(window)
caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location,
                      "KEY_PREFIX": prefix}}
with override_settings(CACHES=caches, FAILED_KEYS_PER_MINUTE=int(times)):
    for _ in range(int(times)):
        failed_keys.count_refusal(address)
"""


def test_the_counts_are_shared_by_every_process_through_redis(generate, valid_request, settings):
    prefix = point_cache_at_redis(settings, REDIS_URL)
    result = subprocess.run([sys.executable, "-c", ANOTHER_PROCESS, REDIS_URL, prefix, ATTACKER, str(LIMIT),
                             str(LONG_WINDOW)],
                            cwd=PROJECT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    assert_error(generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER), 429, "auth_throttled")
    assert_error(generate(valid_request, key=WRONG, REMOTE_ADDR=NEIGHBOUR), 401, "authentication_failed")


# -- the admin ---------------------------------------------------------------------------------------------------------


def test_the_admin_shows_how_many_requests_a_row_counts(client, generate, valid_request, admin_user):
    for _ in range(LIMIT + 4):
        generate(valid_request, key=WRONG, REMOTE_ADDR=ATTACKER)
    client.force_login(admin_user)
    row = rows_of(ATTACKER).last()

    listing = client.get("/admin/llm/generation/").content.decode()
    detail = client.get(f"/admin/llm/generation/{row.pk}/change/").content.decode()

    assert listing.count('class="repeat-count"') == 1 and "×4</span>" in listing
    assert "Repeat count" in detail and '<div class="readonly">4</div>' in detail


# -- a flood over a socket --------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_flood_of_wrong_keys_leaves_a_bounded_number_of_rows_that_count_every_refusal(gateway, settings, capsys,
                                                                                          monkeypatch):
    """300 requests with wrong keys, 20 at a time, from one address, while another address generates: a few rows
    for the flood, their counts adding up to the refusals answered; the other address is not slowed or refused."""
    settings.FAILED_KEYS_PER_MINUTE = 30
    writes = []
    write = failed_keys._write
    monkeypatch.setattr(failed_keys, "_write", lambda *args: (writes.append(args[2]), write(*args)))
    flood_address, consumer_address = "203.0.113.99", "198.51.100.50"
    body = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}}

    async def run():
        # uvicorn trusts its loopback peer as a proxy (FORWARDED_ALLOW_IPS' default): X-Forwarded-For names the
        # client, as a real proxy in front of the gateway would.
        async with gateway.async_client() as http:
            statuses: Counter = Counter()
            queue = asyncio.Queue()
            for _ in range(300):
                queue.put_nowait(None)

            async def attacker():
                while not queue.empty():
                    queue.get_nowait()
                    response = await http.post(GENERATE_URL, json=body, headers={
                        "Authorization": f"Bearer {WRONG}", "X-Forwarded-For": flood_address})
                    statuses[response.status_code] += 1

            async def consumer():
                answered = []
                for _ in range(20):
                    response = await http.post(GENERATE_URL, json=body, headers={"X-Forwarded-For": consumer_address})
                    answered.append(response.status_code)
                return answered

            results = await asyncio.gather(consumer(), *(attacker() for _ in range(20)))
            return statuses, results[0]

    started = time.monotonic()
    statuses, consumer_statuses = asyncio.run(run())
    took = time.monotonic() - started

    assert set(statuses) == {401, 429} and sum(statuses.values()) == 300
    assert consumer_statuses == [200] * 20
    rows = list(rows_of(flood_address))
    with capsys.disabled():
        print(f"\nWrong-key flood: {dict(statuses)} answered in {took:.1f} s, {len(rows)} rows "
              f"(counts {[r.repeat_count for r in rows if r.repeat_count > 1]}), the throttled ones written by "
              f"{len(writes)} statements")
    # Thirty refusals of their own (a few more that were in flight when the thirtieth was counted), then one row.
    assert statuses[401] == len(rows) - 1 <= 30 + 20
    assert [r.repeat_count for r in rows if r.error_type == "auth_throttled"] == [statuses[429]]
    assert counted(flood_address) == 300
    # Throttled refusals arriving together are written together: at most one statement per LINGER_SECONDS.
    assert sum(writes) == statuses[429] and len(writes) <= took / failed_keys.LINGER_SECONDS + 1
    assert Generation.objects.filter(status="pending").count() == 0
