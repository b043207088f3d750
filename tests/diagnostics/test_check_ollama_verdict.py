"""The check's verdict is the gateway's: it passes only when a live generation with the same settings works.

Each case runs the check and then a real generation through the API with the same settings, against the
loopback Ollama with a slow-loading model (the `slow` fault, scaled down: a 1 s timeout, a 2 s load).
"""

import json

import pytest

from diagnostics.ollama_check import check_ollama_connection
from tests.conftest import SNS_REPLY, assert_error
from tests.conftest import run_check_ollama as run

pytestmark = pytest.mark.django_db
LOAD_SECONDS = 2


@pytest.fixture
def slow_model(ollama):
    """A model that needs LOAD_SECONDS to answer each chat; the probes stay fast."""
    ollama.fault("slow", paths="/api/chat", delay=LOAD_SECONDS)
    ollama.reply = SNS_REPLY
    return ollama


def test_a_generation_slower_than_ollama_timeout_fails_the_check_as_it_fails_the_gateway(
        slow_model, settings, generate, valid_request):
    settings.OLLAMA_TIMEOUT = 1

    report = check_ollama_connection(generate=True)

    cause = report.cause
    assert cause.code == "gateway_timeout"
    assert (cause.extra["setting"], cause.extra["limit_s"]) == ("OLLAMA_TIMEOUT", 1)
    assert LOAD_SECONDS <= cause.extra["measured_s"] < LOAD_SECONDS + 1
    assert f"took {cause.extra['measured_s']:.1f}s, but the gateway waits at most 1s (OLLAMA_TIMEOUT)" in cause.message
    assert "would fail with upstream_timeout (504)" in cause.message
    assert "Raise OLLAMA_TIMEOUT" in cause.fix and "OLLAMA_KEEP_ALIVE" in cause.fix and "keep_alive" in cause.fix
    assert report.steps[-1].name == "test generation" and not report.steps[-1].ok
    assert report.generation["elapsed_ms"] >= LOAD_SECONDS * 1000  # measured, not cut off at the gateway's limit
    # What the check predicted:
    assert_error(generate(valid_request), 504, "upstream_timeout")


def test_a_generation_within_the_timeouts_passes_the_check_and_works_in_the_gateway(
        slow_model, settings, generate, valid_request):
    settings.OLLAMA_TIMEOUT = LOAD_SECONDS * 3

    report = check_ollama_connection(generate=True)

    assert report.ok, report.cause
    assert report.generation["limit"] == {"setting": "OLLAMA_TIMEOUT", "seconds": LOAD_SECONDS * 3}
    assert not any("test generation took" in warning for warning in report.warnings)
    assert generate(valid_request).status_code == 200


def test_a_generation_that_uses_most_of_the_timeout_passes_with_a_warning(slow_model, settings):
    settings.OLLAMA_TIMEOUT = LOAD_SECONDS * 1.5

    report = check_ollama_connection(generate=True)

    assert report.ok
    assert any(w.startswith("The test generation took 2.") and "of the 3s that OLLAMA_TIMEOUT allows" in w
               for w in report.warnings)


def test_a_generation_slower_than_the_deadline_fails_the_check(slow_model, settings, generate, valid_request):
    settings.OLLAMA_TIMEOUT = 10
    settings.GENERATION_DEADLINE = 1

    report = check_ollama_connection(generate=True)

    assert report.cause.code == "gateway_timeout"
    assert report.cause.extra["setting"] == "GENERATION_DEADLINE"
    assert "the gateway waits at most 1s (GENERATION_DEADLINE)" in report.cause.message
    assert "Raise GENERATION_DEADLINE" in report.cause.fix
    # What the check predicted:
    error = assert_error(generate(valid_request), 504, "upstream_timeout")
    assert "GENERATION_DEADLINE" in error["message"]


def test_no_reply_within_a_wait_longer_than_the_gateway_s_is_a_gateway_timeout(ollama, settings):
    settings.OLLAMA_TIMEOUT = 0.5
    ollama.fault("hang", paths="/api/chat", limit=5)

    report = check_ollama_connection(generate=True, timeout=1)

    assert report.cause.code == "gateway_timeout"
    assert report.cause.extra["measured_s"] is None
    assert "got no reply within 1s, but the gateway waits at most 0.5s (OLLAMA_TIMEOUT)" in report.cause.message


def test_a_step_timeout_shorter_than_the_gateway_s_stays_a_failed_generation(ollama, settings):
    # --timeout 0.5 is the operator's own impatience: the gateway (OLLAMA_TIMEOUT=5) would have waited.
    ollama.fault("hang", paths="/api/chat", limit=5)

    report = check_ollama_connection(generate=True, timeout=0.5)

    assert report.cause.code == "generation_failed"


def test_a_connection_slower_than_the_gateway_s_connect_timeout_fails_the_check(ollama, settings):
    # The loopback server cannot connect slowly, so the limit is made shorter than any connect the check can
    # measure; a gateway whose connect takes longer than OLLAMA_CONNECT_TIMEOUT answers 503 upstream_unavailable.
    settings.OLLAMA_CONNECT_TIMEOUT = 1e-7

    report = check_ollama_connection()

    assert report.cause.code == "gateway_timeout"
    assert report.cause.extra["setting"] == "OLLAMA_CONNECT_TIMEOUT"
    assert "live generations would fail with upstream_unavailable (503)" in report.cause.message
    assert "Raise OLLAMA_CONNECT_TIMEOUT" in report.cause.fix
    assert all(step.ok for step in report.steps)  # every step passed with the check's own, patient timeouts


def test_the_command_shows_the_time_measured_next_to_the_timeout(slow_model, settings):
    settings.OLLAMA_TIMEOUT = 1

    status, out = run("--generate")
    json_status, json_out = run("--generate", "--json")

    assert status == json_status == 1
    assert "FAILED: gateway_timeout" in out
    assert "  Cause: The test generation with 'qwen2.5:7b' took 2." in out
    assert "but the gateway waits at most 1s (OLLAMA_TIMEOUT)" in out
    assert "  Fix:   Raise OLLAMA_TIMEOUT" in out
    cause = json.loads(json_out)["cause"]
    assert list(cause) == ["code", "setting", "limit_s", "measured_s", "message", "fix"]
    assert (cause["code"], cause["setting"], cause["limit_s"]) == ("gateway_timeout", "OLLAMA_TIMEOUT", 1)
