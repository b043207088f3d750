"""Token budgets per consumer (llm.budgets): refusals in every dialect, reservations, counting, windows, Redis."""

import asyncio
import json
import os
import subprocess
import time
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import ollama as ollama_client
import openai
import pytest
from django.core.management import call_command

from llm import budgets
from llm.models import Consumer, Generation
from tests.conftest import GENERATE_URL, SNS_REPLY, assert_error, cache_in_redis, wait_for

PROJECT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/10"
HELLO = [{"role": "user", "content": "Say hello."}]
LONG_HELLO = [{"role": "user", "content": "Say hello, " * 20}]
# The budgets' clock stands still at noon (UTC) today: the rows written now are in its day, and no test crosses
# midnight by accident.
NOON = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)
TOMORROW = f"{NOON + timedelta(days=1):%Y-%m-%d} 00:00 UTC"


@pytest.fixture(autouse=True)
def _fresh_budgets(monkeypatch):
    budgets.forget_local()
    monkeypatch.setattr(budgets, "clock", lambda: NOON)
    yield
    budgets.forget_local()


@pytest.fixture
def redis_cache(settings):
    """The cache in Redis (database 10), under a key prefix of this test's own; its keys deleted afterwards."""
    with cache_in_redis(settings, REDIS_URL, "test-budget") as prefix:
        yield prefix


def budget(consumer, *, day=None, month=None):
    Consumer.objects.filter(pk=consumer.pk).update(tokens_per_day=day, tokens_per_month=month)


def charged_total(consumer) -> int:
    return sum(row.budget_tokens or 0 for row in Generation.objects.filter(consumer=consumer))


def chat_body(**extra):
    return {"model": "qwen2.5:7b", "messages": HELLO, **extra}


# -- refusal in the three dialects ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_spent_daily_budget_is_refused_in_every_dialect(gateway, ollama, consumer, settings):
    settings.RATE_LIMIT_PER_MINUTE = 3
    budget(consumer, day=40)
    ollama.reply = " ".join(f"word{i}" for i in range(200))
    with gateway.client() as http:
        first = http.post("/api/chat", json=chat_body(stream=False))
        assert first.status_code == 200, first.text
        assert first.headers["X-Budget-Window"] == "day"
        # What was left after this generation: the budget less what it counted.
        spent = Generation.objects.get().budget_tokens
        assert spent == first.json()["prompt_eval_count"] + first.json()["eval_count"]
        assert int(first.headers["X-Budget-Remaining-Tokens"]) == 40 - spent
        # Its prompt estimate and one token no longer fit: refused before the model is asked.
        assert first.json()["done_reason"] == "length"
        assert http.post("/api/chat", json=chat_body(stream=False)).status_code == 429
    calls_before = len(ollama.requests)

    # The openai SDK: RateLimitError after exactly one HTTP request (its default max_retries is 2), counted by the
    # SDK's transport and by the gateway's rows.
    rows_before = Generation.objects.count()
    sent = []
    with httpx.Client(event_hooks={"request": [sent.append]}) as transport:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, http_client=transport)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="qwen2.5:7b", messages=LONG_HELLO)
    assert len(sent) == 1
    assert Generation.objects.count() == rows_before + 1
    assert refused.value.code == "insufficient_quota" and refused.value.type == "insufficient_quota"
    response = refused.value.response
    assert response.headers["x-should-retry"] == "false"
    assert "daily token budget" in refused.value.message and f"resets at {TOMORROW}" in refused.value.message
    assert response.headers["Retry-After"] == str(12 * 3600)
    assert response.headers["X-Budget-Remaining-Tokens"] == "0"

    # The ollama client: its ResponseError with Ollama's {"error": ...}.
    with pytest.raises(ollama_client.ResponseError) as refused:
        ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"},
                             trust_env=False).chat(model="qwen2.5:7b", messages=LONG_HELLO)
    assert refused.value.status_code == 429 and "daily token budget" in refused.value.error

    # The native API.
    with gateway.client() as http:
        native = http.post(GENERATE_URL, json={"role": "copywriter", "task": "sns",
                                               "payload": {"product": "Tea", "tone": "calm"}})
    assert native.status_code == 429
    assert native.json()["error"]["type"] == "budget_exceeded"
    assert native.json()["error"]["details"] == {"retry_after": 12 * 3600, "window": "day"}

    assert len(ollama.requests) == calls_before  # the model was never asked
    refusals = Generation.objects.filter(error_type="budget_exceeded")
    assert refusals.count() >= 3 and all(row.http_status == 429 for row in refusals)
    # Refusals do not use up the rate limit (3 a minute): a request past the budget still gets budget_exceeded,
    # not rate_limited.
    with gateway.client() as http:
        again = http.post("/api/chat", json=chat_body(stream=False))
    assert again.json()["error"].startswith("Consumer 'test-team' has spent its daily token budget")


def test_a_zero_budget_refuses_everything_and_no_budget_refuses_nothing(generate, valid_request, consumer, ollama):
    ollama.reply = SNS_REPLY
    response = generate(valid_request)
    assert response.status_code == 200 and "X-Budget-Window" not in response
    budget(consumer, month=0)
    error = assert_error(generate(valid_request), 429, "budget_exceeded")
    assert "monthly token budget (0 tokens per month" in error["message"]
    next_month = (NOON.replace(day=1) + timedelta(days=32)).replace(day=1)
    assert f"resets at {next_month:%Y-%m-%d} 00:00 UTC" in error["message"]
    assert error["details"]["window"] == "month"
    row = Generation.objects.filter(error_type="budget_exceeded").get()
    assert row.status == "failed" and row.consumer_id == consumer.pk


def test_the_budget_is_served_again_once_the_window_turns(generate, valid_request, consumer, ollama, monkeypatch):
    ollama.reply = SNS_REPLY
    budget(consumer, day=3000)
    served = 0
    while generate(valid_request).status_code == 200:
        served += 1
    assert served >= 2 and Generation.objects.filter(error_type="budget_exceeded").count() == 1
    # The rows were written now; the clock that counts windows moves past midnight of the next day.
    monkeypatch.setattr(budgets, "clock", lambda: datetime.now(timezone.utc) + timedelta(days=1))
    response = generate(valid_request)
    assert response.status_code == 200
    assert int(response["X-Budget-Remaining-Tokens"]) == 3000 - Generation.objects.first().budget_tokens


def test_the_tighter_budget_is_reported(generate, valid_request, consumer, ollama):
    ollama.reply = SNS_REPLY
    budget(consumer, day=100_000, month=5_000)
    response = generate(valid_request)
    assert response["X-Budget-Window"] == "month"
    assert int(response["X-Budget-Remaining-Tokens"]) == 5_000 - Generation.objects.get().budget_tokens


# -- reservations and the num_predict cap -----------------------------------------------------------------------------


def post_chat(client, key, **body):
    return client.post("/api/chat", data=json.dumps(chat_body(**body)), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {key}")


def test_num_predict_is_capped_at_the_room_left_and_the_reply_ends_with_length(client, api_key, consumer, ollama,
                                                                              db):
    ollama.reply = " ".join(f"word{i}" for i in range(200))
    budget(consumer, day=150)
    body_size = len(json.dumps(chat_body(stream=False, options={"num_predict": 500})))
    estimate = -(-body_size // budgets.BYTES_PER_TOKEN)
    response = post_chat(client, api_key, stream=False, options={"num_predict": 500})
    assert response.status_code == 200
    assert ollama.requests[-1].json["options"]["num_predict"] == 150 - estimate
    assert response.json()["done_reason"] == "length"
    assert response.json()["eval_count"] == 150 - estimate
    row = Generation.objects.get()
    assert row.finish_reason == "length"
    # The real prompt is shorter than its estimate: the budget holds.
    assert row.budget_tokens <= 150


def test_a_request_within_the_room_left_is_sent_as_asked(client, api_key, consumer, ollama, db):
    budget(consumer, day=100_000)
    post_chat(client, api_key, stream=False, options={"num_predict": 50})
    assert ollama.requests[-1].json["options"]["num_predict"] == 50


def test_a_request_without_a_limit_may_not_run_past_the_room_left(client, api_key, consumer, ollama, db, settings):
    settings.BUDGET_COMPLETION_ESTIMATE = 10
    budget(consumer, day=1000)
    post_chat(client, api_key, stream=False)
    body_size = len(json.dumps(chat_body(stream=False)))
    assert ollama.requests[-1].json["options"]["num_predict"] == 1000 - -(-body_size // budgets.BYTES_PER_TOKEN)


def test_shadow_mode_counts_and_reports_but_never_refuses(client, api_key, consumer, ollama, db, settings):
    settings.BUDGET_SHADOW_MODE = True
    budget(consumer, day=0)
    response = post_chat(client, api_key, stream=False, options={"num_predict": 500})
    assert response.status_code == 200
    assert response["X-Budget-Remaining-Tokens"] == "0" and response["X-Budget-Window"] == "day"
    assert ollama.requests[-1].json["options"]["num_predict"] == 500  # not capped either
    assert Generation.objects.get().budget_tokens > 0


# -- what counts ------------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_thinking_and_streams_count_and_a_stream_carries_the_value_at_admission(gateway, ollama, consumer):
    budget(consumer, day=10_000)
    ollama.models.append("qwen3:8b")
    with gateway.client() as http:
        response = http.post("/api/chat", json=chat_body(model="qwen3:8b", think=True))
    assert response.status_code == 200 and response.headers["X-Budget-Remaining-Tokens"] == "10000"
    final = [json.loads(line) for line in response.text.splitlines()][-1]
    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert row.thinking and row.stream
    assert row.budget_tokens == final["prompt_eval_count"] + final["eval_count"]
    # The OpenAI dialect's stream too, at admission: before this one's count.
    with gateway.client() as http:
        response = http.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.headers["X-Budget-Remaining-Tokens"] == str(10_000 - row.budget_tokens)
    assert response.headers["X-Budget-Window"] == "day"


def test_a_cached_prompt_counts_its_estimate(client, api_key, consumer, ollama, db):
    budget(consumer, day=10_000)
    ollama.fault("cached_prompt", paths="/api/chat")
    response = post_chat(client, api_key, stream=False)
    assert "prompt_eval_count" not in response.json()
    row = Generation.objects.get()
    estimate = -(-len(json.dumps(chat_body(stream=False))) // budgets.BYTES_PER_TOKEN)
    assert row.prompt_tokens is None
    assert row.budget_tokens == estimate + row.completion_tokens


def test_a_failure_counts_what_ollama_reported(client, api_key, consumer, ollama, db):
    budget(consumer, day=10_000)
    ollama.fault("status", paths="/api/chat", status=500, times=10)
    response = post_chat(client, api_key, stream=False)
    assert response.status_code >= 500
    assert response["X-Budget-Window"] == "day"
    assert Generation.objects.get().budget_tokens == 0


@pytest.mark.django_db(transaction=True)
def test_an_abandoned_stream_counts_what_was_received_plus_the_prompt_estimate(gateway, ollama, consumer):
    import socket

    budget(consumer, day=10_000)
    ollama.reply = " ".join(f"word{i}" for i in range(40))
    ollama.fault("slow", paths="/api/chat", delay=0, chunk_delay=0.3)
    body = json.dumps(chat_body()).encode()
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.key}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while received.count(b'"done":false') < 2:
        received += sock.recv(4096)
    sock.close()
    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert row.error_type == "client_disconnected"
    assert row.prompt_tokens is None and row.completion_tokens >= 2
    assert row.budget_tokens == -(-len(body) // budgets.BYTES_PER_TOKEN) + row.completion_tokens


# -- concurrency, processes, restarts ---------------------------------------------------------------------------------


def fifty_at_once(gateway, ollama, consumer, size):
    budget(consumer, day=size)
    ollama.reply = "one two three four five six"
    ollama.fault("slow", paths="/api/chat", delay=0.2)

    async def run():
        async with gateway.async_client() as http:
            return await asyncio.gather(*(http.post("/api/chat", json=chat_body(stream=False, options={
                "num_predict": 8})) for _ in range(50)))

    responses = asyncio.run(run())
    statuses = [r.status_code for r in responses]
    wait_for(lambda: not Generation.objects.filter(status="pending").exists())
    return statuses


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_generations_stay_within_the_budget(gateway, ollama, consumer, settings):
    settings.RATE_LIMIT_PER_MINUTE = 0
    statuses = fifty_at_once(gateway, ollama, consumer, 300)
    served = statuses.count(200)
    assert served >= 1 and statuses.count(429) == 50 - served
    # Each reserves its prompt estimate and 8 tokens, and counts fewer: within the budget.
    assert charged_total(consumer) <= 300
    assert Generation.objects.filter(error_type="budget_exceeded").count() == 50 - served


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_generations_stay_within_the_budget_in_redis(gateway, ollama, consumer, settings,
                                                                      redis_cache):
    settings.RATE_LIMIT_PER_MINUTE = 0
    statuses = fifty_at_once(gateway, ollama, consumer, 300)
    served = statuses.count(200)
    assert served >= 1
    assert charged_total(consumer) <= 300
    (use,) = budgets.use_of(Consumer.objects.get(pk=consumer.pk))
    assert use.used == charged_total(consumer)


ANOTHER_PROCESS = """
import sys
import django
from django.test.utils import override_settings

django.setup()
from llm import budgets
from llm.models import Consumer

location, prefix, pk, day, times = sys.argv[1:]
caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location,
                      "KEY_PREFIX": prefix}}


with override_settings(CACHES=caches):
    consumer = Consumer(pk=int(pk), name="test-team", tokens_per_day=int(day))
    for _ in range(int(times)):
        try:
            reservation = budgets.admit(consumer=consumer, options={"num_predict": 10}, estimate=20)
        except budgets.BudgetExceeded:
            print("refused")
            continue
        budgets.settle(reservation, 30)
        print(f"served:{reservation.remaining}")
"""


def admit_in_another_process(prefix, consumer, day, times) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", ANOTHER_PROCESS, REDIS_URL, prefix, str(consumer.pk), str(day), str(times)],
        cwd=PROJECT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_two_processes_sharing_redis_enforce_one_budget_and_a_restart_keeps_the_usage(
        client, api_key, consumer, ollama, redis_cache, db, monkeypatch):
    monkeypatch.setattr(budgets, "clock", lambda: datetime.now(timezone.utc))
    budget(consumer, day=200)
    assert post_chat(client, api_key, stream=False).status_code == 200
    spent = Generation.objects.get().budget_tokens
    # Another gateway process (a fresh one: as after a restart) sees what this one spent, and spends 30 a time.
    outcome = admit_in_another_process(redis_cache, consumer, 200, 10)
    assert outcome[0] == f"served:{200 - spent}"
    served = sum(1 for line in outcome if line.startswith("served"))
    assert spent + 30 * served <= 200 and "refused" in outcome
    # Back in this process: the other's usage counts here too.
    response = post_chat(client, api_key, stream=False)
    assert response.status_code == 429


def test_a_lost_redis_total_is_rebuilt_from_the_audit_rows(client, api_key, consumer, ollama, redis_cache, db,
                                                          monkeypatch):
    import redis

    monkeypatch.setattr(budgets, "clock", lambda: datetime.now(timezone.utc))
    budget(consumer, day=100_000)
    for _ in range(3):
        assert post_chat(client, api_key, stream=False).status_code == 200
    spent = charged_total(consumer)
    raw = redis.Redis.from_url(REDIS_URL)
    totals = [key for key in raw.scan_iter(f"{redis_cache}:*") if key.endswith(b":used")]
    assert len(totals) == 1 and int(raw.get(totals[0])) == spent
    # It expires a day after its window.
    day_end = budgets.windows_at(datetime.now(timezone.utc))[0].end
    assert raw.ttl(totals[0]) == pytest.approx((day_end + timedelta(days=1) - datetime.now(timezone.utc))
                                               .total_seconds(), abs=5)
    raw.delete(totals[0])  # Redis restarted without its data
    response = post_chat(client, api_key, stream=False)
    assert int(response["X-Budget-Remaining-Tokens"]) == 100_000 - charged_total(consumer)
    assert int(raw.get(totals[0])) == charged_total(consumer) > spent


def test_a_reservation_of_a_process_that_died_expires(consumer, redis_cache, db, settings, monkeypatch):
    settings.GENERATION_DEADLINE = 10
    budget(consumer, day=100)
    consumer.refresh_from_db()
    # Reserved and never settled: their process died.
    assert budgets.admit(consumer=consumer, options={"num_predict": 50}, estimate=10).tokens == 10 + 50
    assert budgets.admit(consumer=consumer, options={"num_predict": 50}, estimate=10).tokens == 40  # the room left
    with pytest.raises(budgets.BudgetExceeded):
        budgets.admit(consumer=consumer, options={"num_predict": 50}, estimate=10)
    later = NOON + timedelta(seconds=10 + budgets.RESERVATION_MARGIN + 1)
    monkeypatch.setattr(budgets, "clock", lambda: later)
    assert budgets.admit(consumer=consumer, options={"num_predict": 50}, estimate=10).tokens == 60


# -- visibility and settings ------------------------------------------------------------------------------------------


def test_create_api_key_sets_and_lifts_budgets(db):
    call_command("create_api_key", "batch", "--tokens-per-day", "5000", "--tokens-per-month", "0",
                 stdout=open(os.devnull, "w"))
    consumer = Consumer.objects.get(name="batch")
    assert (consumer.tokens_per_day, consumer.tokens_per_month) == (5000, 0)
    call_command("create_api_key", "batch", "--tokens-per-month", "none", stdout=open(os.devnull, "w"))
    consumer.refresh_from_db()
    assert (consumer.tokens_per_day, consumer.tokens_per_month) == (5000, None)


def test_the_admin_page_and_metrics_warn_past_80_percent(client, api_key, consumer, ollama, admin_client,
                                                         monkeypatch):
    monkeypatch.setattr(budgets, "clock", lambda: datetime.now(timezone.utc))
    budget(consumer, day=10_000, month=100_000)
    post_chat(client, api_key, stream=False)
    spent = Generation.objects.get().budget_tokens
    page = admin_client.get(f"/admin/llm/consumer/{consumer.pk}/change/").content.decode()
    assert f"{spent} of 10000 tokens today" in page and "past 80" not in page
    metrics = admin_client.get("/metrics").content.decode()
    assert "llm_gateway_budget_consumers_over_warning 0.0" in metrics

    budget(consumer, day=spent + 1)
    page = admin_client.get(f"/admin/llm/consumer/{consumer.pk}/change/").content.decode()
    assert f"{spent} of {spent + 1} tokens today" in page and "past 80" in page
    metrics = admin_client.get("/metrics").content.decode()
    assert "llm_gateway_budget_consumers_over_warning 1.0" in metrics


def test_an_embedding_reserves_its_prompt_and_counts_its_prompt_tokens(consumer, db):
    """Embeddings reserve their input's estimate and nothing to produce, and count the prompt tokens their row
    reports, through the same two calls (end to end: the test after the next)."""
    budget(consumer, day=100)
    consumer.refresh_from_db()
    reservation = budgets.admit(consumer=consumer, estimate=30, options=None)
    assert reservation.tokens == 30
    row = Generation(consumer=consumer, status=Generation.Status.SUCCEEDED, prompt_tokens=12)
    assert budgets.charged(row, reservation.prompt_estimate) == 12
    budgets.settle(reservation, 12)
    # 12 used, nothing held any more.
    assert budgets.admit(consumer=consumer, estimate=88, options=None).remaining == 88
    with pytest.raises(budgets.BudgetExceeded):
        budgets.admit(consumer=consumer, estimate=1, options=None)  # 88 held by the one before


def test_an_unreachable_redis_counts_budgets_from_the_database_and_says_so_once(client, api_key, consumer, ollama,
                                                                               settings, refused_url, caplog):
    import logging

    port = refused_url.rsplit(":", 1)[1]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{port}/0",
                                   "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}}}
    settings.RATE_LIMIT_PER_MINUTE = 0
    caplog.set_level(logging.INFO, logger="llm.budgets")
    budget(consumer, day=60)
    ollama.reply = " ".join(f"word{i}" for i in range(200))
    started = time.monotonic()
    statuses = [post_chat(client, api_key, stream=False).status_code for _ in range(3)]
    assert statuses == [200, 429, 429]  # the rows' sum, in this process
    assert time.monotonic() - started < 2  # Redis's timeout waited once, not per request
    warnings = [r for r in caplog.records if r.name == "llm.budgets" and "Redis is unavailable" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.django_db(transaction=True)
def test_embedding_calls_count_and_are_refused_once_the_budget_is_spent(gateway, ollama, consumer):
    """Through both dialects: an embedding counts its prompt tokens, carries the budget's headers, and a spent
    budget refuses it (openai's RateLimitError after one request, Ollama's {"error"}), audited as an embedding."""
    ollama.models.append("nomic-embed-text:latest")
    budget(consumer, day=60)
    texts = ["The sky is blue today.", "Grass is green in spring."]
    with gateway.client() as http:
        first = http.post("/api/embed", json={"model": "nomic-embed-text", "input": texts})
    assert first.status_code == 200
    assert first.headers["X-Budget-Window"] == "day"
    used = first.json()["prompt_eval_count"]
    assert used > 0 and int(first.headers["X-Budget-Remaining-Tokens"]) == 60 - used
    row = Generation.objects.get()
    assert (row.kind, row.budget_tokens, row.completion_tokens) == ("embedding", used, None)

    budget(consumer, day=used)  # spent
    requests = []
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10,
                        http_client=httpx.Client(event_hooks={"request": [requests.append]}))
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.embeddings.create(model="nomic-embed-text", input=texts)
    assert len(requests) == 1 and raised.value.code == "insufficient_quota"
    with gateway.client() as http:
        refused = http.post("/api/embed", json={"model": "nomic-embed-text", "input": texts})
    assert refused.status_code == 429 and "budget" in refused.json()["error"]
    assert int(refused.headers["Retry-After"]) > 0
    rows = list(Generation.objects.order_by("created_at"))
    assert [(r.kind, r.error_type) for r in rows] == [("embedding", ""), ("embedding", "budget_exceeded"),
                                                     ("embedding", "budget_exceeded")]
    assert len([r for r in ollama.requests if r.path == "/api/embed"]) == 1  # never asked once spent


def test_a_generation_counts_in_the_window_it_started_in(consumer, redis_cache, db, monkeypatch):
    import redis

    budget(consumer, day=1000)
    consumer.refresh_from_db()
    before_midnight = NOON.replace(hour=23, minute=59, second=59)
    monkeypatch.setattr(budgets, "clock", lambda: before_midnight)
    started = budgets.admit(consumer=consumer, estimate=10, options={"num_predict": 50})
    # It ends after midnight: its tokens are the day it started in's.
    monkeypatch.setattr(budgets, "clock", lambda: before_midnight + timedelta(seconds=2))
    budgets.settle(started, 40)
    raw = redis.Redis.from_url(REDIS_URL)
    today = budgets.windows_at(before_midnight)[0]
    assert int(raw.get(budgets._total_key(consumer.pk, today))) == 40
    assert budgets.admit(consumer=consumer, estimate=10, options={"num_predict": 50}).remaining == 1000
