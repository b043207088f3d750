"""Schemathesis against the gateway's own OpenAPI schema, over a socket to the ASGI server as production serves
it: no 5xx, no response that contradicts the schema."""

import os
import time

import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from llm import api_keys
from llm.models import Consumer, Generation

# On CI the search is derandomized (the same inputs every run, no example database), so that CI passes or fails
# reproducibly; on a developer's machine every run explores new inputs.
ON_CI_ONLY = {"derandomize": True, "database": None} if os.environ.get("CI") else {}
# Bounded so that the run stays well under a minute on CI's two cores; raise it locally for a deeper search.
MAX_EXAMPLES = 150
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
          negative_data_rejection]

# The schema is read at collection time through Django's test client (its view needs no database); the requests
# go over HTTP to the gateway served by uvicorn (the `site` fixture), with no application attached to the schema.
# (schemathesis.pytest.from_fixture does not work with pytest 9 yet.)
schema = schemathesis.openapi.from_dict(
    Client(HTTP_HOST="localhost").get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json())


@pytest.fixture(autouse=True)
def base_url(site, settings):
    """The mock gateway, served: a stream that a request asks for runs on the server's event loop, as in production."""
    settings.GENERATOR_MODE = "mock"
    settings.MOCK_RESPONSE_DELAY = 0
    return site.url


@pytest.fixture
def fuzz_key():
    """A key whose consumer has no rate limit: the fuzzer must reach validation, not the 429 wall."""
    return api_keys.issue_key(Consumer.objects.create(name="fuzzer", rate_limit_per_minute=0))[1]


@schema.parametrize()
@hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, **ON_CI_ONLY,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.filter_too_much])
def test_the_api_keeps_to_its_schema(case, fuzz_key, base_url):
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {fuzz_key}"}, checks=CHECKS)


def test_the_fuzzer_reaches_the_gateway(fuzz_key, shipped_templates, base_url):
    """A case built from the schema is answered 200 and audited: the fuzz run is not all 401s or 404s."""
    case = schema["/api/v1/llm/generate"]["POST"].Case(
        body={"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}})
    started = time.monotonic()

    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {fuzz_key}"})

    assert response.status_code == 200, response.text
    assert Generation.objects.get().consumer.name == "fuzzer"
    assert time.monotonic() - started < 5


def test_the_fuzzer_reaches_the_openai_dialect(fuzz_key, base_url):
    """A chat completion built from the schema is answered 200 and audited as the OpenAI dialect."""
    case = schema["/v1/chat/completions"]["POST"].Case(
        body={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "Hello"}]})

    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {fuzz_key}"})

    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert Generation.objects.get().dialect == "openai"
