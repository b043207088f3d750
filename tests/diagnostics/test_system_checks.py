"""`manage.py check` names invalid, shadowed and suspicious settings."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError


def check():
    out, err = StringIO(), StringIO()
    call_command("check", stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def test_clean_settings_pass(gateway_env):
    gateway_env({}, "")
    assert "System check identified no issues" in check()


def test_a_shadowed_value_is_a_warning_naming_both_values(gateway_env):
    gateway_env({"OLLAMA_BASE_URL": "http://192.168.0.100:11434"}, "OLLAMA_BASE_URL=http://100.120.180.42:11434\n")
    output = check()
    assert ("OLLAMA_BASE_URL: (diagnostics.W001) OLLAMA_BASE_URL from the OS environment (http://192.168.0.100:11434) "
            "overrides the .env value (http://100.120.180.42:11434)") in output
    assert "HINT: Unset it (`unset OLLAMA_BASE_URL`)" in output


def test_a_suspicious_value_that_parses_is_a_warning(gateway_env):
    gateway_env({"GENERATOR_MODE": "live", "OLLAMA_TIMEOUT": "3"}, "OLLAMA_DEFAULT_MODEL=qwen2.5:7b # default\n")
    output = check()
    assert "OLLAMA_DEFAULT_MODEL: (diagnostics.W002)" in output
    assert "OLLAMA_TIMEOUT: (diagnostics.W005) OLLAMA_TIMEOUT=3s (from the OS environment) is short" in output


def test_an_invalid_value_in_settings_is_an_error(gateway_env, settings):
    gateway_env({}, "")
    settings.OLLAMA_BASE_URL = "ollama:11434"
    with pytest.raises(SystemCheckError) as raised:
        check()
    assert "OLLAMA_BASE_URL: (diagnostics.E001) OLLAMA_BASE_URL='ollama:11434' is invalid" in str(raised.value)
