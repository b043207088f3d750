"""The generation history as a person uses it: in a real headless Chromium."""

import re

import pytest
from playwright.sync_api import expect

from llm.models import Generation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_filter_the_history_and_open_a_generation(admin_login, site, live_generate, valid_request):
    live_generate(valid_request)  # a real generation through the API (mock mode)
    live_generate({"role": "copywriter"})  # and a failed one
    ok = Generation.objects.get(status="succeeded")

    page = admin_login()
    page.get_by_role("link", name="Generations", exact=True).first.click()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)

    page.click("#changelist-filter >> text=failed")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("invalid_request")

    page.click("#changelist-filter >> text=succeeded")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("copywriter")
    rows.first.locator("th a").click()
    expect(page).to_have_url(re.compile(rf"/admin/llm/generation/{ok.id}/change/"))
    detail = page.inner_text("#content")
    assert "View generation" in detail
    assert '"product": "Green tea"' in page.inner_text("pre.json >> nth=0")
    assert page.locator("input[name=_save]").count() == 0
