"""One structured log line per request, carrying its id, and never a secret."""

import json
import logging

import pytest

pytestmark = pytest.mark.django_db


def request_lines(caplog):
    return [r for r in caplog.records if r.name == "gateway.request"]


def test_one_line_per_request_with_its_id_and_outcome(generate, valid_request, caplog):
    caplog.set_level(logging.INFO, logger="gateway.request")

    ok = generate(valid_request)
    failed = generate({"role": "x"})

    first, second = request_lines(caplog)
    assert first.request_id == ok["X-Request-ID"]
    assert (first.method, first.path, first.status) == ("POST", "/api/v1/llm/generate", 200)
    assert (first.provider, first.model) == ("mock", "qwen2.5:7b")
    assert first.duration_ms > 0
    assert second.request_id == failed["X-Request-ID"]
    assert (second.status, second.error_type) == (400, "invalid_request")


def test_the_line_is_json(generate, valid_request, caplog):
    caplog.set_level(logging.INFO, logger="gateway.request")
    generate(valid_request)
    from pythonjsonlogger.json import JsonFormatter

    line = JsonFormatter("%(levelname)s %(name)s %(message)s").format(request_lines(caplog)[0])

    data = json.loads(line)
    assert data["message"] == "request" and data["status"] == 200 and data["request_id"]


def test_query_strings_and_bodies_stay_out_of_the_log(client, generate, valid_request, caplog):
    caplog.set_level(logging.INFO, logger="gateway.request")

    client.get("/api/v1/llm/generate?api_key=sk-very-secret")
    generate({**valid_request, "payload": {"password": "hunter2-secret"}})

    text = " ".join(json.dumps(r.__dict__, default=str) for r in request_lines(caplog))
    assert "sk-very-secret" not in text and "hunter2-secret" not in text
    assert request_lines(caplog)[0].path == "/api/v1/llm/generate"
