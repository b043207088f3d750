"""Under load, with Ollama failing now and then: every request gets the right answer and exactly one audit row."""

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.test import Client

from llm import api_keys
from llm.models import Consumer, Generation
from tests.conftest import GENERATE_URL, LONG_WINDOW, SNS_REPLY

REQUESTS = 200
THREADS = 20
LIMITED_CONSUMER_LIMIT = 10

# What each kind of request may be answered with. 502/503 appear only where every try hit an injected fault.
EXPECTED = {
    "json": {200, 502},
    "text": {200, 502},
    "unknown_model": {404, 502},
    "invalid": {400},
    "no_key": {401},
    "limited": {200, 429, 502},
}
KINDS = ["json", "json", "json", "json", "text", "unknown_model", "invalid", "no_key", "limited", "limited"]


@pytest.mark.django_db(transaction=True)
def test_200_requests_from_20_threads_with_faults_each_answered_and_audited_once(ollama, valid_request, settings,
                                                                                 shipped_templates):
    settings.OLLAMA_MAX_RETRIES = 2
    settings.RATE_LIMIT_WINDOW_SECONDS = LONG_WINDOW  # no window boundary in mid-test
    settings.DEFAULT_MAX_CONCURRENT = 0  # 20 threads of one consumer: its rate limit is what is tested here
    main_key = api_keys.issue_key(Consumer.objects.create(name="main", rate_limit_per_minute=0))[1]
    limited = Consumer.objects.create(name="limited", rate_limit_per_minute=LIMITED_CONSUMER_LIMIT)
    limited_key = api_keys.issue_key(limited)[1]
    ollama.reply = SNS_REPLY
    ollama.models.remove("llama3.2:1b")  # a model the template allows, not pulled: 404 (named, so no fallback)
    ollama.fault("slow", delay=0.02, times=30)
    ollama.fault("status", status=503, message="server busy, please try again.", times=40)
    ollama.fault("reset", times=15)

    def request(index):
        kind = KINDS[index % len(KINDS)]
        body = {**valid_request, "payload": {"product": f"Tea {index}", "tone": "calm"}}
        headers = {"HTTP_AUTHORIZATION": f"Bearer {limited_key if kind == 'limited' else main_key}"}
        if kind == "text":
            body["mode"] = "text"
        elif kind == "unknown_model":
            body["model"] = "llama3.2:1b"
        elif kind == "invalid":
            body["options"] = {"temperature": 9}
        elif kind == "no_key":
            headers = {}
        try:
            response = Client().post(GENERATE_URL, data=body, content_type="application/json", **headers)
        finally:
            connections.close_all()  # each worker thread opened its own connection
        return index, kind, response

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(request, range(REQUESTS)))
    elapsed = time.monotonic() - started

    assert elapsed < 60
    assert len(results) == REQUESTS
    rows = {str(row.id): row for row in Generation.objects.select_related("consumer")}
    assert len(rows) == REQUESTS  # exactly one row per request...
    for index, kind, response in results:
        assert response.status_code in EXPECTED[kind], (index, kind, response.content)
        row = rows[response["X-Request-ID"]]  # ...and it is this request's
        assert row.http_status == response.status_code
        assert row.status == ("succeeded" if response.status_code == 200 else "failed")
        if response.status_code != 200:
            assert row.error_type == response.json()["error"]["type"]
        assert row.consumer_id == {"no_key": None, "limited": limited.pk}.get(kind, row.consumer_id)
        if response.status_code in (502, 503):
            assert row.attempts == 3  # gave up only after OLLAMA_MAX_RETRIES retries
    statuses = Counter((kind, response.status_code) for _, kind, response in results)
    # The limit holds exactly under concurrency: 20 requests of a consumer allowed 10.
    assert statuses[("limited", 429)] == REQUESTS // len(KINDS) * 2 - LIMITED_CONSUMER_LIMIT
    assert statuses[("no_key", 401)] == REQUESTS // len(KINDS)
    assert statuses[("invalid", 400)] == REQUESTS // len(KINDS)
    assert statuses[("json", 200)] > 0 and statuses[("unknown_model", 404)] > 0
    # Every call that reached Ollama is accounted for in exactly one row's attempts, retries included.
    chat_calls = [r for r in ollama.requests if r.path == "/api/chat"]
    assert sum(row.attempts for row in rows.values()) == len(chat_calls)
    assert len(chat_calls) >= 40 + 15  # every injected fault was met
