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


def test_staff_find_an_end_users_tool_calls_and_read_them(admin_login, site, api_key, settings):
    """Mock mode: the mock calls the first tool offered, then reads its result."""
    import httpx

    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    with httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {api_key}"}, trust_env=False) as http:
        first = http.post("/v1/chat/completions", headers={"X-OpenWebUI-User-Email": "ann@example.com"},
                          json={"model": "qwen2.5:7b", "messages": asked, "tools": [weather]}).json()
        call = first["choices"][0]["message"]["tool_calls"][0]
        http.post("/v1/chat/completions", headers={"X-OpenWebUI-User-Email": "ann@example.com"}, json={
            "model": "qwen2.5:7b", "tools": [weather], "messages": asked + [
                first["choices"][0]["message"], {"role": "tool", "tool_call_id": call["id"], "content": "Sunny"}]})
        http.post("/v1/chat/completions", json={"model": "qwen2.5:7b", "messages": asked, "user": "bob"})

    page = admin_login()
    page.goto(f"{site.url}/admin/llm/generation/")
    page.fill("#searchbar", "ann@example.com")
    page.press("#searchbar", "Enter")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)

    asking, answering = Generation.objects.filter(end_user="ann@example.com").order_by("created_at")
    page.goto(f"{site.url}/admin/llm/generation/{asking.id}/change/")
    calls = page.locator(".field-calls_made table.tool-calls tbody tr")
    expect(calls).to_have_count(1)
    expect(calls.first).to_contain_text("get_weather")
    expect(calls.first).to_contain_text(call["id"])
    expect(calls.first).to_contain_text('"city"')
    offered = page.locator(".field-tools_offered a")
    expect(offered).to_contain_text("1 tools (get_weather)")

    page.goto(f"{site.url}/admin/llm/generation/{answering.id}/change/")
    results = page.locator(".field-tool_results table.tool-calls tbody tr")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("get_weather")
    expect(results.first).to_contain_text("Sunny")
    offered.click()
    expect(page.locator(".field-definitions_json pre")).to_contain_text('"name": "get_weather"')
