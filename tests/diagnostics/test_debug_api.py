"""The debug API: staff only (session or HTTP Basic), the check report as JSON, every error in the one shape."""

import base64

import pytest

from diagnostics.models import ConnectionCheck
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db
SETTINGS_URL = "/api/v1/debug/settings"
OLLAMA_URL = "/api/v1/debug/ollama"
GENERATE_URL = "/api/v1/debug/ollama/generate"
JSON = "application/json"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every Basic-auth request checks a password; the production hasher would make each take a third of a second."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def basic(username, password):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture
def staff(staff_user):
    return basic("operator", "correct-horse-battery")


ENDPOINTS = [("get", SETTINGS_URL), ("post", OLLAMA_URL), ("post", GENERATE_URL)]


@pytest.mark.parametrize("method, url", ENDPOINTS)
def test_anonymous_callers_get_401_with_a_basic_challenge(client, method, url):
    response = getattr(client, method)(url, content_type=JSON)
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize("method, url", ENDPOINTS)
def test_users_who_are_not_staff_get_403(client, django_user_model, method, url):
    django_user_model.objects.create_user("visitor", password="correct-horse-battery")
    response = getattr(client, method)(url, content_type=JSON, **basic("visitor", "correct-horse-battery"))
    assert_error(response, 403, "permission_denied")


def test_a_wrong_password_gets_401(client, staff_user):
    assert_error(client.get(SETTINGS_URL, **basic("operator", "wrong")), 401, "authentication_failed")


def test_settings_with_sources_warnings_and_masked_secrets(client, staff, gateway_env):
    gateway_env({"OLLAMA_BASE_URL": "http://ops:hunter2@192.168.0.100:11434"},
                "OLLAMA_BASE_URL=http://100.120.180.42:11434\nOLLAMA_DEFAULT_MODEL=llama3.2:1b\n")

    response = client.get(SETTINGS_URL, **staff)

    assert response.status_code == 200
    body = response.json()
    assert body["generator_mode"] == "mock"
    assert body["ollama_base_url"] == "http://ops:********@192.168.0.100:11434"
    assert body["ollama_timeout"] == 120
    assert body["ollama_default_model"] == "llama3.2:1b"
    assert body["comfyui_base_url"] == ""
    assert body["sources"]["OLLAMA_BASE_URL"] == "environment"
    assert body["sources"]["OLLAMA_DEFAULT_MODEL"] == "env_file"
    assert body["sources"]["GENERATOR_MODE"] == "default"
    assert body["env_file"]["found"] is True and body["env_file"]["path"].endswith("/.env")
    assert any("overrides the .env value (http://100.120.180.42:11434)" in w for w in body["warnings"])
    assert "hunter2" not in response.content.decode()


def test_the_session_of_a_staff_member_logged_in_to_the_admin_is_enough(client, staff_user):
    client.force_login(staff_user)
    assert client.get(SETTINGS_URL).status_code == 200


def test_ollama_check_report_with_the_seed_fields(client, staff, staff_user, ollama):
    response = client.post(OLLAMA_URL, content_type=JSON, **staff)

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["ok"] is True and body["error"] is None
    assert body["target_url"] == body["base_url_from_settings"] == ollama.url
    assert body["models"] == ["qwen2.5:7b", "llama3.2:1b"] and body["total_models"] == 2
    assert body["elapsed_ms"] > 0 and body["timestamp"]
    assert "generation" not in body
    row = ConnectionCheck.objects.get(pk=body["check_id"])
    assert (row.origin, row.user, row.username, row.ok) == ("api", staff_user, "operator", True)


def test_a_failed_check_is_reported_with_its_cause_as_the_error(client, staff, ollama, settings, refused_url):
    settings.OLLAMA_BASE_URL = refused_url
    body = client.post(OLLAMA_URL, content_type=JSON, **staff).json()
    assert body["success"] is False
    assert body["error"]["type"] == "connection_refused"
    assert body["error"]["message"].startswith("Nothing listens at")
    assert "OLLAMA_HOST" in body["error"]["details"]["fix"]


def test_generate_runs_a_test_generation(client, staff, ollama):
    ollama.reply = "ready"
    body = client.post(GENERATE_URL + "?model=llama3.2:1b", content_type=JSON, **staff).json()
    assert body["success"] is True
    assert body["generation"]["reply"] == "ready" and body["generation"]["length"] == 5
    assert ConnectionCheck.objects.get().generation is True


def test_a_timeout_that_is_not_a_number_is_a_400(client, staff, ollama):
    error = assert_error(client.post(OLLAMA_URL + "?timeout=soon", content_type=JSON, **staff), 400, "invalid_request")
    assert "timeout" in error["details"]
    assert ConnectionCheck.objects.count() == 0


@pytest.mark.parametrize("url", [OLLAMA_URL, GENERATE_URL])
def test_a_check_is_an_action_so_get_runs_nothing(client, staff, staff_user, ollama, url):
    # A link or an image on another site would send a GET with the staff member's cookie.
    client.force_login(staff_user)
    for extra in ({}, staff):
        error = assert_error(client.get(url, **extra), 405, "method_not_allowed")
        assert "use POST" in error["message"]
    assert ConnectionCheck.objects.count() == 0 and not ollama.requests


def test_options_may_come_as_a_json_body(client, staff, ollama):
    ollama.reply = "ready"
    body = client.post(GENERATE_URL, {"model": "llama3.2:1b", "timeout": 3}, content_type="application/json",
                       **staff).json()
    assert body["model"] == "llama3.2:1b" and body["success"] is True


@pytest.mark.parametrize("url", [OLLAMA_URL, GENERATE_URL])
def test_a_session_needs_the_csrf_token(staff_user, ollama, url):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff_user)
    browser.get("/admin/")  # the admin sets the CSRF cookie, as a staff member's browser has it
    token = browser.cookies["csrftoken"].value

    assert_error(browser.post(url, content_type=JSON), 403, "permission_denied")
    assert ConnectionCheck.objects.count() == 0
    assert browser.post(url, content_type=JSON, HTTP_X_CSRFTOKEN=token).status_code == 200
    assert ConnectionCheck.objects.count() == 1


def test_basic_auth_needs_no_csrf_token_but_no_other_site_may_send_it(staff, ollama):
    from django.test import Client

    script = Client(enforce_csrf_checks=True)
    assert script.post(OLLAMA_URL, content_type=JSON, **staff).status_code == 200
    # A browser that cached the Basic credentials attaches them to a form another site posts.
    error = assert_error(script.post(OLLAMA_URL, content_type=JSON, HTTP_SEC_FETCH_SITE="cross-site", **staff), 403,
                         "permission_denied")
    assert "another site" in error["message"]
    assert script.post(OLLAMA_URL, content_type=JSON, HTTP_SEC_FETCH_SITE="same-origin", **staff).status_code == 200
    assert ConnectionCheck.objects.count() == 2


def test_invalid_settings_are_listed_as_check_ollama_lists_them(client, staff, gateway_env, ollama):
    # Resolved as `manage.py check_ollama` resolves (the server itself would not have started).
    gateway_env({"OLLAMA_BASE_URL": ollama.url, "COMFYUI_BASE_URL": "comfyui:8188"}, "OLLAMA_TIMEOUT=soon\n",
                strict=False)

    listed = client.get(SETTINGS_URL, **staff).json()
    checked = client.post(OLLAMA_URL, content_type=JSON, **staff).json()

    assert [(e["code"], e["setting"], e["value"], e["source"]) for e in listed["invalid_settings"]] == [
        ("invalid_setting", "OLLAMA_TIMEOUT", "soon", "env_file"),
        ("invalid_setting", "COMFYUI_BASE_URL", "comfyui:8188", "environment")]
    assert checked["invalid_settings"] == listed["invalid_settings"]
    assert checked["success"] is False and checked["cause"] == listed["invalid_settings"][0]
    assert checked["error"]["type"] == "invalid_setting"
    # The table shows the value as written, not the default that stands in for it.
    assert {s["name"]: s["value"] for s in listed["settings"]}["OLLAMA_TIMEOUT"] == "soon"


def test_a_value_overridden_at_run_time_that_does_not_parse_is_listed(client, staff, settings):
    settings.OLLAMA_TIMEOUT = 0

    body = client.get(SETTINGS_URL, **staff).json()

    assert body["invalid_settings"] == [{
        "code": "invalid_setting", "setting": "OLLAMA_TIMEOUT", "value": "0", "source": "override",
        "message": "OLLAMA_TIMEOUT='0' (from a run-time override of Django settings) is invalid: expected a number "
                   "greater than 0.",
        "fix": "Correct OLLAMA_TIMEOUT where the code or settings module sets it after start-up. OLLAMA_TIMEOUT: "
               "seconds to wait for Ollama's reply (read timeout).",
    }]
