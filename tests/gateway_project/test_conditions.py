"""Expected conditions are logged at warning once while they last (and when they clear), never as an error per
request: Ollama failing, clients asking for an endpoint that is not served, the database not ready."""

import logging

import pytest
from django.db import OperationalError, connection

from tests.conftest import SNS_REPLY

pytestmark = pytest.mark.django_db


def records(caplog, name):
    """The lines of a logger about a condition (not, say, the provider's start-up line)."""
    return [r for r in caplog.records if r.name == name and (hasattr(r, "condition") or name == "gateway.request")]


def test_ollama_failing_is_one_warning_until_it_answers_again(generate, valid_request, ollama, caplog):
    caplog.set_level(logging.INFO)
    ollama.reply = SNS_REPLY

    ollama.fault("status", status=503, message="server busy")
    failed = [generate(valid_request).status_code for _ in range(3)]
    outage = records(caplog, "llm.providers")
    ollama.clear_faults()
    caplog.clear()
    assert generate(valid_request).status_code == 200
    assert generate(valid_request).status_code == 200
    recovery = records(caplog, "llm.providers")
    caplog.clear()
    ollama.fault("reset")
    generate(valid_request)
    again = records(caplog, "llm.providers")

    assert failed == [502] * 3
    assert [r.levelname for r in outage] == ["WARNING"]
    assert outage[0].getMessage().startswith(f"Ollama requests are failing (upstream_error): Ollama at {ollama.url} "
                                             "answered HTTP 503: server busy")
    assert [(r.levelname, r.occurrences) for r in recovery] == [("INFO", 3)]
    assert "Ollama answers again" in recovery[0].getMessage()
    assert [r.levelname for r in again] == ["WARNING"]


def test_no_expected_failure_is_logged_as_an_error(generate, valid_request, ollama, settings, refused_url, caplog):
    caplog.set_level(logging.INFO)
    ollama.fault("status", status=500, message="llama runner process has terminated")
    generate(valid_request)
    ollama.clear_faults()
    settings.OLLAMA_BASE_URL = refused_url
    for _ in range(3):
        assert generate(valid_request).status_code == 503

    # Django's own line for each 5xx (django.request, at error) is not written: the gateway's request line says it.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[1].startswith("Ollama requests are failing (upstream_unavailable): Cannot connect to Ollama at ")
    lines = [r for r in records(caplog, "gateway.request")]
    assert [r.status for r in lines] == [502, 503, 503, 503]


def test_the_database_not_ready_is_one_warning_per_outage(client, caplog):
    def database_down(execute, sql, params, many, context):
        raise OperationalError("connection refused")

    caplog.set_level(logging.INFO, logger="diagnostics.health")
    with connection.execute_wrapper(database_down):
        statuses = [client.get("/readyz").status_code for _ in range(3)]
    statuses.append(client.get("/readyz").status_code)
    with connection.execute_wrapper(database_down):
        statuses.append(client.get("/readyz").status_code)

    assert statuses == [503, 503, 503, 200, 503]
    assert [(r.levelname, r.getMessage()) for r in records(caplog, "diagnostics.health")] == [
        ("WARNING", "database not ready: /readyz answers 503 until it is"),
        ("INFO", "database ready again"),
        ("WARNING", "database not ready: /readyz answers 503 until it is")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
