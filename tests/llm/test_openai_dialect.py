"""The OpenAI dialect, driven by the official `openai` SDK over a real socket to the gateway under uvicorn."""

import json

import httpx
import openai
import pytest

from llm import api_keys
from llm.models import Consumer, Generation
from tests.conftest import LONG_WINDOW, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


def sdk(gateway, key=None, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key or gateway.key, timeout=10, **kwargs)


def only_row() -> Generation:
    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert Generation.objects.count() == 1
    return row


# -- chat -------------------------------------------------------------------------------------------------------------


def test_chat_completion_is_answered_and_audited(gateway, ollama):
    ollama.reply = "Hello there."

    completion = sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO, temperature=0.2,
                                                      max_tokens=50, seed=7, stop="\n\n", user="alice@example.com")

    row = only_row()
    assert completion.id == f"chatcmpl-{row.id}"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello there."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "qwen2.5:7b"
    assert completion.usage.prompt_tokens == row.prompt_tokens > 0
    assert completion.usage.completion_tokens == row.completion_tokens > 0
    assert completion.usage.total_tokens == row.prompt_tokens + row.completion_tokens
    assert (row.dialect, row.endpoint, row.status, row.model) == ("openai", "/v1/chat/completions", "succeeded",
                                                                  "qwen2.5:7b")
    assert (row.role, row.task, row.mode, row.template_version) == ("", "", "text", None)
    assert row.output == "Hello there." and row.end_user == "alice@example.com"
    assert row.consumer.name == "test-team"
    sent = ollama.requests[-1].json
    assert sent["messages"] == HELLO and sent["stream"] is False and "format" not in sent
    assert sent["options"] == {"temperature": 0.2, "num_predict": 50, "seed": 7, "stop": ["\n\n"]}


def test_streamed_chat_with_usage(gateway, ollama):
    ollama.reply = "One two three four five."

    chunks = list(sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO, stream=True,
                                                       stream_options={"include_usage": True}))

    row = only_row()
    assert all(c.id == f"chatcmpl-{row.id}" and c.object == "chat.completion.chunk" for c in chunks)
    *text_chunks, finish, usage = chunks
    assert text_chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in text_chunks) == "One two three four five."
    assert len(text_chunks) > 2
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage.completion_tokens == row.completion_tokens > 0
    assert (row.dialect, row.stream, row.output) == ("openai", True, "One two three four five.")
    assert ollama.requests[-1].json["stream"] is True


def test_streamed_chat_without_usage_ends_with_done(gateway):
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", trust_env=False,
                      headers={"Authorization": f"Bearer {gateway.key}"},
                      json={"model": "qwen2.5:7b", "messages": HELLO, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_json_mode_asks_ollama_for_json(gateway, ollama):
    ollama.reply = '{"greeting": "hello"}'

    completion = sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO,
                                                      response_format={"type": "json_object"})

    assert json.loads(completion.choices[0].message.content) == {"greeting": "hello"}
    assert ollama.requests[-1].json["format"] == "json"
    row = only_row()
    assert (row.mode, row.output) == ("json", {"greeting": "hello"})


def test_json_schema_becomes_ollamas_format(gateway, ollama):
    schema = {"type": "object", "properties": {"greeting": {"type": "string"}}, "required": ["greeting"]}
    ollama.reply = '{"greeting": "hi"}'

    completion = sdk(gateway).chat.completions.create(
        model="qwen2.5:7b", messages=HELLO,
        response_format={"type": "json_schema", "json_schema": {"name": "greeting", "schema": schema}})

    assert json.loads(completion.choices[0].message.content) == {"greeting": "hi"}
    assert ollama.requests[-1].json["format"] == schema


def test_content_parts_and_defaults_that_langchain_sends_are_accepted(gateway, ollama):
    ollama.reply = "ok"
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "user", "content": "again"}]

    completion = sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=messages, n=1, logprobs=False,
                                                      parallel_tool_calls=False, presence_penalty=0.5,
                                                      frequency_penalty=0.1, top_p=0.9,
                                                      max_completion_tokens=20)

    assert completion.choices[0].message.content == "ok"
    sent = ollama.requests[-1].json
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hello\nthere"},
                                {"role": "assistant", "content": ""}, {"role": "user", "content": "again"}]
    assert sent["options"] == {"presence_penalty": 0.5, "frequency_penalty": 0.1, "top_p": 0.9, "num_predict": 20}


def test_mock_mode_answers_a_raw_chat(gateway):
    completion = sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO)

    assert "Say hello." in completion.choices[0].message.content
    assert only_row().provider == "mock"


# -- models -----------------------------------------------------------------------------------------------------------


def test_models_list_shows_ollamas_models(gateway, ollama):
    ids = [m.id for m in sdk(gateway).models.list()]

    assert ids == ["qwen2.5:7b", "llama3.2:1b"]
    assert sdk(gateway).models.retrieve("llama3.2:1b").id == "llama3.2:1b"
    assert Generation.objects.count() == 0


def test_models_list_in_mock_mode_names_the_templates_models(gateway):
    ids = [m.id for m in sdk(gateway).models.list()]

    assert ids[0] == "qwen2.5:7b" and "llama3.2:3b" in ids


def test_models_listing_needs_a_key_and_is_not_rate_limited(gateway, ollama, settings):
    settings.RATE_LIMIT_PER_MINUTE = 1
    settings.RATE_LIMIT_WINDOW_SECONDS = LONG_WINDOW
    client = sdk(gateway)
    for _ in range(3):
        assert client.models.list().data
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, key="gw_nope_nope").models.list()
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("mistral:7b")


# -- errors -----------------------------------------------------------------------------------------------------------


def test_a_wrong_key_is_the_sdks_authentication_error_and_audited(gateway):
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk(gateway, key="gw_nope_nope").chat.completions.create(model="qwen2.5:7b", messages=HELLO)

    assert raised.value.status_code == 401
    assert raised.value.body["type"] == "authentication_error" and raised.value.body["code"] == "authentication_failed"
    assert raised.value.response.headers["x-should-retry"] == "false"
    row = only_row()
    assert (row.dialect, row.error_type, row.http_status) == ("openai", "authentication_failed", 401)


def test_rate_limit_is_the_sdks_rate_limit_error_with_retry_after(gateway, settings):
    settings.RATE_LIMIT_PER_MINUTE = 1
    settings.RATE_LIMIT_WINDOW_SECONDS = LONG_WINDOW
    client = sdk(gateway)
    client.chat.completions.create(model="qwen2.5:7b", messages=HELLO)

    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="qwen2.5:7b", messages=HELLO)

    assert int(raised.value.response.headers["retry-after"]) > 0
    assert Generation.objects.filter(error_type="rate_limited", dialect="openai").count() == 1


def test_a_missing_model_is_the_sdks_not_found_error(gateway, ollama):
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(gateway).chat.completions.create(model="mistral:7b", messages=HELLO)

    assert raised.value.body["code"] == "model_not_found"
    assert only_row().error_type == "model_not_found"


@pytest.mark.parametrize("extra, named", [
    ({"n": 2}, "n"), ({"logit_bias": {"50256": -100}}, "logit_bias"), ({"logprobs": True}, "logprobs"),
    ({"functions": [{"name": "f"}]}, "functions"), ({"frobnicate": 1}, "frobnicate"),
])
def test_unsupported_parameters_are_refused_by_name(gateway, extra, named):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO, extra_body=extra)

    assert named in raised.value.message and raised.value.body["param"] == named
    assert raised.value.response.headers["x-should-retry"] == "false"
    row = only_row()
    assert (row.error_type, row.http_status, row.dialect) == ("invalid_request", 400, "openai")


@pytest.mark.parametrize("body, param", [
    ({"messages": HELLO}, "model"),
    ({"model": "qwen2.5:7b", "messages": []}, "messages"),
    ({"model": "qwen2.5:7b", "messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"model": "qwen2.5:7b", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "qwen2.5:7b", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].image_url"),
    ({"model": "qwen2.5:7b", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "messages[0].content[0]"),
    ({"model": "qwen2.5:7b", "messages": HELLO, "temperature": 7}, "temperature"),
    ({"model": "qwen2.5:7b", "messages": HELLO, "max_tokens": "many"}, "max_tokens"),
    ({"model": "qwen2.5:7b", "messages": HELLO, "response_format": {"type": "yaml"}}, "response_format"),
    ({"model": "qwen2.5:7b", "messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
    ([1, 2], "body"),
])
def test_invalid_requests_are_400_naming_the_parameter(gateway, body, param):
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert only_row().error_type == "invalid_request"


def test_bad_json_and_large_bodies_are_refused_in_openais_shape(gateway, settings):
    settings.CHAT_MAX_BODY_BYTES = 2048
    with gateway.client() as client:
        broken = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
        large = client.post("/v1/chat/completions",
                            json={"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_request"
    assert large.status_code == 413 and large.json()["error"]["code"] == "payload_too_large"


def test_upstream_failure_after_retries_is_internal_server_error_not_retried_by_the_sdk(gateway, ollama):
    ollama.fault("status", status=503, message="server busy", times=10)

    with pytest.raises(openai.InternalServerError) as raised:
        sdk(gateway, max_retries=2).chat.completions.create(model="qwen2.5:7b", messages=HELLO)

    assert raised.value.response.headers["x-should-retry"] == "false"
    row = only_row()
    assert row.attempts == 3 and row.dialect == "openai"


def test_an_error_after_the_stream_started_is_one_error_event(gateway, ollama):
    ollama.reply = "One two three four five six."
    ollama.fault("stream_error", after=2, message="runner died")

    with pytest.raises(openai.APIError) as raised:
        list(sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO, stream=True))

    assert "error mid-stream" in raised.value.message and "runner died" not in raised.value.message
    row = only_row()
    assert (row.status, row.error_type, row.http_status) == ("failed", "upstream_error", 200)
    assert "runner died" in row.error_message


def test_unknown_v1_path_is_404_in_openais_shape(gateway):
    with gateway.client() as client:
        response = client.get("/v1/assistants")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_metrics_carry_the_dialect(gateway):
    from llm import metrics

    def count(dialect):
        return metrics.REGISTRY.get_sample_value(
            "llm_gateway_requests_total", {"outcome": "succeeded", "error_type": "none", "model": "qwen2.5:7b",
                                           "consumer": "test-team", "dialect": dialect}) or 0.0

    before = count("openai"), count("ollama")
    sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=HELLO)
    with gateway.client() as client:
        assert client.post("/api/chat", json={"model": "qwen2.5:7b", "messages": HELLO, "stream": False}).is_success

    assert wait_for(lambda: (count("openai"), count("ollama")) == (before[0] + 1, before[1] + 1))
    assert metrics.REGISTRY.get_sample_value("llm_gateway_requests_in_flight", {"dialect": "openai"}) == 0
