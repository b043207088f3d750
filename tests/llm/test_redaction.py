"""Secrets: payload values under secret-named keys are masked before storage (and before the model sees them);
no API key reaches the audit log, an error body or a log line."""

import json
import logging

import pytest
from pythonjsonlogger.json import JsonFormatter

from gateway_project.redaction import MASK, mask_url
from llm.models import Generation

pytestmark = pytest.mark.django_db

PAYLOAD = {
    "product": "Green tea",
    "password": "hunter2",
    "account": {"apiKey": "k-123456", "owner": "ann", "Authorization": "Bearer xyz"},
    "sessions": [{"access_token": "tok-987", "id": 3}],
    "client_secret": {"nested": "deep-secret-value"},
    "passport": "not a secret",
}
SECRETS = ("hunter2", "k-123456", "Bearer xyz", "tok-987", "deep-secret-value")
MASKED = {
    "product": "Green tea",
    "password": MASK,
    "account": {"apiKey": MASK, "owner": "ann", "Authorization": MASK},
    "sessions": [{"access_token": MASK, "id": 3}],
    "client_secret": MASK,
    "passport": "not a secret",
}


def stored_text(row: Generation) -> str:
    return json.dumps([str(getattr(row, f.attname)) for f in Generation._meta.fields], ensure_ascii=False)


@pytest.fixture
def every_field_template(make_template):
    """A template that puts every PAYLOAD field into the prompt, so that what reaches the model can be checked."""
    make_template("redaction", "check", user_template="About {product}: {password} {account} {sessions} "
                                                      "{client_secret} {passport}")
    return {"role": "redaction", "task": "check"}


def test_secret_values_are_masked_in_the_audit_row_and_never_sent(generate, every_field_template, ollama):
    response = generate({**every_field_template, "payload": PAYLOAD})

    assert response.status_code == 200, response.content
    row = Generation.objects.get()
    assert row.request["payload"] == MASKED
    sent = json.dumps(ollama.requests[-1].json)
    for secret in SECRETS:
        assert secret not in stored_text(row)
        assert secret not in sent
    assert "not a secret" in sent  # "passport" is not "password"


def test_masking_happens_for_rejected_requests_too(generate, valid_request):
    response = generate({**valid_request, "payload": PAYLOAD, "unknown": 1})

    assert response.status_code == 400
    row = Generation.objects.get()
    assert row.request["payload"] == MASKED
    assert all(secret not in stored_text(row) for secret in SECRETS)


def test_the_list_of_secret_keys_is_configurable(generate, valid_request, settings):
    settings.REDACT_KEYS = ("ssn", "card_number")

    generate({**valid_request, "payload": {"ssn": "123-45-6789", "cardNumber": "4111", "password": "kept"}})

    assert Generation.objects.get().request["payload"] == {"ssn": MASK, "cardNumber": MASK, "password": "kept"}


class Collect(logging.Handler):
    """Every log record, rendered as the gateway's JSON log lines are (message and extra fields)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines():
    handler = Collect()
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in ("gateway", "llm", "django")]
    levels = [logger.level for logger in loggers]
    root.addHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    yield handler.lines
    root.removeHandler(handler)
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def test_logs_never_contain_an_api_key(generate, valid_request, api_key, ollama, log_lines):
    wrong_key = "gw_0badc0de_wrong-key-that-must-not-be-logged"
    ollama.fault("status", status=500, times=1)

    generate(valid_request)  # retried once, then served
    generate(valid_request, key=None, HTTP_X_API_KEY=api_key)
    generate(valid_request, key=wrong_key)
    generate({"role": 1})
    ollama.fault("status", status=500)
    generate(valid_request)  # fails after retries: logged as an error

    assert len(log_lines) >= 5
    text = "\n".join(log_lines)
    assert '"path": "/api/v1/llm/generate"' in text
    assert '"consumer": "test-team"' in text  # who called is logged; with which key is not
    for secret in (api_key, api_key.split("_", 2)[2], wrong_key, "wrong-key-that-must-not-be-logged"):
        assert secret not in text


@pytest.mark.parametrize("url, shown", [
    ("postgres://app:hunter2@db:5432/gateway", "postgres://app:********@db:5432/gateway"),
    ("http://ops:hunter2@ollama-box:99999", "http://ops:********@ollama-box:99999"),  # a port out of range
    ("http://ops:hunter2@ollama-box:port", "http://ops:********@ollama-box:port"),  # a port that is no number
    ("http://ops:hun@ter2@[::1]:11434/x?y=1", "http://ops:********@[::1]:11434/x?y=1"),  # "@" in the password
    ("redis://:hunter2@cache:6379/0", "redis://:********@cache:6379/0"),
    ("http://ops@ollama-box:11434", "http://ops@ollama-box:11434"),  # a user name alone is no secret
    ("http://ollama-box:11434", "http://ollama-box:11434"),
    ("http://[::1", "********"),  # not a URL at all
])
def test_mask_url_hides_the_password_of_any_url(url, shown):
    assert mask_url(url) == shown
