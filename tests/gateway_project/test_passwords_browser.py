"""The admin's sign-in page and its generation list, as a person sees them when someone floods the gateway."""

from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from gateway_project import throttling
from llm import failed_keys
from tests.conftest import LONG_WINDOW

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["tests.gateway_project.test_passwords.FastPBKDF2"]


@pytest.fixture
def clock(monkeypatch):
    """The wall clock the delays are measured on (in the server's threads too), moved by hand."""
    now = SimpleNamespace(value=1_900_000_000.0)
    monkeypatch.setattr(throttling, "now", lambda: now.value)
    return now


def test_after_failed_sign_ins_the_login_page_says_when_to_try_again(fast_hashing, page, site, staff_user, clock):
    def sign_in(password):
        page.goto(f"{site.url}/admin/login/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", password)
        page.click("input[type=submit]")

    for _ in range(throttling.FREE_FAILURES):
        sign_in("wrong")
        expect(page.locator(".errornote")).to_contain_text("Please enter the correct username and password")

    sign_in("correct-horse-battery")
    expect(page.locator(".errornote")).to_contain_text(
        "Too many failed sign-ins from this address or for this user name; try again in 1 s.")
    expect(page).to_have_url(f"{site.url}/admin/login/")

    clock.value += 1  # the delay is over: no lockout
    sign_in("correct-horse-battery")
    page.wait_for_url(f"{site.url}/admin/")


def test_the_history_shows_how_many_refusals_a_row_counts(admin_login, live_generate, valid_request, settings,
                                                         monkeypatch):
    settings.FAILED_KEYS_PER_MINUTE = 2
    monkeypatch.setattr(failed_keys, "WINDOW_SECONDS", LONG_WINDOW)  # no minute boundary in mid-test
    statuses = [live_generate(valid_request, key="gw_nope_wrong").status_code for _ in range(6)]
    assert statuses == [401, 401, 429, 429, 429, 429]

    page = admin_login()
    page.get_by_role("link", name="Generations", exact=True).first.click()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("auth_throttled ×4")
    rows.first.locator("th a").click()
    expect(page.locator(".field-repeat_count")).to_contain_text("4")
