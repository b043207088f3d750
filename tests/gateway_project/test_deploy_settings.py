"""Production settings: `check --deploy` is clean with the documented environment; no start without a SECRET_KEY."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def empty_env_file(tmp_path_factory):
    """Only the variables a test passes count: not a developer's .env (nor a warning about a missing one)."""
    path = tmp_path_factory.mktemp("env") / "empty.env"
    path.write_text("")
    os.environ["DEPLOY_TEST_ENV_FILE"] = str(path)
    yield
    del os.environ["DEPLOY_TEST_ENV_FILE"]


def clean_environment(**env) -> dict:
    return {"PATH": os.environ["PATH"], "ENV_FILE": os.environ["DEPLOY_TEST_ENV_FILE"],
            "DJANGO_SETTINGS_MODULE": "gateway_project.settings", **env}


# The production environment the README documents (behind a TLS-terminating proxy).
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "gateway.example.com",
    "BEHIND_TLS_PROXY": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
}


def manage(*args, **env):
    """Run manage.py in a clean environment: only these variables, and an empty env file."""
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=clean_environment(**env),
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_the_documented_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_without_them():
    result = manage("check", "--deploy", "--fail-level", "WARNING", DEBUG="false", SECRET_KEY=PRODUCTION["SECRET_KEY"])

    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


@pytest.mark.parametrize("secret_key", [None, "", "django-insecure-abc"])
def test_debug_off_refuses_to_start_without_a_real_secret_key(secret_key):
    env = {"DEBUG": "false"} if secret_key is None else {"DEBUG": "false", "SECRET_KEY": secret_key}

    result = manage("check", **env)

    assert result.returncode != 0
    assert "Configuration error: SECRET_KEY must be set" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_on_runs_with_the_development_key_for_the_quickstart():
    result = manage("check", DEBUG="true")

    assert result.returncode == 0, result.stderr


def settings_of(**env) -> dict:
    names = ["SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
             "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD"]
    code = ("import django, json; django.setup(); from django.conf import settings; "
            f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, env=clean_environment(**env),
                            capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_behind_tls_proxy_switches_on_https_only_cookies_redirect_and_hsts():
    assert settings_of(**PRODUCTION) == {
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"], "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True, "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True, "SECURE_HSTS_PRELOAD": True,
    }
    # Off (the default), a plain-HTTP development server keeps working.
    assert settings_of(DEBUG="true") == {
        "SECURE_PROXY_SSL_HEADER": None, "SECURE_SSL_REDIRECT": False, "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False, "SECURE_HSTS_SECONDS": 0, "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
    }
