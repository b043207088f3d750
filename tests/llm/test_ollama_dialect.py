"""The Ollama dialect, driven by the official `ollama` Python client over a real socket to the gateway."""

import json

import httpx
import ollama as ollama_client
import pytest

from llm.models import Generation
from tests.conftest import LONG_WINDOW, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


def client(gateway, key=None, **kwargs) -> ollama_client.Client:
    return ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {key or gateway.key}"},
                                timeout=10, trust_env=False, **kwargs)


def only_row() -> Generation:
    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert Generation.objects.count() == 1
    return row


def test_chat_is_answered_and_audited(gateway, ollama):
    ollama.reply = "Hello there."

    reply = client(gateway).chat(model="qwen2.5:7b", messages=HELLO, options={"temperature": 0.1, "num_predict": 30})

    row = only_row()
    assert reply.message.content == "Hello there." and reply.message.role == "assistant"
    assert reply.done is True and reply.done_reason == "stop" and reply.model == "qwen2.5:7b"
    assert reply.eval_count == row.completion_tokens > 0 and reply.prompt_eval_count == row.prompt_tokens > 0
    assert reply.total_duration > 0 and reply.eval_duration > 0
    assert (row.dialect, row.endpoint, row.status, row.output, row.role, row.task) == (
        "ollama", "/api/chat", "succeeded", "Hello there.", "", "")
    sent = ollama.requests[-1].json
    assert sent["messages"] == HELLO and sent["options"] == {"temperature": 0.1, "num_predict": 30}


def test_chat_streams(gateway, ollama):
    ollama.reply = "One two three four five."

    parts = list(client(gateway).chat(model="qwen2.5:7b", messages=HELLO, stream=True))

    *pieces, last = parts
    assert "".join(p.message.content for p in pieces) == "One two three four five." and len(pieces) > 2
    assert not any(p.done for p in pieces)
    assert last.done and last.done_reason == "stop" and last.eval_count > 0
    row = only_row()
    assert (row.stream, row.dialect, row.output) == (True, "ollama", "One two three four five.")


def test_streaming_is_the_default_as_in_ollama(gateway, ollama):
    ollama.reply = "a b c d"
    with httpx.stream("POST", f"{gateway.url}/api/chat", trust_env=False,
                      headers={"Authorization": f"Bearer {gateway.key}"},
                      json={"model": "qwen2.5:7b", "messages": HELLO}) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert response.headers["content-type"] == "application/x-ndjson"
    assert len(lines) > 2 and lines[-1]["done"] is True


def test_generate_with_system_and_json_format(gateway, ollama):
    ollama.reply = '{"ok": true}'

    reply = client(gateway).generate(model="qwen2.5:7b", prompt="Answer in JSON.", system="Be exact.", format="json")

    assert json.loads(reply.response) == {"ok": True} and reply.done
    sent = ollama.requests[-1]
    assert sent.path == "/api/generate"
    assert (sent.json["prompt"], sent.json["system"], sent.json["format"]) == ("Answer in JSON.", "Be exact.", "json")
    row = only_row()
    assert (row.endpoint, row.mode, row.output) == ("/api/generate", "json", {"ok": True})
    assert row.prompt == {"prompt": "Answer in JSON.", "system": "Be exact."}


def test_generate_streams(gateway, ollama):
    ollama.reply = "one two three"

    parts = list(client(gateway).generate(model="qwen2.5:7b", prompt="Count.", stream=True))

    assert "".join(p.response for p in parts) == "one two three" and parts[-1].done


def test_list_show_ps_version(gateway, ollama):
    c = client(gateway)

    assert [m.model for m in c.list().models] == ["qwen2.5:7b", "llama3.2:1b"]
    shown = c.show("qwen2.5:7b")
    assert shown.details is not None
    assert isinstance(c.ps().models, list)
    assert c.version if hasattr(c, "version") else True
    with httpx.Client(base_url=gateway.url, trust_env=False, headers={"Authorization": f"Bearer {gateway.key}"}) as h:
        assert h.get("/api/version").json()["version"]
    with pytest.raises(ollama_client.ResponseError) as raised:
        c.show("mistral:7b")
    assert raised.value.status_code == 404
    assert Generation.objects.count() == 0


def test_list_in_mock_mode_names_the_templates_models(gateway):
    names = [m.model for m in client(gateway).list().models]
    assert names[0] == "qwen2.5:7b" and "llama3.2:3b" in names


def test_listings_need_a_key_but_no_rate_limit(gateway, ollama, settings):
    settings.RATE_LIMIT_PER_MINUTE = 1
    settings.RATE_LIMIT_WINDOW_SECONDS = LONG_WINDOW
    for _ in range(3):
        assert client(gateway).list().models
    with pytest.raises(ollama_client.ResponseError) as raised:
        client(gateway, key="gw_nope_nope").list()
    assert raised.value.status_code == 401


def test_the_key_as_basic_auth_password(gateway, ollama):
    ollama.reply = "hi"
    c = ollama_client.Client(host=gateway.url, auth=("anyone", gateway.key), trust_env=False, timeout=10)

    assert c.chat(model="qwen2.5:7b", messages=HELLO).message.content == "hi"
    with httpx.Client(trust_env=False) as h:
        host = gateway.url.removeprefix("http://")
        assert h.get(f"http://user:{gateway.key}@{host}/api/tags").status_code == 200


def test_errors_are_response_errors_with_ollamas_status(gateway, ollama):
    with pytest.raises(ollama_client.ResponseError) as raised:
        client(gateway, key="gw_nope_nope").chat(model="qwen2.5:7b", messages=HELLO)
    assert raised.value.status_code == 401 and "not valid" in raised.value.error

    with pytest.raises(ollama_client.ResponseError) as raised:
        client(gateway).chat(model="mistral:7b", messages=HELLO)
    assert raised.value.status_code == 404

    with pytest.raises(ollama_client.ResponseError) as raised:
        client(gateway).chat(model="qwen2.5:7b", messages=HELLO, options={"temperature": 9, "bogus": 1})
    assert raised.value.status_code == 400 and "temperature" in raised.value.error and "bogus" in raised.value.error

    rows = Generation.objects.order_by("created_at")
    assert [(r.dialect, r.error_type) for r in rows] == [
        ("ollama", "authentication_failed"), ("ollama", "model_not_found"), ("ollama", "invalid_request")]


def test_rate_limit_is_429(gateway, ollama, settings):
    settings.RATE_LIMIT_PER_MINUTE = 1
    settings.RATE_LIMIT_WINDOW_SECONDS = LONG_WINDOW
    client(gateway).chat(model="qwen2.5:7b", messages=HELLO)
    with pytest.raises(ollama_client.ResponseError) as raised:
        client(gateway).chat(model="qwen2.5:7b", messages=HELLO)
    assert raised.value.status_code == 429


@pytest.mark.parametrize("extra, named", [
    ({"keep_alive": "1h"}, "keep_alive"), ({"template": "{{ .Prompt }}"}, "template"), ({"context": [1, 2]}, "context"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"), ({"images": ["aGk="]}, "images"),
])
def test_server_wide_or_prompt_bypassing_fields_are_refused(gateway, extra, named):
    with gateway.client() as h:
        response = h.post("/api/generate", json={"model": "qwen2.5:7b", "prompt": "hi", **extra})
    assert response.status_code == 400 and named in response.json()["error"]
    assert only_row().error_type == "invalid_request"


def test_an_error_after_the_stream_started_is_one_error_line(gateway, ollama):
    ollama.reply = "One two three four five six."
    ollama.fault("stream_error", after=2, message="runner died")

    with pytest.raises(ollama_client.ResponseError) as raised:
        list(client(gateway).chat(model="qwen2.5:7b", messages=HELLO, stream=True))

    assert raised.value.error == "Ollama reported an error mid-stream."
    row = only_row()
    assert (row.status, row.error_type) == ("failed", "upstream_error") and "runner died" in row.error_message


@pytest.mark.parametrize("call", [
    lambda c: c.pull("llama3.2:1b"), lambda c: c.delete("qwen2.5:7b"), lambda c: c.copy("qwen2.5:7b", "mine"),
    lambda c: c.push("qwen2.5:7b"), lambda c: c.create(model="mine", from_="qwen2.5:7b"),
])
def test_model_management_is_refused(gateway, ollama, call):
    with pytest.raises(ollama_client.ResponseError) as raised:
        call(client(gateway))
    assert raised.value.status_code == 403 and "never through the gateway" in raised.value.error
    assert not [r for r in ollama.requests if r.path != "/api/tags"]


# Deep enough to exhaust the JSON parser's recursion, small enough for the path's body limit (16 KiB).
NESTED = b'{"model": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
SURROGATE = b'{"model": "qwen\\ud800"}'


@pytest.mark.parametrize("body", [NESTED, SURROGATE, b"\xff\xfe not utf-8", b"[1, 2]"],
                         ids=["nested", "surrogate", "not-utf8", "not-an-object"])
def test_show_checks_the_key_before_it_reads_the_body(gateway, body):
    with httpx.Client(base_url=gateway.url, trust_env=False) as h:
        response = h.post("/api/show", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 401 and isinstance(response.json()["error"], str)


@pytest.mark.parametrize("body, says", [
    (NESTED, "not valid JSON"), (SURROGATE, "model: Must be an Ollama model name"),
    (b"\xff\xfe not utf-8", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
    (b'{"model": 7}', "model: Must be a model name"), (b"{}", "model is required"),
], ids=["nested", "surrogate", "not-utf8", "not-an-object", "not-a-string", "missing"])
def test_show_answers_a_bad_body_400_in_ollamas_shape(gateway, body, says):
    with httpx.Client(base_url=gateway.url, trust_env=False, headers={"Authorization": f"Bearer {gateway.key}"}) as h:
        response = h.post("/api/show", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and says in response.json()["error"]


def test_show_refuses_a_body_over_the_limit(gateway):
    with httpx.Client(base_url=gateway.url, trust_env=False, headers={"Authorization": f"Bearer {gateway.key}"}) as h:
        response = h.post("/api/show", content=b'{"model": "' + b"a" * 70_000 + b'"}')

    assert response.status_code == 413 and "limit of 16384 bytes" in response.json()["error"]
