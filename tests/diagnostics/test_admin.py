"""The Diagnostics section of the admin: staff only, read-only history, the settings and Ollama pages."""

import pytest

from diagnostics.models import ConnectionCheck

pytestmark = pytest.mark.django_db
SETTINGS_PAGE = "/admin/diagnostics/connectioncheck/settings/"
OLLAMA_PAGE = "/admin/diagnostics/connectioncheck/ollama/"


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


def test_the_index_has_a_diagnostics_section_linking_every_page(staff_client):
    page = staff_client.get("/admin/").content.decode()
    assert "Diagnostics" in page
    for url in (SETTINGS_PAGE, OLLAMA_PAGE, "/admin/diagnostics/connectioncheck/"):
        assert f'href="{url}"' in page, url


@pytest.mark.parametrize("url", [SETTINGS_PAGE, OLLAMA_PAGE])
def test_the_pages_are_for_staff_only(client, django_user_model, url):
    assert client.get(url).status_code == 302  # to the login page
    django_user_model.objects.create_user("visitor", password="correct-horse-battery")
    client.login(username="visitor", password="correct-horse-battery")
    response = client.get(url)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert client.post(url, {"action": "connection"}).status_code == 302
    assert ConnectionCheck.objects.count() == 0


def test_the_settings_page_shows_values_sources_and_warnings_with_secrets_masked(staff_client, gateway_env):
    gateway_env({"OLLAMA_BASE_URL": "http://ops:hunter2@192.168.0.100:11434"},
                "OLLAMA_BASE_URL=http://100.120.180.42:11434\nDATABASE_URL=postgres://app:swordfish@db:5432/gw\n")

    page = staff_client.get(SETTINGS_PAGE).content.decode()

    assert "http://ops:********@192.168.0.100:11434" in page
    assert "postgres://app:********@db:5432/gw" in page
    assert "overrides the .env value (http://100.120.180.42:11434)" in page
    assert "hunter2" not in page and "swordfish" not in page


def test_test_connection_runs_the_check_records_it_and_shows_it(staff_client, staff_user, ollama):
    page = staff_client.get(OLLAMA_PAGE).content.decode()
    assert "Test connection" in page and "Test generation" in page and "No checks yet." in page

    response = staff_client.post(OLLAMA_PAGE, {"action": "connection"}, follow=True)

    row = ConnectionCheck.objects.get()
    assert (row.origin, row.user, row.ok, row.generation) == ("admin", staff_user, True, False)
    assert response.redirect_chain == [(f"{OLLAMA_PAGE}?check={row.pk}", 302)]
    page = response.content.decode()
    assert "✓ Connection OK" in page and "GET /api/tags" in page
    assert ollama.requests[-1].path == "/api/tags"


def test_test_generation_shows_the_reply(staff_client, ollama):
    ollama.reply = "ready"
    page = staff_client.post(OLLAMA_PAGE, {"action": "generation"}, follow=True).content.decode()
    assert "<q>ready</q>" in page
    assert ConnectionCheck.objects.get().generation is True


def test_a_failed_check_shows_cause_and_fix(staff_client, ollama, settings, refused_url):
    settings.OLLAMA_BASE_URL = refused_url
    page = staff_client.post(OLLAMA_PAGE, {"action": "connection"}, follow=True).content.decode()
    assert "✗ Failed: connection_refused" in page
    assert "Cause:</strong> Nothing listens at" in page
    assert "Fix:</strong> Start Ollama there" in page


def test_the_history_is_read_only_even_for_superusers(client, django_user_model, ollama):
    root = django_user_model.objects.create_superuser("root", password="correct-horse-battery")
    client.force_login(root)
    client.post(OLLAMA_PAGE, {"action": "connection"})
    row = ConnectionCheck.objects.get()

    changelist = client.get("/admin/diagnostics/connectioncheck/").content.decode()
    assert "✓ OK" in changelist
    assert client.get("/admin/diagnostics/connectioncheck/add/").status_code == 403
    detail = client.get(f"/admin/diagnostics/connectioncheck/{row.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert client.post(f"/admin/diagnostics/connectioncheck/{row.pk}/delete/").status_code == 403
    assert ConnectionCheck.objects.count() == 1


def test_posting_without_the_csrf_token_is_refused(ollama, staff_user):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    assert client.post(OLLAMA_PAGE, {"action": "connection"}).status_code == 403
    assert ConnectionCheck.objects.count() == 0


def test_the_settings_page_lists_invalid_settings_first(staff_client, gateway_env):
    gateway_env({"OLLAMA_BASE_URL": "127.0.0.1:11434"}, "", strict=False)

    page = staff_client.get(SETTINGS_PAGE).content.decode()

    assert 'id="invalid-settings"' in page
    assert ("OLLAMA_BASE_URL=&#x27;127.0.0.1:11434&#x27; (from the OS environment) is invalid: expected an http:// "
            "or https:// URL") in page
    assert "unset OLLAMA_BASE_URL" in page
