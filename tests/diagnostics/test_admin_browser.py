"""The Ollama diagnostics page as an operator uses it: in a real headless Chromium."""

import re

import pytest
from playwright.sync_api import expect

from diagnostics.models import ConnectionCheck

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_test_the_connection_and_see_the_result_and_the_history_row(admin_login, site, ollama):
    page = admin_login()
    section = page.locator(".app-diagnostics")
    expect(section).to_contain_text("Diagnostics")
    section.get_by_role("link", name="Ollama connection").click()
    expect(page).to_have_url(re.compile(r"/admin/diagnostics/connectioncheck/ollama/$"))
    history = page.locator("#check-history tr.history-row")
    expect(history).to_have_count(0)

    page.get_by_role("button", name="Test connection").click()

    expect(page.locator("#check-result h2")).to_contain_text("✓ Connection OK")
    expect(page.locator("#check-result tr.step")).to_have_count(5)
    expect(history).to_have_count(1)
    expect(history.first).to_contain_text("✓ OK")
    expect(history.first).to_contain_text("operator")
    row = ConnectionCheck.objects.get()
    assert (row.ok, row.origin, row.username) == (True, "admin", "operator")
