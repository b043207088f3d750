"""What a generation adds to the metrics (single-process mode, as in every test but the gunicorn ones)."""

import asyncio
import logging

import pytest
from django.db import DatabaseError

from llm import metrics
from llm.models import Generation
from llm.providers import MockProvider
from tests.conftest import SNS_REPLY, assert_error, table_missing

pytestmark = pytest.mark.django_db

NATIVE = {"dialect": "native"}


def value(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Sample values before an action, to read what the action added (the registry outlives each test)."""

    def __init__(self):
        self.before = self._all()

    @staticmethod
    def _all() -> dict:
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in metrics.REGISTRY.collect() for s in family.samples}

    def __call__(self, name: str, **labels) -> float:
        key = (name, frozenset(labels.items()))
        return self._all().get(key, 0.0) - self.before.get(key, 0.0)

    def changed(self) -> dict:
        now = self._all()
        return {key: now[key] - self.before.get(key, 0.0) for key in now if now[key] != self.before.get(key, 0.0)}


def test_a_success_is_counted_once_in_every_family(generate, valid_request):
    delta = Delta()

    response = generate(valid_request)

    assert response.status_code == 200, response.content
    body = response.json()
    model, consumer = "qwen2.5:7b", "test-team"
    assert delta("llm_gateway_requests_total", outcome="succeeded", error_type="none", model=model,
                 consumer=consumer, **NATIVE) == 1
    assert delta("llm_gateway_request_duration_seconds_count", outcome="succeeded", model=model, **NATIVE) == 1
    assert delta("llm_gateway_request_duration_seconds_sum", outcome="succeeded", model=model,
                 **NATIVE) == pytest.approx(body["latency_ms"] / 1000)
    assert delta("llm_gateway_upstream_duration_seconds_sum", model=model,
                 **NATIVE) == pytest.approx(body["upstream_ms"] / 1000)
    assert delta("llm_gateway_overhead_seconds_sum", **NATIVE) == pytest.approx(
        (body["latency_ms"] - body["upstream_ms"]) / 1000)
    assert delta("llm_gateway_time_to_first_token_seconds_count", model=model, stream="false", **NATIVE) == 1
    assert delta("llm_gateway_tokens_total", type="prompt", model=model, consumer=consumer,
                 **NATIVE) == body["usage"]["prompt_tokens"] > 0
    assert delta("llm_gateway_tokens_total", type="completion", model=model, consumer=consumer,
                 **NATIVE) == body["usage"]["completion_tokens"] > 0
    assert delta("llm_gateway_upstream_retries_total") == 0
    assert value("llm_gateway_requests_in_flight", **NATIVE) == 0


def test_a_model_a_client_made_up_is_labelled_other(generate, valid_request):
    delta = Delta()

    assert_error(generate({**valid_request, "model": "my-own-model-1234"}), 400, "invalid_request")

    assert delta("llm_gateway_requests_total", outcome="failed", error_type="invalid_request", model="other",
                 consumer="test-team", **NATIVE) == 1
    assert not any("my-own-model-1234" in str(labels) for _, labels in delta.changed())


def test_a_model_the_template_allows_keeps_its_name_even_when_it_fails(generate, valid_request, ollama):
    ollama.models.remove("llama3.2:1b")
    delta = Delta()

    assert_error(generate({**valid_request, "model": "llama3.2:1b"}), 404, "model_not_found")

    assert delta("llm_gateway_requests_total", outcome="failed", error_type="model_not_found",
                 model="llama3.2:1b", consumer="test-team", **NATIVE) == 1


def test_a_caller_without_key_is_anonymous_with_no_model(generate, valid_request):
    delta = Delta()

    assert_error(generate(valid_request, key=None), 401, "not_authenticated")

    assert delta("llm_gateway_requests_total", outcome="failed", error_type="not_authenticated", model="none",
                 consumer="anonymous", **NATIVE) == 1
    assert delta("llm_gateway_overhead_seconds_count", **NATIVE) == 0  # no provider call, so no overhead of one


def test_rate_limit_refusals_are_counted_per_consumer(generate, valid_request, settings):
    settings.RATE_LIMIT_PER_MINUTE = 1
    settings.RATE_LIMIT_WINDOW_SECONDS = 10**9
    delta = Delta()

    assert generate(valid_request).status_code == 200
    assert_error(generate(valid_request), 429, "rate_limited")

    assert delta("llm_gateway_rate_limited_total", consumer="test-team", **NATIVE) == 1
    assert delta("llm_gateway_requests_total", outcome="failed", error_type="rate_limited", model="none",
                 consumer="test-team", **NATIVE) == 1


def test_upstream_retries_are_counted(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY
    ollama.fault("status", status=503, message="server busy, please try again.", times=2)
    delta = Delta()

    assert generate(valid_request).status_code == 200

    assert delta("llm_gateway_upstream_retries_total") == 2
    assert delta("llm_gateway_model_fallbacks_total", model="qwen2.5:7b") == 0


def test_a_fallback_is_counted_against_the_model_left(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY
    ollama.models[:] = ["llama3.2:3b"]  # the shipped templates' fallback, and only it
    delta = Delta()

    response = generate(valid_request)

    assert response.status_code == 200, response.content
    assert response.json()["model"] == "llama3.2:3b"
    assert delta("llm_gateway_model_fallbacks_total", model="qwen2.5:7b") == 1
    assert delta("llm_gateway_requests_total", outcome="succeeded", error_type="none", model="llama3.2:3b",
                 consumer="test-team", **NATIVE) == 1
    assert delta("llm_gateway_upstream_retries_total") == 0  # a fallback is a new call, not a retry


def test_json_mode_asking_the_same_model_again_is_no_fallback(generate, valid_request, ollama):
    ollama.reply = "Sure! Here is your caption."
    delta = Delta()

    assert_error(generate(valid_request), 502, "invalid_output")

    assert Generation.objects.get().attempts == 2
    assert delta("llm_gateway_model_fallbacks_total", model="qwen2.5:7b") == 0
    assert delta("llm_gateway_upstream_retries_total") == 0


def test_a_generation_is_in_flight_while_the_provider_works(generate, valid_request, monkeypatch):
    seen = []
    original = MockProvider.generate

    def generate_and_look(self, request):
        seen.append(value("llm_gateway_requests_in_flight", **NATIVE))
        return original(self, request)

    monkeypatch.setattr(MockProvider, "generate", generate_and_look)
    before = value("llm_gateway_requests_in_flight", **NATIVE)

    assert generate(valid_request).status_code == 200
    assert_error(generate(valid_request, key=None), 401, "not_authenticated")  # a raised error leaves too

    assert seen == [before + 1]
    assert value("llm_gateway_requests_in_flight", **NATIVE) == before


def test_in_flight_works_in_async_code_too():
    before = value("llm_gateway_requests_in_flight", dialect="openai")

    @metrics.in_flight(dialect="openai")
    async def answer():
        return value("llm_gateway_requests_in_flight", dialect="openai")

    async def around():
        async with metrics.in_flight(dialect="openai"):
            return value("llm_gateway_requests_in_flight", dialect="openai")

    assert asyncio.run(answer()) == before + 1
    assert asyncio.run(around()) == before + 1
    assert value("llm_gateway_requests_in_flight", dialect="openai") == before


@pytest.mark.django_db(transaction=True)
def test_an_audit_insert_that_fails_is_counted(generate, valid_request):
    delta = Delta()

    with table_missing("llm_generation"):
        assert_error(generate(valid_request), 503, "audit_unavailable")

    assert delta("llm_gateway_audit_write_failures_total", stage="insert") == 1


def test_an_audit_update_that_fails_is_counted_and_the_generation_still_counts(generate, valid_request,
                                                                                monkeypatch):
    original = Generation.save

    def save(self, *args, **kwargs):
        if kwargs.get("update_fields"):
            raise DatabaseError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Generation, "save", save)
    delta = Delta()

    assert generate(valid_request).status_code == 200  # the pending row exists: the reply is the client's

    assert delta("llm_gateway_audit_write_failures_total", stage="update") == 1
    assert delta("llm_gateway_requests_total", outcome="succeeded", error_type="none", model="qwen2.5:7b",
                 consumer="test-team", **NATIVE) == 1


def test_a_broken_metric_never_breaks_a_generation(generate, valid_request, monkeypatch, caplog):
    def broken(*labels):
        raise ValueError("metrics file unwritable")

    monkeypatch.setattr(metrics.REQUESTS, "labels", broken)
    monkeypatch.setattr(metrics.IN_FLIGHT, "labels", broken)

    with caplog.at_level(logging.ERROR, logger="llm.metrics"):
        response = generate(valid_request)

    assert response.status_code == 200, response.content
    assert Generation.objects.get().status == "succeeded"
    assert [r.hook for r in caplog.records if r.message == "metrics not recorded"] == [
        "__enter__", "observe_generation", "__exit__"]
