"""Schemathesis against the gateway's own OpenAPI schema, in process: no 5xx, no response that contradicts it."""

import os
import time

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
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

# Loaded from the WSGI application itself at collection time (the schema view needs no database); requests go
# to the same application in process. (schemathesis.pytest.from_fixture does not work with pytest 9 yet.)
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())


@pytest.fixture(autouse=True)
def in_process_mock_gateway(db, settings):
    settings.GENERATOR_MODE = "mock"
    settings.MOCK_RESPONSE_DELAY = 0
    # As Django's test client does: the handler would otherwise close the test's database connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_key():
    """A key whose consumer has no rate limit: the fuzzer must reach validation, not the 429 wall."""
    return api_keys.issue_key(Consumer.objects.create(name="fuzzer", rate_limit_per_minute=0))[1]


@schema.parametrize()
@hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, **ON_CI_ONLY,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.filter_too_much])
def test_the_api_keeps_to_its_schema(case, fuzz_key):
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"}, checks=CHECKS)


def test_the_fuzzer_reaches_the_gateway(fuzz_key, shipped_templates):
    """A case built from the schema is answered 200 and audited: the fuzz run is not all 401s or 404s."""
    case = schema["/api/v1/llm/generate"]["POST"].Case(
        body={"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}})
    started = time.monotonic()

    response = case.call(headers={"Authorization": f"Bearer {fuzz_key}"})

    assert response.status_code == 200, response.text
    assert Generation.objects.get().consumer.name == "fuzzer"
    assert time.monotonic() - started < 5


def test_the_fuzzer_reaches_the_openai_dialect(fuzz_key):
    """A chat completion built from the schema is answered 200 and audited as the OpenAI dialect."""
    case = schema["/v1/chat/completions"]["POST"].Case(
        body={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "Hello"}]})

    response = case.call(headers={"Authorization": f"Bearer {fuzz_key}"})

    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert Generation.objects.get().dialect == "openai"
