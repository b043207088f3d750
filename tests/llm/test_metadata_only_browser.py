"""A metadata-only consumer's generations as staff see them in a real headless Chromium: marked, content absent."""

import httpx
import pytest
from playwright.sync_api import expect

from llm.models import Generation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CANARY = "okapicanary41c2"


def test_staff_see_content_not_stored_and_none_of_the_content(admin_login, site, api_key, consumer):
    consumer.metadata_only = True
    consumer.save()
    tool = {"type": "function", "function": {"name": "lookup", "description": CANARY, "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
    with httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {api_key}"}, trust_env=False) as http:
        answered = http.post("/v1/chat/completions", headers={"X-OpenWebUI-User-Email": f"{CANARY}@example.com"},
                             json={"model": "qwen2.5:7b", "tools": [tool],
                                   "messages": [{"role": "user", "content": f"Find {CANARY}"}]})
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["tool_calls"]
    row = Generation.objects.get()

    page = admin_login()
    page.goto(f"{site.url}/admin/llm/generation/")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".content-withheld")).to_have_text("content not stored")

    page.goto(f"{site.url}/admin/llm/generation/{row.id}/change/")
    for field in ("request_json", "prompt_json", "output_json", "calls_made", "end_user_shown", "client_ip_shown",
                  "tools_offered"):
        expect(page.locator(f".field-{field} .readonly")).to_have_text("content not stored")
    expect(page.locator(".field-content_hmac_json pre")).to_contain_text('"hmac_sha256"')
    assert CANARY not in page.content()
