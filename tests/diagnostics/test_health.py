"""/healthz and /readyz: what a load balancer sees. Neither calls Ollama."""

import pytest
from django.db import OperationalError, connection


def test_healthz_answers_without_a_database(client, ollama):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert ollama.requests == []


@pytest.mark.django_db
def test_readyz_is_200_when_the_database_answers(client, ollama):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}
    assert ollama.requests == []


@pytest.mark.django_db
def test_readyz_is_503_when_the_database_fails(client):
    def database_down(execute, sql, params, many, context):
        raise OperationalError("connection to server at 10.0.0.9 failed: password authentication failed")

    with connection.execute_wrapper(database_down):
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "unavailable"}}
    assert "10.0.0.9" not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_readyz_answers_503_within_its_timeout_when_the_database_hangs(gateway, monkeypatch):
    import threading
    import time

    from diagnostics import views

    released = threading.Event()

    def hanging():
        released.wait(10)  # a database that neither answers nor fails
        return True

    monkeypatch.setattr(views, "database_ready", hanging)
    try:
        with gateway.client() as client:
            started = time.monotonic()
            response = client.get("/readyz")
            took = time.monotonic() - started
    finally:
        released.set()

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "unavailable"}}
    assert views.READY_TIMEOUT <= took < views.READY_TIMEOUT + 1
