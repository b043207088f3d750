"""Settings come from the OS environment, then the env file, then the code default, and bad values stop start-up."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from gateway_project.environment import BASE_DIR, resolve


def env_file(tmp_path, text: str) -> dict:
    path = tmp_path / "gateway.env"
    path.write_text(text)
    return {"ENV_FILE": str(path)}


def test_defaults_when_nothing_is_set(tmp_path):
    resolved = resolve({"ENV_FILE": str(tmp_path / "missing.env")})

    assert resolved.env_file_found is False
    assert resolved["GENERATOR_MODE"] == "mock"
    assert resolved["OLLAMA_BASE_URL"] == "http://localhost:11434"
    assert resolved["OLLAMA_TIMEOUT"] == 120
    assert resolved["OLLAMA_DEFAULT_MODEL"] == "qwen2.5:7b"
    assert resolved["MOCK_RESPONSE_DELAY"] == 1.0
    assert resolved["DEBUG"] is False
    assert resolved["DATABASE_URL"]["ENGINE"] == "django.db.backends.sqlite3"
    assert set(resolved.sources.values()) == {"default"}


def test_env_file_values_are_used(tmp_path):
    resolved = resolve(env_file(tmp_path, "GENERATOR_MODE=live\nOLLAMA_BASE_URL=http://10.0.0.5:11434/\n"
                                          "OLLAMA_TIMEOUT=30\n"))

    assert resolved.env_file_found is True
    assert resolved["GENERATOR_MODE"] == "live"
    assert resolved["OLLAMA_BASE_URL"] == "http://10.0.0.5:11434"  # trailing slash tolerated
    assert resolved["OLLAMA_TIMEOUT"] == 30
    assert resolved.sources["OLLAMA_BASE_URL"] == "env_file"
    assert resolved.sources["OLLAMA_DEFAULT_MODEL"] == "default"


def test_os_environment_wins_over_the_env_file_and_both_are_kept(tmp_path):
    environ = {**env_file(tmp_path, "OLLAMA_BASE_URL=http://100.120.180.42:11434\n"),
               "OLLAMA_BASE_URL": "http://192.168.0.100:11434"}

    resolved = resolve(environ)

    assert resolved["OLLAMA_BASE_URL"] == "http://192.168.0.100:11434"
    assert resolved.sources["OLLAMA_BASE_URL"] == "environment"
    assert resolved.file_values["OLLAMA_BASE_URL"] == "http://100.120.180.42:11434"
    assert resolved.os_values["OLLAMA_BASE_URL"] == "http://192.168.0.100:11434"


def test_env_file_is_not_written_into_os_environ(tmp_path):
    resolve(env_file(tmp_path, "OLLAMA_DEFAULT_MODEL=from-the-file\n"))

    assert os.environ.get("OLLAMA_DEFAULT_MODEL") != "from-the-file"


def test_relative_env_file_is_read_from_the_project_root():
    assert resolve({"ENV_FILE": "some.env"}).env_file == BASE_DIR / "some.env"


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("GENERATOR_MODE", "lve", "GENERATOR_MODE='lve' (from the OS environment) is invalid: allowed values are "
                                  "'mock', 'live'"),
        ("OLLAMA_TIMEOUT", "abc", "OLLAMA_TIMEOUT='abc' (from the OS environment) is invalid: expected a number"),
        ("OLLAMA_TIMEOUT", "0", "OLLAMA_TIMEOUT='0' (from the OS environment) is invalid: expected a number greater"),
        ("MOCK_RESPONSE_DELAY", "-1", "MOCK_RESPONSE_DELAY='-1'"),
        ("OLLAMA_BASE_URL", "localhost:11434", "expected an http:// or https:// URL"),
        ("DEBUG", "maybe", "DEBUG='maybe'"),
        ("DATABASE_URL", "nosuchdb://x", "DATABASE_URL=(hidden)"),
        ("METRICS_TOKEN", "short", "METRICS_TOKEN=(hidden) (from the OS environment) is invalid: expected empty or "
                                   "at least 16 characters"),
        ("METRICS_TOKEN", "sixteen chars and spaces", "METRICS_TOKEN=(hidden)"),
    ],
)
def test_invalid_values_name_the_variable_and_what_is_allowed(tmp_path, name, value, expected):
    with pytest.raises(ImproperlyConfigured) as error:
        resolve({"ENV_FILE": str(tmp_path / "none.env"), name: value})

    assert expected in str(error.value)


def test_invalid_value_in_the_env_file_names_the_file(tmp_path):
    environ = env_file(tmp_path, "GENERATOR_MODE=lve\n")

    with pytest.raises(ImproperlyConfigured, match=r"from .*gateway\.env\) is invalid"):
        resolve(environ)


def run_manage(*args, **env):
    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    environment.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=environment,
                          capture_output=True, text=True, timeout=60)


def test_start_up_stops_with_a_message_not_a_traceback(tmp_path):
    result = run_manage("check", GENERATOR_MODE="lve", ENV_FILE=str(tmp_path / "none.env"))

    assert result.returncode != 0
    assert "Configuration error: GENERATOR_MODE='lve'" in result.stderr
    assert "allowed values are 'mock', 'live'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_valid_configuration_passes_manage_check(tmp_path):
    result = run_manage("check", ENV_FILE=str(tmp_path / "none.env"))

    assert result.returncode == 0, result.stderr


def test_env_example_lists_every_setting_with_its_default():
    from gateway_project.environment import SPECS

    example = (Path(BASE_DIR) / ".env.example").read_text()
    for spec in SPECS:
        if spec.name in ("DATABASE_URL", "SECRET_KEY", "AUDIT_SPOOL_DIR"):
            assert f"{spec.name}=" in example  # commented: their defaults depend on the checkout
        else:
            assert f"{spec.name}={spec.default}\n" in example.replace("# ", ""), spec.name
