"""GET /api/v1/llm/templates: what consumers can discover about roles, tasks, payloads and outputs."""

import pytest

from llm import prompt_templates
from llm.models import PromptTemplate
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db

URL = "/api/v1/llm/templates"


@pytest.fixture
def get(client, api_key, shipped_templates):
    """GET the catalog as a consumer does, with its API key."""

    def fetch(**extra):
        return client.get(URL, HTTP_AUTHORIZATION=f"Bearer {api_key}", **extra)

    return fetch


def by_key(body):
    return {(t["role"], t["task"]): t for t in body["templates"]}


def test_lists_the_shipped_roles_tasks_payload_fields_and_output_schemas(get):
    response = get()

    assert response.status_code == 200
    body = response.json()
    assert body["roles"] == {"copywriter": ["ad_headline", "product_description", "sns"],
                             "marketer": ["campaign_brief"]}
    templates = by_key(body)
    sns = templates[("copywriter", "sns")]
    assert sns["payload_fields"] == ["product", "tone"]
    assert sns["sample_payload"] == {"product": "Green tea", "tone": "calm"}
    assert sns["mode"] == "json" and sns["version"] == 1
    assert sns["output_schema"]["required"] == ["caption", "hashtags", "call_to_action"]
    assert sns["output_schema"]["properties"]["hashtags"]["type"] == "array"
    assert sns["models"] == ["qwen2.5:7b", "llama3.2:3b"]
    assert sns["allowed_models"] == ["qwen2.5:7b", "llama3.2:3b", "llama3.2:1b"]
    assert templates[("marketer", "campaign_brief")]["payload_fields"] == ["product", "goal", "audience", "budget",
                                                                          "duration"]
    for template in body["templates"]:
        assert template["output_schema"]["type"] == "object"
        assert set(template["payload_fields"]) <= set(template["sample_payload"])
        assert "system_prompt" not in template  # the prompt text is the operators' business


def test_shows_the_current_version_and_hides_inactive_templates(get):
    sns = PromptTemplate.objects.get(role="copywriter", task="sns")
    prompt_templates.save_version(template=sns, content={**sns.current_version.content(),
                                                         "user_template": "{product} for {audience}"})
    PromptTemplate.objects.filter(role="marketer").update(is_active=False)

    body = get().json()

    assert body["roles"] == {"copywriter": ["ad_headline", "product_description", "sns"]}
    listed = by_key(body)[("copywriter", "sns")]
    assert listed["version"] == 2 and listed["payload_fields"] == ["product", "audience"]


def test_what_it_lists_is_what_generate_accepts(get, generate):
    for template in get().json()["templates"]:
        response = generate({"role": template["role"], "task": template["task"],
                             "payload": template["sample_payload"]})
        assert response.status_code == 200, response.content


def test_it_takes_the_same_api_key_as_generate(client, shipped_templates):
    assert_error(client.get(URL), 401, "not_authenticated")
    assert_error(client.get(URL, HTTP_AUTHORIZATION="Bearer gw_nope"), 401, "authentication_failed")


def test_other_methods_are_405_in_the_error_shape(client, api_key):
    assert_error(client.post(URL, {}, HTTP_AUTHORIZATION=f"Bearer {api_key}"), 405, "method_not_allowed")


def test_a_consumer_limited_to_some_models_sees_only_those(get, consumer, make_template):
    consumer.allowed_models = ["llama3.2:1b"]
    consumer.save()
    make_template("analyst", "private", model="secret-finetune:70b", fallback_models=["other:13b"])

    body = get().json()

    # The shipped templates allow llama3.2:1b when named; the analyst's template has nothing for this consumer.
    assert body["roles"] == {"copywriter": ["ad_headline", "product_description", "sns"],
                             "marketer": ["campaign_brief"]}
    for template in body["templates"]:
        assert template["models"] == [] and template["allowed_models"] == ["llama3.2:1b"]
    text = str(body)
    assert "secret-finetune" not in text and "qwen2.5" not in text and "llama3.2:3b" not in text


def test_a_consumer_limited_to_a_chain_model_sees_it_as_the_chain(get, consumer):
    consumer.allowed_models = ["llama3.2:3b"]
    consumer.save()

    sns = by_key(get().json())[("copywriter", "sns")]

    assert sns["models"] == ["llama3.2:3b"] and sns["allowed_models"] == ["llama3.2:3b"]
