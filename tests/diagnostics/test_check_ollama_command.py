"""manage.py check_ollama: text and JSON output, exit status, and the history row each run leaves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import OperationalError, connection

from diagnostics.models import ConnectionCheck
from tests.conftest import run_check_ollama as run

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def test_a_passing_check_prints_a_line_per_step_and_exits_0(ollama):
    status, out = run()

    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(
        f"Ollama at {ollama.url} (OLLAMA_BASE_URL from a run-time override of Django settings), model qwen2.5:7b")
    for name in ("resolve host", "connect", "GET /api/version", "GET /api/tags", "model"):
        assert any(line.startswith(f"  ✓ {name}") and " ms  " in line for line in lines), name
    assert any(line.startswith("OK in ") for line in lines)
    row = ConnectionCheck.objects.get()
    assert (row.origin, row.ok, row.cause, row.target_url) == ("command", True, "", ollama.url)
    assert set(row.timings) == {"resolve host", "connect", "GET /api/version", "GET /api/tags", "model"}


def test_a_failing_check_prints_cause_and_fix_and_exits_non_zero(ollama, settings, refused_url):
    settings.OLLAMA_BASE_URL = refused_url

    status, out = run()

    assert status == 1
    assert "  ✗ connect" in out
    assert "FAILED: connection_refused" in out
    assert "  Cause: Nothing listens at" in out
    assert "  Fix:   Start Ollama there" in out
    assert ConnectionCheck.objects.get().cause == "connection_refused"


def test_json_output_is_one_document_with_every_field(ollama):
    status, out = run("--json", "--generate", "--model", "llama3.2:1b", "--timeout", "3")

    assert status == 0
    report = json.loads(out)
    assert set(report) >= {"ok", "target_url", "source", "version", "models", "model", "model_available", "steps",
                           "cause", "warnings", "generation"}
    assert report["ok"] is True and report["cause"] is None
    assert report["model"] == "llama3.2:1b" and report["model_available"] is True
    assert report["version"] == "0.5.7"
    assert [s["name"] for s in report["steps"]][-1] == "test generation"
    assert set(report["steps"][0]) == {"name", "ok", "elapsed_ms", "detail"}
    assert report["generation"]["reply"].startswith("Echo:")
    assert ConnectionCheck.objects.get().generation is True


def test_json_output_of_a_failure(ollama):
    status, out = run("--json", "--model", "nope:1b")
    assert status == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["cause"]["code"] == "model_missing"
    assert "ollama pull nope:1b" in report["cause"]["fix"]


def test_a_timeout_of_zero_is_an_invalid_setting(ollama):
    status, out = run("--timeout", "0")
    assert status == 1
    assert "FAILED: invalid_setting" in out


def test_mock_mode_warns_that_the_mock_serves_requests(ollama, settings):
    settings.GENERATOR_MODE = "mock"
    status, out = run()
    assert status == 0
    assert "! GENERATOR_MODE=mock: requests are currently served by the mock provider" in out


def test_shadowing_is_named_in_the_output(ollama, gateway_env, refused_url):
    gateway_env({"OLLAMA_BASE_URL": refused_url}, f"OLLAMA_BASE_URL={ollama.url}\n")
    status, out = run()
    assert status == 1
    assert f"comes from the OS environment and overrides {ollama.url}" in out
    assert f"! OLLAMA_BASE_URL from the OS environment ({refused_url}) overrides the .env value ({ollama.url})" in out


def test_a_database_that_cannot_record_the_run_does_not_stop_the_check(ollama):
    def database_down(execute, sql, params, many, context):
        raise OperationalError("no such table: diagnostics_connectioncheck")

    with connection.execute_wrapper(database_down):
        status, out = run()

    assert status == 0
    assert "OK in " in out
    assert "! This run was not recorded in the check history: the database failed (no such table" in out


def test_the_env_file_path_is_named_as_the_source(ollama, gateway_env):
    resolved = gateway_env({}, f"OLLAMA_BASE_URL={ollama.url}\n")
    status, out = run()
    assert status == 0
    assert out.startswith(f"Ollama at {ollama.url} (OLLAMA_BASE_URL from {resolved.env_file}), model qwen2.5:7b")


def manage(*args, env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in {**os.environ, **env}.items() if v is not None})


def test_settings_that_do_not_load_are_reported_not_a_reason_to_refuse(tmp_path):
    # Every other command stops with "Configuration error: ..." (tests/gateway_project/test_environment.py);
    # the diagnosis runs and names the value (tests/diagnostics/test_invalid_settings.py covers every setting).
    (tmp_path / ".env").write_text("OLLAMA_TIMEOUT=soon\n")

    result = manage("check_ollama", env={"ENV_FILE": str(tmp_path / ".env"), "OLLAMA_TIMEOUT": None,
                                         "DATABASE_URL": f"sqlite:///{tmp_path}/db", "DJANGO_SETTINGS_MODULE": None})

    assert result.returncode == 1
    assert "FAILED: invalid_setting" in result.stdout
    assert f"  Cause: OLLAMA_TIMEOUT='soon' (from {tmp_path / '.env'}) is invalid" in result.stdout
    assert "Traceback" not in result.stderr
