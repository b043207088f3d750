"""Embeddings through both dialects (/api/embed, /api/embeddings, /v1/embeddings), with the real clients over a
socket: each call made through the gateway and, with the same client, to the fake Ollama directly (its /v1 layer
follows Ollama's openai.go). The same vectors, one audit row per call (kind embedding, texts bounded, vectors never
stored), refusals in each dialect's shape and audited, Ollama's failures answered with a completed row."""

import base64
import math
from array import array
import struct

import httpx
import ollama as ollama_client
import openai
import pytest
from django.urls import reverse
from langchain_ollama import OllamaEmbeddings
from langchain_openai import OpenAIEmbeddings

from llm import metrics
from llm.models import CONTENT_FIELDS, Consumer, Generation
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "nomic-embed-text"  # embedding-only on the fake, 768 dimensions
TEXTS = ["The sky is blue.", "Grass is green.", "Ollama embeds text."]


@pytest.fixture
def embedder(ollama):
    ollama.models.append(f"{MODEL}:latest")
    return ollama


def openai_via(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)


def openai_direct(ollama) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ollama.url}/v1", api_key="ollama", timeout=10, max_retries=0)


def ollama_via(gateway) -> ollama_client.Client:
    return ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                trust_env=False)


def ollama_direct(ollama) -> ollama_client.Client:
    return ollama_client.Client(host=ollama.url, timeout=10, trust_env=False)


def rows(count: int) -> list[Generation]:
    """Exactly `count` rows, all completed."""
    assert wait_for(lambda: Generation.objects.exclude(status="pending").count() == count)
    assert Generation.objects.count() == count
    return list(Generation.objects.order_by("created_at"))


def embed_requests(ollama) -> list:
    return [r for r in ollama.requests if r.path in ("/api/embed", "/api/embeddings", "/v1/embeddings")]


def unit(vector) -> bool:
    return math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)


# -- the openai client ------------------------------------------------------------------------------------------------


def test_openai_client_default_base64_matches_direct_and_is_audited(gateway, embedder):
    through = openai_via(gateway).embeddings.create(model=MODEL, input=TEXTS)
    direct = openai_direct(embedder).embeddings.create(model=MODEL, input=TEXTS)

    assert [d.embedding for d in through.data] == [d.embedding for d in direct.data]
    assert [d.index for d in through.data] == [0, 1, 2] and through.object == "list"
    assert through.model == direct.model == MODEL
    assert through.usage.prompt_tokens == through.usage.total_tokens == direct.usage.prompt_tokens == 10
    assert len(through.data[0].embedding) == 768 and unit(through.data[0].embedding)
    # The SDK asked for base64 (its default) both ways: the gateway sent it on as one call to /api/embed.
    sent = embed_requests(embedder)
    assert [r.path for r in sent] == ["/api/embed", "/v1/embeddings"]
    assert sent[0].json["input"] == TEXTS and sent[1].json["encoding_format"] == "base64"
    row = rows(1)[0]
    assert (row.kind, row.status, row.dialect, row.endpoint, row.model) == (
        "embedding", "succeeded", "openai", "/v1/embeddings", MODEL)
    assert (row.input_count, row.input_chars, row.dimensions, row.prompt_tokens) == (
        3, sum(map(len, TEXTS)), 768, 10)
    assert row.inputs == TEXTS and row.output is None and row.attempts == 1
    # Vectors are never stored, and the request's copy does not hold the texts a second time.
    assert row.request["input"] == {"count": 3, "chars": sum(map(len, TEXTS))}
    assert row.request["encoding_format"] == "base64"


def test_openai_client_float_and_dimensions(gateway, embedder):
    through = openai_via(gateway).embeddings.create(model=MODEL, input="One text.", encoding_format="float",
                                                    dimensions=64)
    direct = openai_direct(embedder).embeddings.create(model=MODEL, input="One text.", encoding_format="float",
                                                       dimensions=64)

    assert through.data[0].embedding == direct.data[0].embedding
    assert len(through.data[0].embedding) == 64 and unit(through.data[0].embedding)
    assert embed_requests(embedder)[0].json["dimensions"] == 64
    assert rows(1)[0].dimensions == 64


def test_base64_is_little_endian_float32_of_the_floats(gateway, embedder):
    with gateway.client() as client:
        floats = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}).json()
        packed = client.post("/v1/embeddings", json={"model": MODEL, "input": "x",
                                                     "encoding_format": "BASE64"}).json()

    vector = floats["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(vector)}f", base64.b64decode(packed["data"][0]["embedding"]))
    assert list(decoded) == array("f", vector).tolist()
    assert set(floats) == {"object", "data", "model", "usage"} and floats["usage"] == {"prompt_tokens": 1,
                                                                                         "total_tokens": 1}
    assert len(rows(2)) == 2


# -- the ollama client ------------------------------------------------------------------------------------------------


def test_ollama_client_embed_matches_direct(gateway, embedder):
    through = ollama_via(gateway).embed(model=MODEL, input=TEXTS, truncate=True, keep_alive="5m")
    direct = ollama_direct(embedder).embed(model=MODEL, input=TEXTS, truncate=True, keep_alive="5m")

    assert through.embeddings == direct.embeddings and through.model == direct.model == MODEL
    assert through.prompt_eval_count == direct.prompt_eval_count == 10
    assert through.total_duration > 0 and through.load_duration == direct.load_duration
    sent = embed_requests(embedder)[0].json
    assert (sent["input"], sent["truncate"], sent["keep_alive"]) == (TEXTS, True, "5m")
    row = rows(1)[0]
    assert (row.kind, row.dialect, row.endpoint, row.input_count, row.dimensions) == (
        "embedding", "ollama", "/api/embed", 3, 768)


def test_ollama_client_legacy_embeddings_matches_direct(gateway, embedder):
    through = ollama_via(gateway).embeddings(model=MODEL, prompt="Why is the sky blue?")
    direct = ollama_direct(embedder).embeddings(model=MODEL, prompt="Why is the sky blue?")

    assert through.embedding == direct.embedding and len(through.embedding) == 768
    assert embed_requests(embedder)[0].path == "/api/embeddings"
    row = rows(1)[0]
    assert (row.endpoint, row.input_count, row.inputs, row.prompt_tokens) == (
        "/api/embeddings", 1, ["Why is the sky blue?"], None)
    assert row.request["prompt"] == {"count": 1, "chars": 20}


# -- LangChain --------------------------------------------------------------------------------------------------------


def test_langchain_ollama_embeddings(gateway, embedder):
    through = OllamaEmbeddings(model=MODEL, base_url=gateway.url,
                               client_kwargs={"headers": {"Authorization": f"Bearer {gateway.key}"}, "timeout": 10})
    direct = OllamaEmbeddings(model=MODEL, base_url=embedder.url, client_kwargs={"timeout": 10})

    assert through.embed_documents(TEXTS) == direct.embed_documents(TEXTS)
    assert through.embed_query("query") == direct.embed_query("query")
    assert [r.input_count for r in rows(2)] == [3, 1]


def test_langchain_openai_embeddings(gateway, embedder):
    through = OpenAIEmbeddings(model=MODEL, base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0,
                               check_embedding_ctx_length=False)
    direct = OpenAIEmbeddings(model=MODEL, base_url=f"{embedder.url}/v1", api_key="ollama", max_retries=0,
                              check_embedding_ctx_length=False)

    assert through.embed_documents(TEXTS) == direct.embed_documents(TEXTS)
    assert through.embed_query("query") == direct.embed_query("query")
    assert [(r.dialect, r.input_count) for r in rows(2)] == [("openai", 3), ("openai", 1)]


# -- refusals ---------------------------------------------------------------------------------------------------------


def refused_row() -> Generation:
    row = rows(1)[0]
    assert (row.kind, row.status) == ("embedding", "failed")
    return row


@pytest.mark.parametrize(("body", "setting", "param", "words"), [
    ({"input": ["a", "b", "c"]}, {"EMBEDDING_MAX_INPUTS": 2}, "input", "EMBEDDING_MAX_INPUTS"),
    ({"input": "eleven char"}, {"EMBEDDING_MAX_INPUT_CHARS": 10}, "input", "EMBEDDING_MAX_INPUT_CHARS"),
    ({"input": "x", "dimensions": -1}, {}, "dimensions", "from 1 to 8192"),
    ({"input": "x", "dimensions": 8193}, {}, "dimensions", "EMBEDDING_MAX_DIMENSIONS"),
    ({"input": "x", "dimensions": 1.5}, {}, "dimensions", "whole number"),
    ({"input": "x", "encoding_format": "int8"}, {}, "encoding_format", "Supported values: ['float', 'base64']"),
    ({"input": [[1, 2, 3]]}, {}, "input", "token arrays"),
    ({"input": []}, {}, "input", "non-empty array"),
    ({"input": "x", "truncate": True}, {}, "truncate", "unknown"),
])
def test_openai_refusals_are_400s_in_openai_shape_and_audited(gateway, embedder, settings, body, setting, param,
                                                              words):
    for name, value in setting.items():
        setattr(settings, name, value)
    with gateway.client() as client:
        response = client.post("/v1/embeddings", json={"model": MODEL, **body})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and words in error["message"]
    assert refused_row().error_type == "invalid_request"
    assert embed_requests(embedder) == []


def test_openai_sdk_raises_bad_request_with_the_param(gateway, embedder, settings):
    settings.EMBEDDING_MAX_INPUTS = 2
    with pytest.raises(openai.BadRequestError) as raised:
        openai_via(gateway).embeddings.create(model=MODEL, input=TEXTS)
    assert raised.value.param == "input" and "at most 2" in raised.value.message
    assert refused_row().input_count == 3


@pytest.mark.parametrize(("path", "body", "setting", "words"), [
    ("/api/embed", {"input": ["a", "b", "c"]}, {"EMBEDDING_MAX_INPUTS": 2}, "EMBEDDING_MAX_INPUTS"),
    ("/api/embed", {"input": ["eleven", "chars"]}, {"EMBEDDING_MAX_INPUT_CHARS": 10}, "EMBEDDING_MAX_INPUT_CHARS"),
    ("/api/embed", {"input": "x", "dimensions": 0.5}, {}, "dimensions must be a whole number"),
    ("/api/embed", {"input": "x", "dimensions": 100000}, {}, "EMBEDDING_MAX_DIMENSIONS"),
    ("/api/embed", {"input": "x", "truncate": "yes"}, {}, "truncate must be true or false"),
    ("/api/embed", {"input": "x", "keep_alive": -1}, {}, "keep_alive: Must not be negative"),
    ("/api/embed", {"input": "x", "keep_alive": "2h"}, {}, "KEEP_ALIVE_MAX"),
    ("/api/embed", {"input": "x", "options": {"num_gpu": 1}}, {}, "load-time option"),
    ("/api/embed", {"input": "x", "options": {"num_ctx": 999999}}, {}, "num_ctx"),
    ("/api/embed", {"input": [1, 2]}, {}, "input[0] must be a string"),
    ("/api/embed", {"input": ""}, {}, "input is required"),
    ("/api/embeddings", {"prompt": ""}, {}, "prompt is required"),
    ("/api/embeddings", {"prompt": "x", "input": "y"}, {}, "unknown fields: input"),
])
def test_ollama_refusals_are_400s_in_ollama_shape_and_audited(gateway, embedder, settings, path, body, setting,
                                                              words):
    for name, value in setting.items():
        setattr(settings, name, value)
    with gateway.client() as client:
        response = client.post(path, json={"model": MODEL, **body})

    assert response.status_code == 400
    assert set(response.json()) == {"error"} and words.lower() in response.json()["error"].lower()
    assert refused_row().endpoint == path
    assert embed_requests(embedder) == []


def test_ollama_client_raises_response_error_on_refusal(gateway, embedder, settings):
    settings.EMBEDDING_MAX_INPUTS = 1
    with pytest.raises(ollama_client.ResponseError) as raised:
        ollama_via(gateway).embed(model=MODEL, input=["a", "b"])
    assert raised.value.status_code == 400 and "EMBEDDING_MAX_INPUTS" in raised.value.error
    assert refused_row().input_count == 2


def test_a_model_the_consumer_may_not_use_is_refused_in_both_dialects(gateway, embedder, consumer):
    consumer.allowed_models = ["qwen2.5:7b"]
    consumer.save()
    with pytest.raises(openai.PermissionDeniedError) as raised:
        openai_via(gateway).embeddings.create(model=MODEL, input="x")
    assert raised.value.param == "model"
    with pytest.raises(ollama_client.ResponseError) as refused:
        ollama_via(gateway).embed(model=MODEL, input="x")
    assert refused.value.status_code == 403
    assert [(r.kind, r.error_type) for r in rows(2)] == [("embedding", "model_not_allowed")] * 2
    assert embed_requests(embedder) == []


def test_a_templates_only_consumer_gets_no_embeddings(gateway, embedder, consumer):
    Consumer.objects.filter(pk=consumer.pk).update(templates_only=True)
    with gateway.client() as client:
        response = client.post("/api/embed", json={"model": MODEL, "input": "x"})
    assert response.status_code == 403 and "not embeddings" in response.json()["error"]
    assert refused_row().error_type == "raw_prompts_not_allowed"


def test_no_key_is_refused_and_audited_as_an_embedding(gateway, embedder):
    response = httpx.post(f"{gateway.url}/api/embed", json={"model": MODEL, "input": "x"}, trust_env=False)
    assert response.status_code == 401
    row = refused_row()
    assert (row.error_type, row.endpoint) == ("not_authenticated", "/api/embed")


def test_one_call_counts_one_against_the_rate_limit(gateway, embedder, consumer):
    Consumer.objects.filter(pk=consumer.pk).update(rate_limit_per_minute=2)
    client = ollama_via(gateway)
    client.embed(model=MODEL, input=TEXTS)  # three texts, one request
    client.embed(model=MODEL, input="one")
    with pytest.raises(ollama_client.ResponseError) as raised:
        client.embed(model=MODEL, input="two")
    assert raised.value.status_code == 429
    assert [r.error_type for r in rows(3)] == ["", "", "rate_limited"]


# -- Ollama's failures --------------------------------------------------------------------------------------------------


def test_a_model_that_is_not_pulled_is_model_not_found(gateway, ollama):
    with pytest.raises(openai.NotFoundError):
        openai_via(gateway).embeddings.create(model=MODEL, input="x")  # not installed on the fake
    row = rows(1)[0]
    assert (row.kind, row.error_type, row.attempts) == ("embedding", "model_not_found", 1)


def test_a_500_is_retried_then_answered_with_a_completed_row(gateway, embedder, settings):
    settings.OLLAMA_MAX_RETRIES, settings.OLLAMA_RETRY_BACKOFF = 1, 0
    embedder.fault("status", paths="/api/embed")
    with pytest.raises(ollama_client.ResponseError) as raised:
        ollama_via(gateway).embed(model=MODEL, input="x")

    assert raised.value.status_code == 502 and "could not run model" in raised.value.error
    assert "runner process" not in raised.value.error  # Ollama's own words stay in the audit log
    row = rows(1)[0]
    assert (row.kind, row.status, row.error_type, row.attempts) == ("embedding", "failed", "upstream_error", 2)
    assert "runner process has terminated" in row.error_message
    assert row.finished_at is not None and len(embed_requests(embedder)) == 2


def test_a_500_once_is_retried_to_success(gateway, embedder, settings):
    settings.OLLAMA_MAX_RETRIES, settings.OLLAMA_RETRY_BACKOFF = 2, 0
    embedder.fault("status", paths="/api/embed", times=1)
    through = ollama_via(gateway).embed(model=MODEL, input=TEXTS)
    assert through.embeddings == ollama_direct(embedder).embed(model=MODEL, input=TEXTS).embeddings
    row = rows(1)[0]
    assert (row.status, row.attempts) == ("succeeded", 2)


def test_a_connection_cut_is_retried_then_answered_with_a_completed_row(gateway, embedder, settings):
    settings.OLLAMA_MAX_RETRIES, settings.OLLAMA_RETRY_BACKOFF = 1, 0
    embedder.fault("reset", paths="/v1/embeddings")  # not this path: the gateway calls /api/embed
    embedder.fault("cut_off", paths="/api/embed")
    with pytest.raises(openai.APIStatusError) as raised:
        openai_via(gateway).embeddings.create(model=MODEL, input="x")

    assert raised.value.status_code == 502
    row = rows(1)[0]
    assert (row.status, row.error_type, row.attempts) == ("failed", "upstream_error", 2)


def test_ollama_context_refusal_is_passed_on_clearly(gateway, embedder):
    with gateway.client() as client:
        response = client.post("/api/embed", json={"model": MODEL, "input": "word " * 3000, "truncate": False})
    assert response.status_code == 400
    assert response.json() == {"error": "Ollama rejected the request: the input length exceeds the context length."}
    assert rows(1)[0].error_type == "invalid_request"


def test_ollama_capability_refusal_is_passed_on_clearly(gateway, embedder):
    embedder.fault("status", paths="/api/embed", status=400, message='"qwen2.5:7b" does not support embeddings')
    with pytest.raises(openai.BadRequestError) as raised:
        openai_via(gateway).embeddings.create(model="qwen2.5:7b", input="x")
    assert raised.value.body["message"] == 'Ollama rejected the request: "qwen2.5:7b" does not support embeddings.'
    row = rows(1)[0]
    assert (row.error_type, row.attempts) == ("invalid_request", 1)  # a 400 is never retried


def test_a_body_that_is_no_object_is_refused_and_not_stored(gateway, embedder):
    with gateway.client() as client:
        response = client.post("/api/embed", json="a text that is the whole body")
    assert response.status_code == 400
    row = refused_row()
    assert row.request == {"body": "(a JSON str, not an object)"} and row.inputs is None


def test_a_chat_model_embeds_too_as_in_ollama(gateway, ollama):
    # Ollama's /api/embed runs any model; the gateway passes on what it answers.
    through = ollama_via(gateway).embed(model="qwen2.5:7b", input="x")
    assert through.embeddings == ollama_direct(ollama).embed(model="qwen2.5:7b", input="x").embeddings


# -- the row, the admin, the metrics ---------------------------------------------------------------------------------


def test_stored_texts_are_bounded_and_the_full_size_recorded(gateway, embedder, settings):
    settings.EMBEDDING_STORED_INPUT_CHARS = 20
    ollama_via(gateway).embed(model=MODEL, input=["a" * 15, "b" * 15, "c" * 15])
    row = rows(1)[0]
    assert row.inputs == ["a" * 15, "b" * 5]
    assert (row.input_count, row.input_chars) == (3, 45)
    assert "inputs" in Generation.CONTENT_FIELDS and "inputs" in CONTENT_FIELDS["llm.Generation"]


def test_metrics_count_embeddings_apart(gateway, embedder):
    def value(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, labels) or 0

    labels = {"model": MODEL, "consumer": "test-team", "dialect": "ollama"}
    before = (value("llm_gateway_embedding_requests_total", outcome="succeeded", error_type="none", **labels),
              value("llm_gateway_embedding_inputs_total", **labels),
              value("llm_gateway_requests_total", outcome="succeeded", error_type="none", **labels))
    ollama_via(gateway).embed(model=MODEL, input=TEXTS)
    rows(1)
    after = (value("llm_gateway_embedding_requests_total", outcome="succeeded", error_type="none", **labels),
             value("llm_gateway_embedding_inputs_total", **labels),
             value("llm_gateway_requests_total", outcome="succeeded", error_type="none", **labels))
    assert [b - a for a, b in zip(before, after)] == [1, 3, 0]


def test_admin_filters_by_kind_and_shows_the_inputs(gateway, embedder, staff_user, client):
    ollama_via(gateway).embed(model=MODEL, input=TEXTS)
    with gateway.client() as http:
        http.post("/api/chat", json={"model": "qwen2.5:7b", "stream": False,
                                     "messages": [{"role": "user", "content": "A chat, not an embedding"}]})
    embedding, chat = rows(2)
    staff_user.is_superuser = True
    staff_user.save()
    client.force_login(staff_user)
    url = reverse("admin:llm_generation_changelist")
    listed = client.get(url, {"kind": "embedding"}).content.decode()
    assert str(embedding.pk) in listed and str(chat.pk) not in listed
    detail = client.get(reverse("admin:llm_generation_change", args=[embedding.pk])).content.decode()
    assert "Grass is green." in detail and "the vectors are never stored" in detail
    assert "Embeddings (the vectors" not in client.get(
        reverse("admin:llm_generation_change", args=[chat.pk])).content.decode()


def test_usage_rollup_counts_embedding_rows(gateway, embedder):
    from datetime import timedelta

    from django.utils import timezone

    from llm import usage
    from llm.models import UsageHour

    ollama_via(gateway).embed(model=MODEL, input=TEXTS)
    rows(1)
    usage.fold(until=timezone.now() + timedelta(hours=2))
    counted = UsageHour.objects.get(model=MODEL)
    assert (counted.requests, counted.succeeded, counted.prompt_tokens) == (1, 1, 10)


# -- mock mode --------------------------------------------------------------------------------------------------------


def test_mock_vectors_are_deterministic_unit_length_and_sized(gateway, settings):
    settings.GENERATOR_MODE = "mock"
    client = ollama_via(gateway)
    first = client.embed(model="any-model", input=["alpha", "beta"])
    again = client.embed(model="any-model", input=["alpha"])
    other = client.embed(model="other-model", input=["alpha"])
    cut = openai_via(gateway).embeddings.create(model="any-model", input="alpha", dimensions=32,
                                                encoding_format="float")

    assert len(first.embeddings[0]) == 768 and all(unit(v) for v in first.embeddings)
    assert again.embeddings[0] == first.embeddings[0] != first.embeddings[1]
    assert other.embeddings[0] != first.embeddings[0]
    assert len(cut.data[0].embedding) == 32 and unit(cut.data[0].embedding)
    assert [(r.provider, r.dimensions) for r in rows(4)] == [("mock", 768)] * 3 + [("mock", 32)]


# -- Open WebUI's RAG requests, as it sends them ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/api/embed", {"input": TEXTS, "model": MODEL, "truncate": True}),  # engine "ollama"
    ("/v1/embeddings", {"input": TEXTS, "model": MODEL}),  # engine "openai"
])
def test_open_webui_rag_batches_with_its_user_headers(gateway, embedder, path, body):
    headers = {"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json",
               "X-OpenWebUI-User-Email": "alice@example.com", "X-OpenWebUI-User-Name": "Alice"}
    response = httpx.post(f"{gateway.url}{path}", json=body, headers=headers, trust_env=False, timeout=10)
    direct = httpx.post(f"{embedder.url}{path}", json=body, trust_env=False, timeout=10)

    assert response.status_code == 200
    vectors = response.json().get("embeddings") or [d["embedding"] for d in response.json()["data"]]
    expected = direct.json().get("embeddings") or [d["embedding"] for d in direct.json()["data"]]
    assert vectors == expected and len(vectors) == 3
    row = rows(1)[0]
    assert (row.end_user, row.input_count, row.status) == ("alice@example.com", 3, "succeeded")


def test_the_consumers_max_concurrent_holds_for_embeddings(gateway, embedder, consumer):
    import threading

    Consumer.objects.filter(pk=consumer.pk).update(max_concurrent=1)
    embedder.fault("slow", paths="/api/embed", times=1, delay=1.0)
    answers = {}

    def first():
        with gateway.client() as client:
            answers["first"] = client.post("/api/embed", json={"model": MODEL, "input": "slow"})

    thread = threading.Thread(target=first)
    thread.start()
    assert wait_for(lambda: embedder.running_total >= 1 or len(embed_requests(embedder)) >= 1)
    with gateway.client() as client:
        second = client.post("/api/embed", json={"model": MODEL, "input": "refused"})
    thread.join()

    assert answers["first"].status_code == 200
    assert second.status_code == 429 and "max_concurrent=1" in second.json()["error"]
    assert sorted(r.error_type for r in rows(2)) == ["", "rate_limited"]
