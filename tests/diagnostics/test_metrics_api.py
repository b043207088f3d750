"""GET /metrics: the scraper's bearer token or a staff user, never anyone else; Prometheus' text format."""

import base64

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm import metrics
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db
URL = "/metrics"
TOKEN = "scrape-" + "s" * 32


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    return {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}


def basic(username, password):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def family_names(response) -> set[str]:
    return {family.name for family in text_string_to_metric_families(response.content.decode())}


def every_family() -> set[str]:
    return {family.name for metric in metrics.FAMILIES for family in metric.describe()}


def test_the_scraper_token_gets_every_family_in_prometheus_text_format(client, token, generate, valid_request):
    assert generate(valid_request).status_code == 200

    response = client.get(URL, **token)

    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert family_names(response) == every_family()
    assert len(every_family()) == 18  # 14 of generations, 3 of embeddings, 1 of budgets
    text = response.content.decode()
    assert 'llm_gateway_requests_total{consumer="test-team",dialect="native",error_type="none",' in text


def test_openmetrics_when_the_scraper_asks_for_it(client, token):
    response = client.get(URL, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0,text/plain;q=0.5", **token)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().endswith("# EOF\n")


def test_never_open_by_default_anonymous_callers_get_401(client, settings):
    assert settings.METRICS_TOKEN == ""
    response = client.get(URL)
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_any_bearer_token_is_refused_when_no_token_is_set(client, settings):
    settings.METRICS_TOKEN = ""
    assert_error(client.get(URL, HTTP_AUTHORIZATION="Bearer "), 401, "authentication_failed")
    assert_error(client.get(URL, HTTP_AUTHORIZATION="Bearer anything"), 401, "authentication_failed")


@pytest.mark.parametrize("presented", [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f"{TOKEN} {TOKEN}", ""])
def test_a_wrong_token_gets_401(client, token, presented):
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {presented}")
    assert_error(response, 401, "authentication_failed")
    assert TOKEN not in response.content.decode()


def test_an_api_key_does_not_open_the_metrics(client, token, api_key):
    assert_error(client.get(URL, HTTP_AUTHORIZATION=f"Bearer {api_key}"), 401, "authentication_failed")


def test_staff_basic_auth_works(client, staff_user):
    response = client.get(URL, **basic("operator", "correct-horse-battery"))
    assert response.status_code == 200
    assert family_names(response) == every_family()


def test_staff_with_a_wrong_password_gets_401(client, staff_user):
    assert_error(client.get(URL, **basic("operator", "wrong")), 401, "authentication_failed")


def test_a_user_who_is_not_staff_gets_403(client, django_user_model):
    django_user_model.objects.create_user("visitor", password="correct-horse-battery")
    assert_error(client.get(URL, **basic("visitor", "correct-horse-battery")), 403, "permission_denied")


def test_the_admin_session_of_a_staff_member_works(client, staff_user):
    client.force_login(staff_user)
    assert client.get(URL).status_code == 200


def test_the_token_is_masked_on_the_settings_page(client, staff_user, settings, gateway_env):
    gateway_env({"METRICS_TOKEN": TOKEN})
    settings.METRICS_TOKEN = TOKEN

    response = client.get("/api/v1/debug/settings", **basic("operator", "correct-horse-battery"))

    assert response.status_code == 200
    row = next(s for s in response.json()["settings"] if s["name"] == "METRICS_TOKEN")
    assert (row["secret"], row["source"]) == (True, "environment")
    assert row["value"] and row["value"] != TOKEN
    assert TOKEN not in response.content.decode()


def test_only_get_is_allowed(client, token):
    assert_error(client.post(URL, **token), 405, "method_not_allowed")
