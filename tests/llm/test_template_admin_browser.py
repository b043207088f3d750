"""Editing a prompt template as staff do: in a real headless Chromium."""

import re

import pytest
from django.contrib.auth.models import Permission
from playwright.sync_api import expect

from llm.models import Generation, PromptTemplate

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def editor(staff_user):
    """Template editing needs Django's normal permissions; the staff user is given them."""
    staff_user.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_prompttemplate", "change_prompttemplate"]))
    return staff_user


def test_preview_edit_and_trace_a_template(admin_login, editor, site, shipped_templates, live_generate,
                                           valid_request):
    page = admin_login()
    page.get_by_role("link", name="Prompt templates").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(4)  # the shipped templates
    page.locator("#result_list tr", has_text="sns").locator("th a").click()
    expect(page).to_have_url(re.compile(r"/admin/llm/prompttemplate/\d+/change/"))

    # The current version, rendered for the sample payload.
    expect(page.locator("#prompt-preview h2")).to_contain_text("Preview of the current version")
    expect(page.locator("#preview-user")).to_contain_text("Write one social media post about Green tea.")
    expect(page.locator("#preview-system")).to_contain_text('"call_to_action"')

    # Preview an edit with another sample payload: shown, not saved.
    page.fill("#id_user_template", "A {tone} post about {product} for {audience}.")
    page.fill("#id_sample_payload", '{"product": "Oolong", "tone": "warm", "audience": "students"}')
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#prompt-preview h2")).to_contain_text("Preview of your unsaved changes")
    expect(page.locator("#preview-user")).to_have_text("A warm post about Oolong for students.")
    sns = PromptTemplate.objects.get(role="copywriter", task="sns")
    assert sns.versions.count() == 1

    # A template that would inject attribute access is refused on the form.
    page.fill("#id_user_template", "About {product.__class__}")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator(".errorlist")).to_contain_text("is not a placeholder")

    # Save: a new version, by the editor, shown in the history; the preview shows it.
    page.fill("#id_user_template", "A {tone} post about {product} for {audience}.")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    expect(page.locator("#version-history tbody tr")).to_have_count(2)
    expect(page.locator("#version-history tbody tr").first).to_contain_text("operator")
    expect(page.locator("#preview-user")).to_have_text("A warm post about Oolong for students.")

    # A generation now uses v2, and its admin page leads to that exact text.
    response = live_generate({**valid_request, "payload": {**valid_request["payload"], "audience": "runners"}})
    assert response.status_code == 200
    row = Generation.objects.get()
    page.goto(f"{site.url}/admin/llm/generation/{row.id}/change/")
    page.get_by_role("link", name="copywriter/sns v2").click()
    expect(page.locator("#content")).to_contain_text("A {tone} post about {product} for {audience}.")
    expect(page.locator("#content")).to_contain_text("operator")


def test_an_output_schema_with_an_external_ref_is_refused_on_its_field(admin_login, editor, site, shipped_templates,
                                                                        tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"description": "SECRET-IN-A-FILE"}')
    page = admin_login()
    page.goto(f"{site.url}/admin/llm/prompttemplate/")
    page.locator("#result_list tr", has_text="sns").locator("th a").click()

    page.fill("#id_output_schema", '{"type": "object", "properties": {"caption": {"$ref": "%s"}}}' % secret.as_uri())
    page.click("input[name=_continue]")

    problem = page.locator(".field-output_schema .errorlist")
    expect(problem).to_contain_text(f"The $ref '{secret.as_uri()}' at $.properties.caption.$ref refers outside "
                                    "the output schema")
    expect(page.locator("body")).not_to_contain_text("SECRET-IN-A-FILE")
    assert PromptTemplate.objects.get(role="copywriter", task="sns").versions.count() == 1
