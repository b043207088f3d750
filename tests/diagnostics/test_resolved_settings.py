"""Resolved settings: effective values masked, their sources, and warnings about shadowed or suspicious values."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from gateway_project.environment import resolve
from diagnostics.resolved_settings import proxy_warnings, resolved_settings, settings_warnings


def env(tmp_path, os_values=None, file_text=None):
    path = tmp_path / ".env"
    path.write_text(file_text or "")
    return resolve({**(os_values or {}), "ENV_FILE": str(path)})


def messages(resolved):
    return [str(w) for w in settings_warnings(resolved)]


def test_an_os_variable_shadowing_the_env_file_is_named_with_both_values(tmp_path):
    resolved = env(tmp_path, {"OLLAMA_BASE_URL": "http://192.168.0.100:11434"},
                   "OLLAMA_BASE_URL=http://100.120.180.42:11434\n")

    assert resolved.sources["OLLAMA_BASE_URL"] == "environment"
    [warning] = settings_warnings(resolved)
    assert warning.id == "diagnostics.W001"
    assert str(warning).startswith(
        "OLLAMA_BASE_URL from the OS environment (http://192.168.0.100:11434) overrides the .env value "
        f"(http://100.120.180.42:11434) in {tmp_path / '.env'}.")
    assert "unset OLLAMA_BASE_URL" in str(warning)


def test_the_same_value_in_both_places_is_no_shadowing(tmp_path):
    resolved = env(tmp_path, {"OLLAMA_BASE_URL": "http://10.0.0.5:11434/"}, "OLLAMA_BASE_URL=http://10.0.0.5:11434\n")
    assert messages(resolved) == []


def test_a_shadowed_secret_is_masked_in_the_warning(tmp_path):
    resolved = env(tmp_path, {"DATABASE_URL": "postgres://app:hunter2@db:5432/gateway"},
                   "DATABASE_URL=postgres://app:swordfish@db:5432/gateway\nSECRET_KEY=abc\n")
    [warning] = messages(resolved)
    assert "postgres://app:********@db:5432/gateway" in warning
    assert "hunter2" not in warning and "swordfish" not in warning


def test_an_inline_comment_kept_in_a_value_is_named_with_the_fix(tmp_path):
    resolved = env(tmp_path, file_text="OLLAMA_DEFAULT_MODEL=llama3.2:1b # small and fast\n")

    assert resolved.values["OLLAMA_DEFAULT_MODEL"] == "llama3.2:1b # small and fast"  # what django-environ does
    [warning] = settings_warnings(resolved)
    assert warning.id == "diagnostics.W002"
    assert "keeps the inline comment ' # small and fast'" in warning.message
    assert 'OLLAMA_DEFAULT_MODEL="llama3.2:1b"' in warning.fix


def test_stray_quotes_and_whitespace_are_warned_about(tmp_path):
    resolved = env(tmp_path, {"OLLAMA_DEFAULT_MODEL": '"qwen2.5:7b"'}, "MOCK_RESPONSE_DELAY=' 0.5 '\n")
    found = messages(resolved)
    assert any("OLLAMA_DEFAULT_MODEL (from the OS environment) has quotes inside its value" in m for m in found)
    assert any("MOCK_RESPONSE_DELAY" in m and "whitespace" in m for m in found)


def test_a_base_url_with_a_path_is_warned_about(tmp_path):
    resolved = env(tmp_path, file_text="OLLAMA_BASE_URL=http://gpu-box:11434/api\n")
    [warning] = settings_warnings(resolved)
    assert warning.id == "diagnostics.W004"
    assert "has a path (/api)" in warning.message
    assert "requests would go to http://gpu-box:11434/api/api/chat" in warning.message
    assert "OLLAMA_BASE_URL=http://gpu-box:11434." in warning.fix


def test_a_shadowed_base_url_without_a_scheme_is_warned_about(tmp_path):
    resolved = env(tmp_path, {"OLLAMA_BASE_URL": "http://gpu-box:11434"}, "OLLAMA_BASE_URL=gpu-box:11434\n")
    found = messages(resolved)
    assert any("overrides the .env value (gpu-box:11434)" in m for m in found)


def test_a_short_timeout_is_warned_about_in_live_mode_only(tmp_path):
    live = env(tmp_path, {"GENERATOR_MODE": "live", "OLLAMA_TIMEOUT": "5"})
    assert [w.id for w in settings_warnings(live)] == ["diagnostics.W005"]
    assert "OLLAMA_TIMEOUT=5s (from the OS environment) is short for live mode" in messages(live)[0]
    assert messages(env(tmp_path, {"GENERATOR_MODE": "mock", "OLLAMA_TIMEOUT": "5"})) == []


def test_a_missing_env_file_named_by_env_file_is_warned_about(tmp_path):
    resolved = resolve({"ENV_FILE": str(tmp_path / "nope.env")})
    assert [w.id for w in settings_warnings(resolved)] == ["diagnostics.W007"]


def test_proxy_variables_are_named_as_ignored_with_passwords_masked():
    [warning] = proxy_warnings({"HTTPS_PROXY": "http://me:secret@proxy:3128", "PATH": "/usr/bin"})
    assert "HTTPS_PROXY=http://me:********@proxy:3128 is set, but the gateway ignores" in str(warning)


def test_resolved_settings_lists_every_setting_with_its_source_and_masks_secrets(tmp_path, settings):
    settings.GATEWAY_ENV = env(
        tmp_path, {"OLLAMA_BASE_URL": "http://ollama:pw@gpu-box:11434", "SECRET_KEY": "s3cr3t-key-value"},
        "DATABASE_URL=postgres://app:hunter2@db:5432/gateway\nOLLAMA_TIMEOUT=60\n")
    settings.OLLAMA_BASE_URL = settings.GATEWAY_ENV["OLLAMA_BASE_URL"]
    settings.OLLAMA_TIMEOUT = 60.0
    settings.SECRET_KEY = "s3cr3t-key-value"

    report = resolved_settings()

    rows = {s.name: s for s in report.settings}
    assert set(rows) >= {"GENERATOR_MODE", "OLLAMA_BASE_URL", "OLLAMA_TIMEOUT", "OLLAMA_DEFAULT_MODEL",
                         "MOCK_RESPONSE_DELAY", "DATABASE_URL", "DEBUG", "ALLOWED_HOSTS", "COMFYUI_BASE_URL"}
    assert (rows["OLLAMA_BASE_URL"].value, rows["OLLAMA_BASE_URL"].source) == (
        "http://ollama:********@gpu-box:11434", "environment")
    assert (rows["DATABASE_URL"].value, rows["DATABASE_URL"].source) == (
        "postgres://app:********@db:5432/gateway", "env_file")
    assert (rows["OLLAMA_TIMEOUT"].value, rows["OLLAMA_TIMEOUT"].source) == ("60", "env_file")
    assert (rows["SECRET_KEY"].value, rows["SECRET_KEY"].source) == ("********", "environment")
    assert rows["OLLAMA_DEFAULT_MODEL"].source == "default"
    assert report.env_file == str(tmp_path / ".env") and report.env_file_found
    text = str(report.as_dict())
    assert "hunter2" not in text and "s3cr3t" not in text and ":pw@" not in text


def test_a_setting_changed_after_start_up_says_so(settings):
    settings.OLLAMA_BASE_URL = "http://elsewhere:11434"
    rows = {s.name: s for s in resolved_settings().settings}
    assert (rows["OLLAMA_BASE_URL"].value, rows["OLLAMA_BASE_URL"].source) == ("http://elsewhere:11434", "override")


def test_an_inline_comment_that_breaks_a_value_is_named_in_the_start_up_error(tmp_path):
    with pytest.raises(ImproperlyConfigured) as raised:
        env(tmp_path, file_text="OLLAMA_TIMEOUT=30 # seconds\n")
    assert str(raised.value).startswith(f"OLLAMA_TIMEOUT='30 # seconds' (from {tmp_path / '.env'}) is invalid")
    assert "inline comment" in str(raised.value)
