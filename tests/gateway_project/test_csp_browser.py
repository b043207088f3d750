"""The Content-Security-Policy: every page staff open works under it, and none of them violates it, in Chromium."""

import re

import httpx
import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from diagnostics.models import ConnectionCheck
from llm.models import Consumer, Generation, PromptTemplate
from tests.conftest import SNS_REPLY

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", password="correct-horse-battery")


def test_every_page_is_served_with_the_policy(site, superuser):
    policy = httpx.get(f"{site.url}/admin/login/", trust_env=False).headers["content-security-policy"]

    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy
    for path in ("/api/v1/docs/", "/api/v1/docs/?script="):
        assert httpx.get(f"{site.url}{path}", trust_env=False).headers["content-security-policy"] == policy


def test_no_page_violates_the_policy(page, site, superuser, ollama, live_generate, valid_request,
                                     shipped_templates):
    ollama.reply = SNS_REPLY
    live_generate(valid_request)
    live_generate({"role": "copywriter"})  # a failed one too
    Generation.objects.create(status="succeeded", model="qwen2.5:7b", latency_ms=800, prompt_tokens=10,
                              completion_tokens=5, consumer=Consumer.objects.create(name="other-team"))
    call_command("rollup_usage", stdout=open("/dev/null", "w"))
    page.goto(f"{site.url}/admin/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "correct-horse-battery")
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()

    # The generation history: list, filter, detail.
    page.goto(f"{site.url}/admin/llm/generation/")
    page.click("#changelist-filter >> text=failed")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    generated = Generation.objects.get(status="succeeded", consumer__name="test-team")
    page.goto(f"{site.url}/admin/llm/generation/{generated.id}/change/")
    expect(page.locator("pre.json").first).to_be_visible()

    # The usage dashboard's server-drawn SVG charts.
    page.goto(f"{site.url}/admin/llm/generation/usage/")
    expect(page.locator('svg[data-chart="requests"]').first).to_be_visible()
    assert page.locator("svg.usage-chart").first.bounding_box()["height"] > 50

    # A template: its preview, then the edit form's widgets (the admin's own scripts).
    sns = PromptTemplate.objects.get(role="copywriter", task="sns")
    page.goto(f"{site.url}/admin/llm/prompttemplate/{sns.pk}/change/")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#preview-user")).to_contain_text("Green tea")

    # A new API key, shown once; the consumer form with its inline keys.
    page.goto(f"{site.url}/admin/llm/apikey/add/")
    page.select_option("#id_consumer", label="test-team")
    page.click("input[name=_save]")
    expect(page.locator("#api-key")).to_contain_text("gw_")
    page.goto(f"{site.url}/admin/llm/consumer/{Consumer.objects.get(name='test-team').pk}/change/")
    expect(page.locator("#id_name")).to_have_value("test-team")

    # The diagnostics pages: settings, a connection check run from its button, its history row.
    page.goto(f"{site.url}/admin/diagnostics/connectioncheck/settings/")
    expect(page.locator("#resolved-settings")).to_be_visible()
    page.goto(f"{site.url}/admin/diagnostics/connectioncheck/ollama/")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#check-result h2")).to_contain_text("Connection OK")
    page.goto(f"{site.url}/admin/diagnostics/connectioncheck/{ConnectionCheck.objects.get().pk}/change/")
    expect(page.locator("pre.json")).to_be_visible()

    # Swagger UI, served by the gateway: it renders the operations and expands one.
    page.goto(f"{site.url}/api/v1/docs/")
    operation = page.locator(".opblock-summary", has_text=re.compile(r"/api/v1/llm/generate"))
    expect(operation).to_be_visible()
    operation.click()
    expect(page.locator(".opblock-body").first).to_be_visible()
    # The swagger stylesheet applies (a box-sizing rule from the page's own stylesheet, not inline).
    assert page.evaluate("getComputedStyle(document.documentElement).boxSizing") == "border-box"

    assert page.csp_violations == []
