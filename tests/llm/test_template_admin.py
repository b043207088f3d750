"""Prompt templates in admin: editing writes versions, Preview saves nothing, versions are read-only."""

import json

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from llm.models import Generation, PromptTemplate, PromptTemplateVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def editor(client, staff_user):
    """The staff user with Django's permissions to view, add and change templates."""
    staff_user.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_prompttemplate", "add_prompttemplate", "change_prompttemplate"]))
    client.force_login(staff_user)
    return client


@pytest.fixture
def sns(shipped_templates):
    return PromptTemplate.objects.get(role="copywriter", task="sns")


def change_url(template):
    return reverse("admin:llm_prompttemplate_change", args=[template.pk])


def form_data(template, **changes):
    """What the change form posts for the template as it is, with changes."""
    current = template.current_version
    data = {
        "description": template.description, "is_active": "on", "sample_payload": json.dumps(template.sample_payload),
        "system_prompt": current.system_prompt, "user_template": current.user_template, "mode": current.mode,
        "model": current.model, "fallback_models": ", ".join(current.fallback_models),
        "allowed_models": ", ".join(current.allowed_models), "options": json.dumps(current.options),
        "output_schema": json.dumps(current.output_schema) if current.output_schema else "",
    }
    return {**data, **changes}


def test_the_change_form_shows_the_current_prompt_rendered_for_the_sample_payload(editor, sns):
    html = editor.get(change_url(sns)).content.decode()

    assert "Preview of the current version for the sample payload" in html
    assert "Write one social media post about Green tea." in html
    assert "Tone: calm." in html
    assert "qwen2.5:7b, llama3.2:3b" in html  # the models, in order
    assert 'id="version-history"' in html and ">v1</a>" in html


def test_saving_a_change_writes_a_new_version_by_its_author(editor, sns, staff_user):
    response = editor.post(change_url(sns), form_data(sns, user_template="Post about {product}. Mood: {tone}.",
                                                      fallback_models="llama3.2:3b, llama3.2:1b"))

    assert response.status_code == 302, response.content.decode()[-3000:]
    latest = sns.current_version
    assert latest.number == 2 and latest.created_by == "operator"
    assert latest.user_template == "Post about {product}. Mood: {tone}."
    assert latest.fallback_models == ["llama3.2:3b", "llama3.2:1b"]
    assert PromptTemplateVersion.objects.get(template=sns, number=1).user_template.startswith("Write one")


def test_saving_only_the_description_adds_no_version(editor, sns):
    response = editor.post(change_url(sns), form_data(sns, description="Shorter."))

    assert response.status_code == 302
    sns.refresh_from_db()
    assert sns.description == "Shorter." and sns.versions.count() == 1


def test_preview_renders_unsaved_changes_and_saves_nothing(editor, sns):
    response = editor.post(change_url(sns), form_data(
        sns, user_template="Draft about {product} for {audience}.",
        sample_payload=json.dumps({"product": "Oolong", "tone": "warm", "audience": "students"}), _preview="Preview"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Preview of your unsaved changes" in html
    assert "Draft about Oolong for students." in html
    assert sns.versions.count() == 1
    sns.refresh_from_db()
    assert sns.sample_payload == {"product": "Green tea", "tone": "calm"}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"user_template": "About {payload.__class__}"}, "is not a placeholder"),
        ({"user_template": "About {product"}, "cannot be parsed"),
        ({"output_schema": '{"type": "objekt"}'}, "Not a valid JSON Schema"),
        ({"output_schema": '{"type": "array"}'}, "must describe an object"),
        ({"output_schema": "{not json"}, "Enter a valid JSON"),
        ({"user_template": "About {product} for {audience}"}, "Lacks audience, which the prompts use."),
        ({"options": "[1, 2]"}, "JSON object of Ollama options"),
        ({"options": '{"use_mlock": true}'}, "use_mlock: A load-time option"),
    ],
)
def test_an_invalid_template_is_a_form_error_and_adds_no_version(editor, sns, changes, message):
    for extra in ({}, {"_preview": "Preview"}):
        response = editor.post(change_url(sns), form_data(sns, **changes, **extra))

        assert response.status_code == 200
        assert message in response.content.decode()
    assert sns.versions.count() == 1


def test_adding_a_template_writes_its_first_version(editor, shipped_templates):
    data = {"role": "copywriter", "task": "newsletter", "description": "A newsletter intro.", "is_active": "on",
            "sample_payload": '{"topic": "spring teas"}', "system_prompt": "You write newsletters.",
            "user_template": "Introduce {topic}.", "mode": "text", "model": "llama3.2:1b", "fallback_models": "",
            "allowed_models": "", "options": "{}", "output_schema": ""}

    response = editor.post(reverse("admin:llm_prompttemplate_add"), data)

    assert response.status_code == 302, response.content.decode()[-3000:]
    version = PromptTemplate.objects.get(task="newsletter").current_version
    assert (version.number, version.mode, version.model, version.output_schema) == (1, "text", "llama3.2:1b", None)


def test_role_and_task_cannot_be_renamed_and_templates_cannot_be_deleted(editor, sns):
    editor.post(change_url(sns), form_data(sns, role="marketer", task="other"))

    sns.refresh_from_db()
    assert (sns.role, sns.task) == ("copywriter", "sns")
    assert editor.get(reverse("admin:llm_prompttemplate_delete", args=[sns.pk])).status_code == 403


def test_staff_without_the_permission_cannot_edit_templates(client, staff_user, sns):
    client.force_login(staff_user)

    assert client.get(change_url(sns)).status_code == 403
    assert client.post(change_url(sns), form_data(sns, user_template="Hacked {product} {tone}")).status_code == 403
    assert sns.versions.count() == 1


def test_view_permission_shows_the_template_read_only(client, staff_user, sns):
    staff_user.user_permissions.add(Permission.objects.get(codename="view_prompttemplate"))
    client.force_login(staff_user)

    html = client.get(change_url(sns)).content.decode()

    assert "Write one social media post about Green tea." in html  # the preview
    assert 'name="_save"' not in html and 'name="_preview"' not in html


def test_versions_are_read_only_for_every_staff_member(client, staff_user, sns):
    client.force_login(staff_user)
    version = sns.current_version
    url = reverse("admin:llm_prompttemplateversion_change", args=[version.pk])

    html = client.get(url).content.decode()

    assert "Write one social media post about {product}." in html
    assert "Write one social media post about Green tea." in html  # rendered for the sample payload
    assert 'name="_save"' not in html
    assert client.post(url, {"user_template": "x"}).status_code == 403
    assert client.get(reverse("admin:llm_prompttemplateversion_delete", args=[version.pk])).status_code == 403
    assert client.get(reverse("admin:llm_prompttemplateversion_add")).status_code == 403


def test_a_generation_links_to_the_version_that_built_its_prompt(client, staff_user, generate, valid_request):
    generate(valid_request)
    row = Generation.objects.get()
    client.force_login(staff_user)

    html = client.get(reverse("admin:llm_generation_change", args=[row.pk])).content.decode()

    url = reverse("admin:llm_prompttemplateversion_change", args=[row.template_version_id])
    assert f'<a href="{url}">copywriter/sns v1</a>' in html
    assert "&quot;outcome&quot;: &quot;succeeded&quot;" in html
