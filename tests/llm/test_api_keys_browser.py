"""Issuing and revoking an API key as a person does it: in the admin, in a real headless Chromium."""

import httpx
import pytest
from playwright.sync_api import expect

from llm.models import ApiKey, Consumer

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def call_api(site, key):
    return httpx.post(f"{site.url}/api/v1/llm/generate", headers={"Authorization": f"Bearer {key}"},
                      json={"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}},
                      timeout=10, trust_env=False)


def test_a_superuser_issues_a_key_uses_it_and_revokes_it(page, site, django_user_model, shipped_templates):
    django_user_model.objects.create_superuser("boss", password="correct-horse-battery")
    Consumer.objects.create(name="marketing-site")
    page.goto(f"{site.url}/admin/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", "correct-horse-battery")
    page.click("input[type=submit]")

    page.goto(f"{site.url}/admin/llm/apikey/add/")
    page.select_option("#id_consumer", label="marketing-site")
    page.click("input[name=_save]")

    expect(page.locator("#content")).to_contain_text("cannot be shown again")
    key = page.inner_text("#api-key").strip()
    stored = ApiKey.objects.get()
    assert key.startswith(f"gw_{stored.prefix}_")
    assert call_api(site, key).status_code == 200

    page.goto(f"{site.url}/admin/llm/apikey/")
    expect(page.locator("#result_list")).to_contain_text(f"gw_{stored.prefix}…")
    assert key not in page.content()  # the list shows the prefix, never the key
    page.check("input.action-select")
    page.select_option("select[name=action]", "revoke_keys")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Revoked 1 API key(s).")
    expect(page.locator("#result_list")).to_contain_text("The API key has been revoked.")

    response = call_api(site, key)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_failed"
