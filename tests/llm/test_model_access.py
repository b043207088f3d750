"""Which models a consumer may use, and consumers barred from raw prompts: the same answer in every dialect."""

import ollama as ollama_client
import openai
import pytest
from django.core.management import call_command

from llm.models import Consumer, Generation
from tests.conftest import assert_error, wait_for

HELLO = [{"role": "user", "content": "Say hello."}]


def limit(models=(), templates_only=False):
    Consumer.objects.filter(name="test-team").update(allowed_models=list(models), templates_only=templates_only)


def openai_sdk(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=10)


def ollama_sdk(gateway):
    return ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                trust_env=False)


def last_row() -> Generation:
    return wait_for(lambda: Generation.objects.exclude(status="pending").order_by("-created_at").first())


# -- native -----------------------------------------------------------------------------------------------------------


def test_native_skips_a_template_model_outside_the_list(generate, valid_request, consumer):
    limit(["llama3.2:3b"])  # copywriter/sns: qwen2.5:7b, then llama3.2:3b

    response = generate(valid_request)

    assert response.status_code == 200, response.content
    assert response.json()["model"] == "llama3.2:3b"


def test_native_with_no_template_model_left_is_403(generate, valid_request, consumer):
    limit(["mistral:7b"])

    error = assert_error(generate(valid_request), 403, "model_not_allowed")

    assert "mistral:7b" in error["message"]
    assert Generation.objects.get().error_type == "model_not_allowed"


def test_native_naming_a_model_outside_the_list_is_403(generate, valid_request, consumer):
    limit(["qwen2.5:7b"])

    assert_error(generate({**valid_request, "model": "llama3.2:3b"}), 403, "model_not_allowed")


def test_a_tag_less_name_is_its_latest(generate, valid_request, consumer, make_template):
    make_template(model="phi3", mode="text")
    limit(["phi3:latest"])

    assert generate({"role": "tester", "task": "echo", "payload": {"word": "hi"}}).status_code == 200


# -- compatible dialects ----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_openai_model_outside_the_list_is_permission_denied_and_never_reaches_ollama(gateway, ollama):
    limit(["llama3.2:1b"])

    with pytest.raises(openai.PermissionDeniedError) as raised:
        openai_sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO)

    assert raised.value.body["code"] == "model_not_allowed" and raised.value.body["param"] == "model"
    row = last_row()
    assert (row.dialect, row.error_type, row.http_status, row.model) == ("openai", "model_not_allowed", 403,
                                                                         "qwen2.5:7b")
    assert not [r for r in ollama.requests if r.path == "/api/chat"]


@pytest.mark.django_db(transaction=True)
def test_ollama_model_outside_the_list_is_403(gateway, ollama):
    limit(["llama3.2:1b"])

    with pytest.raises(ollama_client.ResponseError) as raised:
        ollama_sdk(gateway).chat(model="qwen2.5:7b", messages=HELLO)

    assert raised.value.status_code == 403
    assert last_row().error_type == "model_not_allowed"
    assert not [r for r in ollama.requests if r.path == "/api/chat"]


@pytest.mark.django_db(transaction=True)
def test_listings_show_only_the_allowed_models(gateway, ollama):
    limit(["llama3.2:1b"])

    assert [m.id for m in openai_sdk(gateway).models.list()] == ["llama3.2:1b"]
    assert [m.model for m in ollama_sdk(gateway).list().models] == ["llama3.2:1b"]
    with pytest.raises(openai.NotFoundError):
        openai_sdk(gateway).models.retrieve("qwen2.5:7b")
    with pytest.raises(ollama_client.ResponseError) as raised:
        ollama_sdk(gateway).show("qwen2.5:7b")
    assert raised.value.status_code == 404


@pytest.mark.django_db(transaction=True)
def test_templates_only_consumers_get_403_on_raw_chat_but_use_templates(gateway, valid_request):
    limit(templates_only=True)

    with pytest.raises(openai.PermissionDeniedError):
        openai_sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO)
    with pytest.raises(ollama_client.ResponseError) as raised:
        ollama_sdk(gateway).generate(model="qwen2.5:7b", prompt="hi")
    assert raised.value.status_code == 403
    with gateway.client() as client:
        assert client.post("/api/v1/llm/generate", json=valid_request).status_code == 200

    rows = list(Generation.objects.order_by("created_at").values_list("dialect", "error_type"))
    assert rows == [("openai", "raw_prompts_not_allowed"), ("ollama", "raw_prompts_not_allowed"), ("native", "")]


# -- create_api_key ---------------------------------------------------------------------------------------------------


def test_create_api_key_sets_models_and_templates_only(db, capsys):
    call_command("create_api_key", "scoped", "--models", "qwen2.5:7b, llama3.2:1b", "--templates-only")

    consumer = Consumer.objects.get(name="scoped")
    assert consumer.allowed_models == ["qwen2.5:7b", "llama3.2:1b"] and consumer.templates_only
    assert "Models it may use: qwen2.5:7b, llama3.2:1b." in capsys.readouterr().out

    call_command("create_api_key", "scoped", "--models", "")
    assert Consumer.objects.get(name="scoped").allowed_models == []


def test_create_api_key_refuses_a_bad_model_name(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--models"):
        call_command("create_api_key", "scoped", "--models", "bad name!")


def test_native_403_names_no_model_outside_the_list(generate, valid_request, consumer, make_template):
    make_template("analyst", "private", model="secret-finetune:70b", fallback_models=["other:13b"], mode="text")
    limit(["mistral:7b"])

    error = assert_error(generate({"role": "analyst", "task": "private", "payload": {"word": "hi"}}), 403,
                         "model_not_allowed")

    assert "secret-finetune" not in str(error) and "other:13b" not in str(error)
    assert "mistral:7b" in error["message"]  # its own list


def test_native_400_for_a_model_the_template_does_not_allow_lists_only_the_consumers(generate, valid_request,
                                                                                     consumer):
    limit(["llama3.2:3b", "mistral:7b"])

    error = assert_error(generate({**valid_request, "model": "mistral:7b"}), 400, "invalid_request")

    # copywriter/sns allows qwen2.5:7b, llama3.2:3b and llama3.2:1b; this consumer may use only llama3.2:3b of them.
    assert "Allowed: llama3.2:3b; or name no model to use llama3.2:3b" in error["message"]
    assert "qwen2.5" not in str(error) and "llama3.2:1b" not in str(error)
