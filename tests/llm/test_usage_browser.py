"""The usage dashboard as a person uses it: in a real headless Chromium."""

import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from playwright.sync_api import expect

from llm.models import Consumer, Generation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_dashboard_charts_filter_and_lead_to_the_generations(admin_login, site, live_generate, valid_request,
                                                              consumer):
    live_generate(valid_request)  # one real generation through the API (mock mode), not folded yet
    other = Consumer.objects.create(name="other-team")
    now = timezone.now()
    for hours_ago, who, status in [(3, consumer, "succeeded"), (3, other, "failed"), (30, other, "succeeded"),
                                   (50, other, "succeeded")]:
        Generation.objects.create(created_at=now - timedelta(hours=hours_ago), consumer=who, status=status,
                                  model="llama3.2:3b", latency_ms=700, prompt_tokens=20, completion_tokens=10,
                                  error_type="upstream_error" if status == "failed" else "")
    call_command("rollup_usage", stdout=open("/dev/null", "w"))

    page = admin_login()
    page.get_by_role("link", name="Usage dashboard").click()
    expect(page.locator("h1")).to_have_text("Usage dashboard")
    month = page.locator('.usage-total[data-period="2"] [data-figure="requests"]')
    expect(month).to_have_text("5")
    expect(page.locator('.usage-total[data-period="1"] [data-figure="requests"]')).to_have_text("3")

    requests_30d = page.locator('svg[data-chart="requests"] >> nth=1')
    bars = requests_30d.locator("rect.bar")
    expect(bars).to_have_count(30)
    values = [int(v) for v in bars.evaluate_all("els => els.map(e => e.dataset.value)")]
    assert sum(values) == 5 and values[-1] >= 3
    assert page.locator('svg[data-chart="latency"] circle.point').count() >= 2
    assert page.locator('svg[data-chart="requests"] rect.bar-errors[data-value="1"]').count() == 2  # hour and day
    expect(page.locator("#top-consumers tbody tr").first).to_contain_text("other-team")

    page.select_option("#usage-consumer", label="test-team")
    page.click("#usage-filter input[type=submit]")
    expect(month).to_have_text("2")
    assert sum(int(v) for v in page.locator('svg[data-chart="requests"] >> nth=1').locator("rect.bar")
               .evaluate_all("els => els.map(e => e.dataset.value)")) == 2
    expect(page.locator("#top-consumers tbody tr")).to_have_count(1)

    page.select_option("#usage-model", "llama3.2:3b")
    page.click("#usage-filter input[type=submit]")
    expect(month).to_have_text("1")

    page.locator("#top-models a", has_text="llama3.2:3b").click()
    expect(page).to_have_url(re.compile(r"/admin/llm/generation/\?.*consumer__id__exact="))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("llama3.2:3b")
    expect(rows.first).to_contain_text("test-team")


def test_the_generation_list_fits_a_1366_px_screen(browser, site, staff_user):
    Generation.objects.create(status="failed", role="copywriter", task="product_description", model="qwen2.5:7b",
                              consumer=Consumer.objects.create(name="marketing-site"), latency_ms=123456.7,
                              error_type="upstream_unavailable")
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    try:
        page.goto(f"{site.url}/admin/login/?next=/admin/llm/generation/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", "correct-horse-battery")
        page.click("input[type=submit]")
        results = page.locator(".results")
        expect(results).to_contain_text("upstream_unavailable")
        width, visible = results.evaluate("el => [el.scrollWidth, el.clientWidth]")
        assert width <= visible, f"the list is {width} px wide in {visible} px"
        last = page.locator("#result_list tbody tr td.field-error").bounding_box()
        assert last["x"] + last["width"] <= 1366
    finally:
        context.close()
