"""Invalid settings: the gateway refuses to start with one, check_ollama runs and reports every one of them.

Table-driven over environment.SPECS: a setting added to SPECS without a wrong-value example here fails
test_every_setting_has_a_wrong_value_example, and with one it is covered by every test below.
"""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway_project.environment import SPECS
from tests.fake_ollama import free_port_refused

ROOT = Path(__file__).resolve().parents[2]
# Passwords planted in the wrong values: they must never appear in any output.
PLANTED_SECRET = "hunter2"

# One wrong value per setting, as an operator might write it.
WRONG_VALUES = {
    "GENERATOR_MODE": "lve",
    "OLLAMA_BASE_URL": "127.0.0.1:11434",
    "OLLAMA_TIMEOUT": "soon",
    "OLLAMA_CONNECT_TIMEOUT": "0",
    "OLLAMA_MAX_RETRIES": "11",
    "OLLAMA_RETRY_BACKOFF": "-1",
    "OLLAMA_DEFAULT_MODEL": " ",
    "MOCK_RESPONSE_DELAY": "1s",
    "COMFYUI_BASE_URL": "comfyui:8188",
    "DATABASE_URL": f"postgress://gateway:{PLANTED_SECRET}@db:5432/gateway",
    "CACHE_URL": f"redis//:{PLANTED_SECRET}@127.0.0.1:6379/0",
    "SECRET_KEY": f"django-insecure-{PLANTED_SECRET}",
    "DEBUG": "maybe",
    "BEHIND_TLS_PROXY": "yes please",
    "SECURE_HSTS_SECONDS": "1y",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "2",
    "SECURE_HSTS_PRELOAD": "sure",
    "GENERATION_DEADLINE": "0",
    "UPSTREAM_MAX_IN_FLIGHT": "-1",
    "UPSTREAM_QUEUE_TIMEOUT": "forever",
    "DEFAULT_MAX_CONCURRENT": "unlimited",
    "GRACEFUL_TIMEOUT": "-5",
    "DATABASE_POOL_SIZE": "0",
    "AUDIT_RETENTION_DAYS": "90d",
    "AUDIT_SPOOL_DIR": "var/audit-spool",
    "AUDIT_SPOOL_MAX_MB": "1GB",
    "CHAT_MAX_BODY_BYTES": "1MiB",
    "CHAT_MAX_IMAGE_BODY_BYTES": "20MiB",
    "KEEP_ALIVE_MAX": "forever",
    "NUM_CTX_MAX": "200000",
    "EMBEDDING_MAX_INPUTS": "0",
    "EMBEDDING_MAX_INPUT_CHARS": "lots",
    "EMBEDDING_MAX_DIMENSIONS": "-1",
    "EMBEDDING_STORED_INPUT_CHARS": "4k",
    "END_USER_HEADERS": "X-User: email",
    "OLLAMA_DIALECT_ORIGINS": "chat.example.com",
    "REQUEST_HEADER_TIMEOUT": "0",
    "REQUEST_BODY_TIMEOUT": "30s",
    "METRICS_TOKEN": "too short",
    "CONTENT_HMAC_KEY": "too short",
    "RATE_LIMIT_PER_MINUTE": "60/min",
    "BUDGET_SHADOW_MODE": "sometimes",
    "BUDGET_COMPLETION_ESTIMATE": "0",
    "FAILED_KEYS_PER_MINUTE": "30/min",
    "PASSWORD_FAILURE_MAX_DELAY": "5m",
    "REDACT_KEYS": "password;token",
    "ALLOWED_HOSTS": "https://gateway.example.com",
    "LOG_LEVEL": "verbose",
}
SETTINGS = [spec.name for spec in SPECS]
SECRET = {spec.name for spec in SPECS if spec.secret}


def test_every_setting_has_a_wrong_value_example():
    missing = [name for name in SETTINGS if name not in WRONG_VALUES]
    assert not missing, f"add a wrong value for {missing} to WRONG_VALUES: the tests below then cover it"


@pytest.fixture
def start_env(tmp_path):
    """An OS environment in which the gateway starts cleanly, apart from what a test adds: no env file, a
    database of its own, an Ollama that refuses connections, and none of the developer's own settings."""
    (tmp_path / "empty.env").write_text("")
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS and k != "DJANGO_SETTINGS_MODULE"}
    return {**clean, "ENV_FILE": str(tmp_path / "empty.env"), "DATABASE_URL": f"sqlite:///{tmp_path}/gateway.db",
            "OLLAMA_BASE_URL": free_port_refused(), "SECRET_KEY": "test-" + "s" * 50, "DEBUG": "false"}


def manage(*args, env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("name", SETTINGS)
def test_the_server_refuses_to_start_with_a_wrong_value(start_env, name):
    result = manage("check", env={**start_env, name: WRONG_VALUES[name]})

    assert result.returncode == 1
    assert result.stderr.startswith(f"Configuration error: {name}"), result.stderr
    assert "Traceback" not in result.stderr
    assert PLANTED_SECRET not in result.stderr


@pytest.mark.parametrize("name", SETTINGS)
def test_check_ollama_json_reports_a_wrong_value(start_env, name):
    result = manage("check_ollama", "--json", env={**start_env, name: WRONG_VALUES[name]})

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Configuration error" not in result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    cause = report["cause"]
    assert set(cause) == {"code", "setting", "value", "source", "message", "fix"}
    assert (cause["code"], cause["setting"], cause["source"]) == ("invalid_setting", name, "environment")
    if name in SECRET:
        assert PLANTED_SECRET not in cause["value"]
    else:
        assert cause["value"] == WRONG_VALUES[name]
    assert cause["message"].startswith(f"{name}=") and "(from the OS environment) is invalid: " in cause["message"]
    assert name in cause["fix"]
    assert report["invalid_settings"] == [cause]
    assert PLANTED_SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("name", SETTINGS)
def test_check_ollama_text_reports_a_wrong_value(start_env, name):
    result = manage("check_ollama", env={**start_env, name: WRONG_VALUES[name]})

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Configuration error" not in result.stderr
    lines = result.stdout.splitlines()
    assert "FAILED: invalid_setting" in lines
    cause = next(line for line in lines if line.startswith("  Cause: "))
    assert cause.startswith(f"  Cause: {name}=") and "(from the OS environment) is invalid: " in cause
    assert any(line.startswith("  Fix:   ") and name in line for line in lines)
    assert PLANTED_SECRET not in result.stdout + result.stderr


def test_a_base_url_without_scheme_is_reported_in_json_without_probing_a_default(start_env):
    # The case: with the default standing in for it, the check must not probe localhost instead.
    result = manage("check_ollama", "--json", env={**start_env, "OLLAMA_BASE_URL": "127.0.0.1:11434"})

    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["cause"]["setting"] == "OLLAMA_BASE_URL"
    assert report["cause"]["message"].startswith("OLLAMA_BASE_URL='127.0.0.1:11434' (from the OS environment) is "
                                                 "invalid: expected an http:// or https:// URL")
    assert (report["target_url"], report["source"]) == ("127.0.0.1:11434", "environment")
    assert report["steps"] == []


def test_every_invalid_value_is_listed_the_first_is_the_cause(start_env, tmp_path):
    (tmp_path / "gateway.env").write_text("OLLAMA_TIMEOUT=soon\n")
    env = {**start_env, "ENV_FILE": str(tmp_path / "gateway.env"), "GENERATOR_MODE": "lve",
           "LOG_LEVEL": "verbose"}

    report = json.loads(manage("check_ollama", "--json", env=env).stdout)
    text = manage("check_ollama", env=env).stdout

    assert [(e["setting"], e["source"]) for e in report["invalid_settings"]] == [
        ("GENERATOR_MODE", "environment"), ("OLLAMA_TIMEOUT", "env_file"), ("LOG_LEVEL", "environment")]
    assert report["cause"] == report["invalid_settings"][0]
    assert f"Correct OLLAMA_TIMEOUT in {tmp_path / 'gateway.env'}" in report["invalid_settings"][1]["fix"]
    assert "Also invalid: OLLAMA_TIMEOUT" in text and "Also invalid: LOG_LEVEL" in text


def test_a_working_ollama_does_not_pass_the_check_while_a_setting_is_invalid(start_env, ollama_server):
    ollama_server.reset()
    env = {**start_env, "OLLAMA_BASE_URL": ollama_server.url, "RATE_LIMIT_PER_MINUTE": "60/min"}

    result = manage("check_ollama", "--json", env=env)

    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert all(step["ok"] for step in report["steps"]) and len(report["steps"]) == 5
    assert report["cause"]["setting"] == "RATE_LIMIT_PER_MINUTE"


def test_the_run_is_recorded_unless_the_database_url_is_the_invalid_one(start_env, tmp_path):
    migrate = manage("migrate", "--noinput", env=start_env)
    assert migrate.returncode == 0, migrate.stderr

    recorded = manage("check_ollama", env={**start_env, "LOG_LEVEL": "verbose"})
    # The default database stands in for an invalid DATABASE_URL: the run must not be written there.
    not_recorded = manage("check_ollama", env={**start_env, "DATABASE_URL": WRONG_VALUES["DATABASE_URL"]})

    assert "not recorded" not in recorded.stdout
    assert "! This run was not recorded in the check history: DATABASE_URL is invalid." in not_recorded.stdout
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        assert db.execute("SELECT cause FROM diagnostics_connectioncheck").fetchall() == [("invalid_setting",)]


# A URL with credentials and a port that cannot be: the parsers and the masking must both cope with it.
BAD_PORT_WITH_CREDENTIALS = {
    "OLLAMA_BASE_URL": f"http://ops:{PLANTED_SECRET}@ollama-box:99999",
    "COMFYUI_BASE_URL": f"http://ops:{PLANTED_SECRET}@comfy-box:port",
    "DATABASE_URL": f"postgres://gateway:{PLANTED_SECRET}@db:99999/gateway",
    "CACHE_URL": f"redis://:{PLANTED_SECRET}@cache:99999/0",
}


@pytest.mark.parametrize("name", BAD_PORT_WITH_CREDENTIALS)
def test_a_url_with_credentials_and_a_bad_port_is_an_invalid_setting_not_a_traceback(start_env, name):
    env = {**start_env, name: BAD_PORT_WITH_CREDENTIALS[name]}

    refused = manage("check", env=env)
    checked = manage("check_ollama", "--json", env=env)
    text = manage("check_ollama", env=env)

    assert refused.returncode == 1 and refused.stderr.startswith(f"Configuration error: {name}"), refused.stderr
    report = json.loads(checked.stdout)
    assert checked.returncode == text.returncode == 1
    assert (report["cause"]["code"], report["cause"]["setting"]) == ("invalid_setting", name)
    assert "not a URL (Port" in report["cause"]["message"]
    # Shown masked, never as written: the password is nowhere, whatever else is wrong with the URL.
    assert "********@" in report["cause"]["value"]
    assert f"  Cause: {name}=" in text.stdout and "FAILED: invalid_setting" in text.stdout
    for output in (refused, checked, text):
        assert "Traceback" not in output.stderr
        assert PLANTED_SECRET not in output.stdout + output.stderr
