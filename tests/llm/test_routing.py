"""Model routing against the loopback Ollama test server: the template's model, its fallbacks, named models."""

import json

import pytest

from llm.models import Generation
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db

REPLY = json.dumps({"answer": "ok"})


@pytest.fixture
def routed(make_template):
    """A template whose model is primary:7b, falling back to backup:3b then last:1b; small:1b may be named."""
    return make_template("router", "test", model="primary:7b", fallback_models=["backup:3b", "last:1b"],
                         allowed_models=["small:1b"])


@pytest.fixture
def call(generate, routed):
    def post(**extra):
        return generate({"role": "router", "task": "test", "payload": {"word": "hello"}, **extra})

    return post


def models_sent(ollama):
    return [r.json["model"] for r in ollama.requests if r.path == "/api/chat"]


def only_row():
    rows = list(Generation.objects.all())
    assert len(rows) == 1, rows
    return rows[0]


def test_the_template_model_answers_when_it_is_there(call, ollama):
    ollama.models[:] = ["primary:7b", "backup:3b", "last:1b"]
    ollama.reply = REPLY

    body = call().json()

    assert body["model"] == "primary:7b"
    assert models_sent(ollama) == ["primary:7b"]
    row = only_row()
    assert row.model == "primary:7b"
    assert row.models_tried == [{"model": "primary:7b", "outcome": "succeeded"}]


def test_missing_models_fall_back_in_order(call, ollama):
    ollama.models[:] = ["last:1b"]
    ollama.reply = REPLY

    response = call()

    assert response.status_code == 200, response.content
    assert response.json()["model"] == "last:1b"
    assert models_sent(ollama) == ["primary:7b", "backup:3b", "last:1b"]
    row = only_row()
    assert row.status == "succeeded" and row.model == "last:1b"
    assert row.models_tried == [{"model": "primary:7b", "outcome": "model_not_found"},
                                {"model": "backup:3b", "outcome": "model_not_found"},
                                {"model": "last:1b", "outcome": "succeeded"}]


def test_no_model_left_is_404_with_a_pull_command_for_each(call, ollama):
    ollama.models[:] = ["unrelated:7b"]

    error = assert_error(call(), 404, "model_not_found")

    for name in ("primary:7b", "backup:3b", "last:1b"):
        assert f"ollama pull {name}" in error["message"]
    row = only_row()
    assert row.error_type == "model_not_found" and row.http_status == 404
    assert [t["outcome"] for t in row.models_tried] == ["model_not_found"] * 3


def test_a_model_that_fails_to_run_falls_back(call, ollama, settings):
    settings.OLLAMA_MAX_RETRIES = 0  # the provider's own retries of a 500 are tested in test_retries.py
    ollama.models[:] = ["primary:7b", "backup:3b"]
    ollama.reply = REPLY
    ollama.fault("status", times=1, status=500, message="model requires more system memory (9.1 GiB) than is available")

    response = call()

    assert response.status_code == 200, response.content
    assert response.json()["model"] == "backup:3b"
    assert only_row().models_tried == [{"model": "primary:7b", "outcome": "upstream_error"},
                                       {"model": "backup:3b", "outcome": "succeeded"}]


def test_when_every_model_fails_the_first_real_failure_is_answered(call, ollama, settings):
    settings.OLLAMA_MAX_RETRIES = 0
    ollama.models[:] = ["primary:7b"]  # the fallbacks are not pulled
    ollama.fault("status", times=1, status=500, message="llama runner process has terminated: exit status 2")

    error = assert_error(call(), 502, "upstream_error")

    tried = "Models tried: primary:7b (upstream_error), backup:3b (model_not_found), last:1b (model_not_found)"
    assert error["message"] == f"Ollama could not run model 'primary:7b' (HTTP 500). {tried}."
    # Ollama's own words (they may name files on its server) are the row's, for staff.
    assert "could not run model 'primary:7b': HTTP 500: llama runner process" in only_row().error_message
    assert tried in only_row().error_message


@pytest.mark.parametrize(
    "fault, params, status, type_",
    [
        ("status", {"status": 503, "message": "server busy, please try again."}, 502, "upstream_error"),
        ("malformed", {}, 502, "upstream_error"),
        ("reset", {}, 502, "upstream_error"),
    ],
)
def test_a_server_fault_does_not_fall_back(call, ollama, fault, params, status, type_):
    ollama.fault(fault, **params)

    assert_error(call(), status, type_)

    assert set(models_sent(ollama)) == {"primary:7b"}  # perhaps more than once: the provider retries some faults
    assert len(only_row().models_tried) == 1


def test_a_server_that_is_down_is_not_asked_for_other_models(call, settings, refused_url):
    settings.GENERATOR_MODE = "live"
    settings.OLLAMA_BASE_URL = refused_url

    assert_error(call(), 503, "upstream_unavailable")

    assert only_row().models_tried == [{"model": "primary:7b", "outcome": "upstream_unavailable"}]


def test_a_timeout_does_not_fall_back(call, ollama, settings):
    settings.OLLAMA_TIMEOUT = 0.3
    ollama.fault("slow", delay=2)

    assert_error(call(), 504, "upstream_timeout")

    assert models_sent(ollama) == ["primary:7b"]


@pytest.mark.parametrize("named", ["small:1b", "backup:3b"])
def test_a_request_may_name_a_model_the_template_allows(call, ollama, named):
    ollama.models[:] = ["primary:7b", named]
    ollama.reply = REPLY

    body = call(model=named).json()

    assert body["model"] == named
    assert models_sent(ollama) == [named]


def test_a_named_model_that_is_missing_has_no_silent_substitute(call, ollama):
    ollama.models[:] = ["primary:7b"]

    error = assert_error(call(model="small:1b"), 404, "model_not_found")

    assert "ollama pull small:1b" in error["message"]
    assert models_sent(ollama) == ["small:1b"]


def test_a_model_the_template_does_not_allow_is_400_listing_the_allowed_ones(call, ollama):
    error = assert_error(call(model="mistral:7b"), 400, "invalid_request")

    assert "Allowed: primary:7b, backup:3b, last:1b, small:1b" in error["message"]
    assert "model" in error["details"]
    assert ollama.requests == []
    row = only_row()
    assert row.model == "mistral:7b" and row.provider == "" and row.template_version is not None


def test_a_template_without_a_model_uses_the_gateway_default(generate, make_template, ollama, settings):
    settings.OLLAMA_DEFAULT_MODEL = "llama3.2:1b"
    make_template("plain", "default_model", fallback_models=["qwen2.5:7b"])
    ollama.reply = REPLY

    body = generate({"role": "plain", "task": "default_model", "payload": {"word": "hi"}}).json()

    assert body["model"] == "llama3.2:1b"
    assert models_sent(ollama) == ["llama3.2:1b"]


def test_template_options_are_defaults_a_request_overrides_key_by_key(generate, make_template, ollama):
    make_template("plain", "options", model="qwen2.5:7b", options={"temperature": 0.8, "num_ctx": 4096})
    ollama.reply = REPLY

    generate({"role": "plain", "task": "options", "payload": {"word": "hi"}, "options": {"temperature": 0.1}})

    assert ollama.requests[-1].json["options"] == {"temperature": 0.1, "num_ctx": 4096}


def test_the_mock_answers_with_the_first_model(call):
    body = call().json()

    assert (body["provider"], body["model"]) == ("mock", "primary:7b")
    assert only_row().models_tried == [{"model": "primary:7b", "outcome": "succeeded"}]
