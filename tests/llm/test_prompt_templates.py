"""Prompt templates: placeholder rendering, versions that never change, and what requests see of them."""

import importlib
import json

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError

from llm import prompt_templates
from llm.models import Generation, PromptTemplate, PromptTemplateVersion
from llm.prompts import MissingPlaceholders, TemplateSyntaxError, build_messages, fill, placeholders
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db

# -- placeholders ------------------------------------------------------------------------------------------------


def test_placeholders_are_the_simple_names_in_order_of_first_use():
    assert placeholders("Post about {product} in a {tone} tone; {product} again. {{not_one}}") == ["product", "tone"]


@pytest.mark.parametrize(
    "template, complaint",
    [
        ("{payload.__class__}", "simple field name"),
        ("{items[0]}", "simple field name"),
        ("{}", "simple field name"),
        ("{0}", "simple field name"),
        ("{product name}", "simple field name"),
        ("{product!r}", "format spec or conversion"),
        ("{product:>40}", "format spec or conversion"),
        ("{product:{width}}", "format spec or conversion"),
        ("About {product", "cannot be parsed"),
        ("A lone } brace", "cannot be parsed"),
    ],
)
def test_anything_but_a_simple_placeholder_is_refused(template, complaint):
    with pytest.raises(TemplateSyntaxError, match=complaint):
        placeholders(template)


def test_fill_inserts_strings_as_written_and_everything_else_as_json():
    text = fill("{a} | {b} | {c} | {d} | {e} | {{literal}}",
                {"a": "Grüner Tee", "b": ["organic", "loose"], "c": 3.5, "d": {"k": True}, "e": None})

    assert text == 'Grüner Tee | ["organic", "loose"] | 3.5 | {"k": true} | null | {literal}'


def test_payload_values_are_never_parsed_as_templates():
    # A value that looks like a placeholder (or a format-string attack) is inserted as plain text.
    text = fill("Write about {product}.", {"product": "{tone} {product.__class__.__init__.__globals__}"})

    assert text == "Write about {tone} {product.__class__.__init__.__globals__}."


def test_fill_names_every_missing_field():
    with pytest.raises(MissingPlaceholders) as caught:
        fill("{product} {tone} {audience}", {"tone": "calm"})

    assert caught.value.names == ["product", "audience"]


def test_the_system_prompt_is_filled_too_and_its_fields_come_first():
    messages = build_messages(system_prompt="You write for {brand}.", user_template="About {product}.",
                              payload={"brand": "Ocha & Co", "product": "Green tea"}, mode="text", output_schema=None)

    assert messages[0]["content"].startswith("You write for Ocha & Co.")
    assert messages[1]["content"] == "About Green tea."
    with pytest.raises(MissingPlaceholders) as caught:
        build_messages(system_prompt="For {brand}.", user_template="{product}", payload={}, mode="text",
                       output_schema=None)
    assert caught.value.names == ["brand", "product"]


def test_the_answer_format_is_appended_to_the_system_prompt():
    schema = {"type": "object", "properties": {"caption": {"type": "string"}}}
    args = {"system_prompt": "You write.", "user_template": "Hi", "payload": {}}

    with_schema = build_messages(**args, mode="json", output_schema=schema)[0]["content"]
    plain_json = build_messages(**args, mode="json", output_schema=None)[0]["content"]
    text = build_messages(**args, mode="text", output_schema=schema)[0]["content"]

    assert with_schema.startswith("You write.\n\n") and '"caption"' in with_schema
    assert "single JSON object" in plain_json and "Schema" not in plain_json
    assert text == "You write.\n\nAnswer in plain text."


# -- versions ----------------------------------------------------------------------------------------------------


def content(**changes):
    base = {"system_prompt": "You write.", "user_template": "About {product}.", "mode": "json", "model": "",
            "fallback_models": [], "allowed_models": [], "options": {}, "output_schema": None}
    return {**base, **changes}


def test_each_change_is_a_new_numbered_version_and_an_unchanged_save_is_not():
    template = PromptTemplate.objects.create(role="writer", task="blurb")

    first = prompt_templates.save_version(template=template, content=content(), author="ana")
    second = prompt_templates.save_version(template=template, content=content(user_template="On {product}!"),
                                           author="ben")
    again = prompt_templates.save_version(template=template, content=content(user_template="On {product}!"))

    assert (first.number, second.number) == (1, 2)
    assert again == second
    assert template.current_version == second
    assert (first.created_by, second.created_by) == ("ana", "ben")
    first.refresh_from_db()
    assert first.user_template == "About {product}."  # the old text is still there, unchanged


def test_a_version_cannot_be_changed_or_deleted(make_template):
    version = make_template()
    version.user_template = "Something else"

    with pytest.raises(ValidationError, match="immutable"):
        version.save()
    with pytest.raises(ValidationError, match="never deleted"):
        version.delete()
    version.refresh_from_db()
    assert version.user_template == "Say {word}."


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"user_template": "About {payload.__class__}"}, "user_template", "simple field name"),
        ({"system_prompt": "Use {x!r}"}, "system_prompt", "format spec"),
        ({"output_schema": {"type": "objekt"}}, "output_schema", "Not a valid JSON Schema"),
        ({"output_schema": {"type": "array"}}, "output_schema", "must describe an object"),
        ({"output_schema": ["not", "a", "schema"]}, "output_schema", "must be a JSON object"),
        ({"fallback_models": ["qwen2.5:7b", ""]}, "fallback_models", "list of model names"),
        ({"allowed_models": "llama3.2:1b"}, "allowed_models", "list of model names"),
        ({"options": [1]}, "options", "JSON object"),
        ({"options": {"num_gpu": 1}}, "options", "num_gpu: A load-time option"),
        ({"options": {"temperature": 3}}, "options", "temperature: Ensure this value is less than or equal to 2."),
    ],
)
def test_an_invalid_version_is_refused_with_the_field_named(changes, field, message):
    template = PromptTemplate.objects.create(role="writer", task="blurb")

    with pytest.raises(ValidationError) as caught:
        prompt_templates.save_version(template=template, content=content(**changes))

    assert message in " ".join(caught.value.message_dict[field])
    assert not template.versions.exists()


def test_the_seed_migration_adds_only_what_is_missing(shipped_templates):
    seed = importlib.import_module("llm.migrations.0004_seed_prompt_templates")
    sns = PromptTemplate.objects.get(role="copywriter", task="sns")
    edited = prompt_templates.save_version(template=sns, content={**sns.current_version.content(),
                                                                  "user_template": "Edited {product} {tone}"})
    PromptTemplate.objects.filter(role="marketer").update(is_active=False)

    seed.seed_templates(apps)

    assert PromptTemplate.objects.count() == len(seed.TEMPLATES) == 4
    assert sns.current_version == edited
    assert PromptTemplateVersion.objects.count() == 5
    assert not PromptTemplate.objects.get(role="marketer").is_active


# -- what requests see -------------------------------------------------------------------------------------------


def only_row():
    rows = list(Generation.objects.all())
    assert len(rows) == 1, rows
    return rows[0]


def test_a_missing_placeholder_is_400_naming_it_and_the_row_names_the_version(generate):
    response = generate({"role": "copywriter", "task": "ad_headline", "payload": {"product": "Green tea"}})

    error = assert_error(response, 400, "invalid_request")
    assert "benefit, audience" in error["message"]
    assert set(error["details"]["payload"]) == {"benefit", "audience"}
    row = only_row()
    assert row.template_version.template.task == "ad_headline"
    assert row.provider == ""  # nothing was sent


def test_payload_fields_the_template_does_not_use_are_ignored(generate, valid_request):
    response = generate({**valid_request, "payload": {**valid_request["payload"], "internal_id": 42}})

    assert response.status_code == 200
    assert "42" not in json.dumps(only_row().prompt)


@pytest.mark.parametrize(
    "role, task, listed, field",
    [
        ("designer", "sns", "Unknown role 'designer'. Known roles: copywriter, marketer.", "role"),
        ("copywriter", "poem", "Known tasks for copywriter: ad_headline, product_description, sns.", "task"),
        ("marketer", "sns", "Known tasks for marketer: campaign_brief.", "task"),
    ],
)
def test_an_unknown_role_or_task_is_400_listing_the_known_ones(generate, role, task, listed, field):
    error = assert_error(generate({"role": role, "task": task, "payload": {}}), 400, "invalid_request")

    assert listed in error["message"]
    assert list(error["details"]) == [field]
    assert only_row().template_version is None


def test_an_inactive_template_is_unknown(generate, valid_request):
    PromptTemplate.objects.filter(role="copywriter", task="sns").update(is_active=False)

    error = assert_error(generate(valid_request), 400, "invalid_request")

    assert "Unknown task 'sns'" in error["message"]
    assert "Known tasks for copywriter: ad_headline, product_description." in error["message"]


def test_every_generation_traces_to_the_exact_version_that_built_its_prompt(generate, valid_request):
    sns = PromptTemplate.objects.get(role="copywriter", task="sns")
    generate(valid_request)
    edited = prompt_templates.save_version(
        template=sns, content={**sns.current_version.content(), "user_template": "NEW: {product}, {tone}."})
    generate(valid_request)

    before, after = Generation.objects.order_by("created_at")
    assert (before.template_version.number, after.template_version) == (1, edited)
    for row in (before, after):
        assert row.prompt == row.template_version.render(valid_request["payload"])
    assert after.prompt[1]["content"] == "NEW: Green tea, calm."
    assert "NEW" not in before.prompt[1]["content"]


def test_the_request_mode_overrides_the_template_mode(generate, valid_request):
    body = generate({**valid_request, "mode": "text"}).json()

    assert body["mode"] == "text" and isinstance(body["output"], str)
    row = only_row()
    assert row.mode == "text" and row.prompt[0]["content"].endswith("Answer in plain text.")
