"""Output schemas never make the gateway open anything, nor stall it: the permanent SSRF corpus (refs of every
scheme, $dynamicRef, $id-based resolution, refs inside $defs) sent through every door that takes a schema (the
OpenAI dialect and the Ollama dialect, live and mock, and the template admin), a loopback listener that must see no
connection and a file whose contents must appear nowhere; then catastrophic patterns, the bounds, and replies too
costly to check."""

import json
import socket
import threading
import time
import uuid
from types import SimpleNamespace

import ollama as ollama_client
import openai
import pytest
from django.contrib.auth.models import Permission
from django.forms.models import model_to_dict
from django.urls import reverse

from llm.models import Generation, PromptTemplate, PromptTemplateVersion
from tests.conftest import GENERATE_URL, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Answer in JSON."}]
# What the fake Ollama answers in live mode: every property the corpus's schemas refer from, so that a validator
# that followed their refs would reach them.
REPLY = json.dumps({"answer": "forty-two", "answers": ["forty-two"]})


class Listener:
    """A loopback TCP listener that counts connections and answers each with a JSON schema over HTTP, as the
    internal service a ref would point to: a gateway that fetched would get an answer, not a hang."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        body = json.dumps({"type": "string", "description": "from the listener"}).encode()
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                except OSError:
                    pass

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def listener():
    served = Listener()
    yield served
    served.close()


@pytest.fixture
def secret(tmp_path):
    """A JSON schema file on the gateway's disk; its token must never reach a client or a row."""
    token = f"SECRET-{uuid.uuid4().hex}"
    path = tmp_path / "secret.json"
    path.write_text(json.dumps({"type": "integer", "const": token, "description": token}))
    return SimpleNamespace(token=token, url=path.as_uri(), directory=tmp_path.as_uri() + "/")


def corpus(listener, secret) -> list[tuple[str, dict, str, str]]:
    """(name, schema, the ref as the refusal quotes it, the JSON path inside the schema where it is)."""
    here, port = listener.url, listener.port
    answer = {"type": "object", "required": ["answer"]}
    return [
        ("http ref at the top", {**answer, "$ref": f"{here}/schema.json"}, f"{here}/schema.json", "$.$ref"),
        ("http ref in a property", {**answer, "properties": {"answer": {"$ref": f"{here}/answer.json"}}},
         f"{here}/answer.json", "$.properties.answer.$ref"),
        ("https ref", {**answer, "properties": {"answer": {"$ref": f"https://127.0.0.1:{port}/a.json"}}},
         f"https://127.0.0.1:{port}/a.json", "$.properties.answer.$ref"),
        ("file ref", {**answer, "properties": {"answer": {"$ref": secret.url}}}, secret.url,
         "$.properties.answer.$ref"),
        ("relative ref against a file $id", {**answer, "$id": secret.directory,
                                             "properties": {"answer": {"$ref": "secret.json"}}},
         "secret.json", "$.properties.answer.$ref"),
        ("relative ref against an http $id", {**answer, "$id": f"{here}/schemas/root.json",
                                              "properties": {"answer": {"$ref": "answer.json"}}},
         "answer.json", "$.properties.answer.$ref"),
        ("protocol-relative ref", {**answer, "properties": {"answer": {"$ref": f"//127.0.0.1:{port}/a.json"}}},
         f"//127.0.0.1:{port}/a.json", "$.properties.answer.$ref"),
        ("urn ref", {**answer, "properties": {"answer": {"$ref": "urn:example:answer"}}}, "urn:example:answer",
         "$.properties.answer.$ref"),
        ("metaschema ref", {**answer, "properties": {"answer": {"$ref": "https://json-schema.org/draft/2020-12/schema"}}},
         "https://json-schema.org/draft/2020-12/schema", "$.properties.answer.$ref"),
        ("$dynamicRef", {**answer, "properties": {"answer": {"$dynamicRef": f"{here}/meta.json#meta"}}},
         f"{here}/meta.json#meta", "$.properties.answer.$dynamicRef"),
        ("ref inside $defs", {**answer, "$defs": {"answer": {"$ref": f"{here}/defs.json"}},
                              "properties": {"answer": {"$ref": "#/$defs/answer"}}},
         f"{here}/defs.json", "$.$defs.answer.$ref"),
        ("$dynamicRef inside $defs", {**answer, "$defs": {"node": {"$dynamicRef": secret.url + "#node"}},
                                      "properties": {"answer": {"$ref": "#/$defs/node"}}},
         secret.url + "#node", "$.$defs.node.$dynamicRef"),
        ("$id inside $defs", {**answer, "$defs": {"answer": {"$id": f"{here}/nested/", "$ref": "answer.json"}},
                              "properties": {"answer": {"$ref": "#/$defs/answer"}}},
         "answer.json", "$.$defs.answer.$ref"),
        ("ref in items and anyOf", {**answer, "properties": {"answers": {"type": "array", "items": {
            "anyOf": [{"$ref": f"{here}/item.json"}]}}}},
         f"{here}/item.json", "$.properties.answers.items.anyOf[0].$ref"),
    ]


def assert_nothing_reached(listener, secret, *texts):
    time.sleep(0.05)  # a connection the gateway opened would have been accepted by now
    assert listener.connections == 0, "the gateway connected to the loopback listener"
    for text in texts:
        assert secret.token not in text, "the secret file's contents leaked"


def row_text(row: Generation) -> str:
    return json.dumps(model_to_dict(row), default=str)


def rows_after(count: int) -> list[Generation]:
    """The rows, once `count` are completed (the door completes its row just after it answers)."""
    wait_for(lambda: Generation.objects.exclude(status="pending").count() >= count)
    return list(Generation.objects.order_by("created_at"))


@pytest.fixture(params=["live", "mock"])
def mode(request):
    """Live mode against the fake Ollama (which must not even be asked), or the mock provider."""
    if request.param == "live":
        server = request.getfixturevalue("ollama")
        server.reply = REPLY
        return SimpleNamespace(name="live", ollama=server)
    return SimpleNamespace(name="mock", ollama=None)


# -- the SSRF corpus, through every door --------------------------------------------------------------------------


def test_the_openai_dialect_refuses_every_external_ref_and_fetches_nothing(gateway, mode, listener, secret):
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)
    cases = corpus(listener, secret)

    for name, schema, ref, path in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.chat.completions.create(model="qwen2.5:7b", messages=HELLO, response_format={
                "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
        error = raised.value.body
        assert (error["type"], error["param"]) == ("invalid_request_error", "response_format"), name
        assert error["message"].startswith("response_format.json_schema.schema: "), (name, error["message"])
        assert repr(ref) in error["message"] and f" at {path} " in error["message"], (name, error["message"])
        assert_nothing_reached(listener, secret, raised.value.response.text)

    rows = rows_after(len(cases))
    assert [(r.dialect, r.status, r.error_type, r.http_status) for r in rows] == \
        [("openai", "failed", "invalid_request", 400)] * len(cases)
    assert_nothing_reached(listener, secret, *map(row_text, rows))
    if mode.ollama:
        assert mode.ollama.requests == []


def test_the_ollama_dialect_refuses_every_external_ref_and_fetches_nothing(gateway, mode, listener, secret):
    client = ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                  trust_env=False)
    cases = corpus(listener, secret)

    for name, schema, ref, path in cases:
        with pytest.raises(ollama_client.ResponseError) as raised:
            client.chat(model="qwen2.5:7b", messages=HELLO, format=schema, stream=False)
        assert raised.value.status_code == 400, name
        assert raised.value.error.startswith("format: "), (name, raised.value.error)
        assert repr(ref) in raised.value.error and f" at {path} " in raised.value.error, (name, raised.value.error)
        assert_nothing_reached(listener, secret, raised.value.error)

    rows = rows_after(len(cases))
    assert [(r.dialect, r.status, r.error_type, r.http_status) for r in rows] == \
        [("ollama", "failed", "invalid_request", 400)] * len(cases)
    assert_nothing_reached(listener, secret, *map(row_text, rows))
    if mode.ollama:
        assert mode.ollama.requests == []


@pytest.fixture
def editor(client, staff_user):
    """The staff user, with Django's permissions to add and change templates, logged in to the admin."""
    staff_user.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_prompttemplate", "add_prompttemplate", "change_prompttemplate"]))
    client.force_login(staff_user)
    return client


def add_template(editor, schema: dict, task: str = "answer"):
    """POST the admin's add form for a template with this output schema, as a browser submits it."""
    return editor.post(reverse("admin:llm_prompttemplate_add"), {
        "role": "tester", "task": task, "description": "", "is_active": "on", "sample_payload": '{"word": "hi"}',
        "system_prompt": "You answer.", "user_template": "Say {word}.", "mode": "json", "model": "",
        "fallback_models": "", "allowed_models": "", "options": "{}", "output_schema": json.dumps(schema)})


def test_the_template_admin_refuses_every_external_ref_and_fetches_nothing(editor, listener, secret):
    for name, schema, ref, path in corpus(listener, secret):
        response = add_template(editor, schema)

        assert response.status_code == 200, (name, response.status_code)  # the form again, not a redirect
        problems = response.context["adminform"].form.errors["output_schema"]
        assert len(problems) == 1 and repr(ref) in problems[0] and f" at {path} " in problems[0], (name, problems)
        html = response.content.decode()
        assert 'class="errorlist' in html and "refers outside the output schema" in html, name
        assert_nothing_reached(listener, secret, html)
    assert not PromptTemplate.objects.filter(role="tester").exists()


def test_a_template_saved_before_the_checks_is_never_fetched_for(client, api_key, listener, secret, mode):
    """Existing templates stay as they are; one whose schema the checks refuse fails its requests, fetching nothing."""
    template = PromptTemplate.objects.create(role="legacy", task="answer", sample_payload={"word": "hi"})
    # Saved without the checks, as a version written before them was: save() does not clean.
    PromptTemplateVersion(template=template, number=1, system_prompt="You answer.", user_template="Say {word}.",
                          mode="json", output_schema={"type": "object", "required": ["answer"], "properties": {
                              "answer": {"$ref": f"{listener.url}/answer.json"},
                              "secret": {"$ref": secret.url}}}).save()
    if mode.ollama:
        mode.ollama.reply = json.dumps({"answer": "forty-two", "secret": 1})

    response = client.post(GENERATE_URL, {"role": "legacy", "task": "answer", "payload": {"word": "hi"}},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api_key}")

    assert response.status_code == 502, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_output" and "The output schema cannot be used" in error["message"]
    assert "refers outside the output schema" in error["message"]
    row = Generation.objects.get()
    assert (row.status, row.error_type) == ("failed", "invalid_output")
    assert_nothing_reached(listener, secret, response.content.decode(), row_text(row))


# -- patterns, bounds and costly replies, through the doors ---------------------------------------------------------


def test_a_catastrophically_backtracking_pattern_is_checked_in_milliseconds(gateway, ollama):
    """(x+x+)+y against 32 characters: Python's re would take hours; RE2 answers at once."""
    ollama.reply = json.dumps({"code": "x" * 32})
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "(x+x+)+y"}}, "required": ["code"]}
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        sdk.chat.completions.create(model="qwen2.5:7b", messages=HELLO, response_format={
            "type": "json_schema", "json_schema": {"name": "code", "schema": schema}})

    assert time.monotonic() - started < 2  # two model calls (one retry) and two checks, all on loopback
    assert raised.value.body["code"] == "invalid_output"
    assert "does not match '(x+x+)+y'" in raised.value.body["message"]
    with gateway.client() as client:  # the worker is free: another request is answered at once
        assert client.get("/healthz").status_code == 200


def test_a_reply_too_costly_to_check_is_invalid_output_at_once(gateway, ollama):
    """uniqueItems over 20,000 objects: jsonschema compares every pair (minutes); the budget stops it first."""
    ollama.reply = json.dumps({"items": [{"n": n} for n in range(20_000)]})
    schema = {"type": "object", "properties": {"items": {"type": "array", "uniqueItems": True}}}
    client = ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                  trust_env=False)

    started = time.monotonic()
    with pytest.raises(ollama_client.ResponseError) as raised:
        client.chat(model="qwen2.5:7b", messages=HELLO, format=schema, stream=False)

    assert time.monotonic() - started < 3
    assert raised.value.status_code == 502
    assert "could not be checked against the output schema" in raised.value.error
    row = rows_after(1)[0]
    assert (row.error_type, row.raw_output[:10]) == ("invalid_output", '{"items": ')


def deep(levels: int) -> dict:
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def doubling_refs(steps: int) -> dict:
    """Each def applies the next twice: 2**steps subschemas for one value, from a few hundred bytes."""
    defs = {f"d{n}": {"anyOf": [{"$ref": f"#/$defs/d{n + 1}"}, {"$ref": f"#/$defs/d{n + 1}"}]} for n in range(steps)}
    defs[f"d{steps}"] = {"type": "string"}
    return {"type": "object", "$defs": defs, "properties": {"answer": {"$ref": "#/$defs/d0"}}}


BOUNDS = [
    ("size", {"type": "object", "properties": {f"p{n}": {"type": "string", "description": "x" * 100}
                                               for n in range(600)}}, "the limit is 65,536 bytes"),
    ("refs", {"type": "object", "$defs": {"s": {"type": "string"}},
              "properties": {f"p{n}": {"$ref": "#/$defs/s"} for n in range(257)}}, "more than 256 refs"),
    ("minItems", {"type": "object", "properties": {"tags": {"type": "array", "minItems": 1_000_000_000}}},
     "minItems at $.properties.tags.minItems is 1,000,000,000; the gateway allows at most 10,000"),
    ("minLength", {"type": "object", "properties": {"text": {"type": "string", "minLength": 10_001}}},
     "minLength at $.properties.text.minLength is 10,001"),
    ("minProperties", {"type": "object", "minProperties": 50_000}, "minProperties at $.minProperties is 50,000"),
    ("minContains", {"type": "object", "properties": {"tags": {"type": "array", "contains": {"type": "string"},
                                                               "minContains": 99_999}}},
     "minContains at $.properties.tags.minContains is 99,999"),
    ("pattern RE2 cannot compile", {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)x"}}},
     "pattern '(?=x)x' at $.properties.a.pattern is not a regular expression RE2 accepts"),
    ("ref cycle", {"type": "object", "$ref": "#"}, "$ref '#' at $.$ref leads back to $"),
    ("mutual ref cycle", {"type": "object", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
                          "properties": {"x": {"$ref": "#/$defs/a"}}},
     ".$ref leads back to $.$defs."),
    ("refs that multiply subschemas", doubling_refs(40), "applies more than 256 subschemas to one value"),
]


@pytest.mark.parametrize("name, schema, problem", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_each_bound_is_a_400_naming_the_path_in_both_dialects(gateway, ollama, name, schema, problem):
    ollama.reply = "{}"
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)
    client = ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                  trust_env=False)

    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="qwen2.5:7b", messages=HELLO, response_format={
            "type": "json_schema", "json_schema": {"name": "bounded", "schema": schema}})
    assert raised.value.body["message"].startswith("response_format.json_schema.schema: ")
    assert problem in raised.value.body["message"]

    with pytest.raises(ollama_client.ResponseError) as raised:
        client.chat(model="qwen2.5:7b", messages=HELLO, format=schema, stream=False)
    assert raised.value.status_code == 400
    assert raised.value.error.startswith("format: ") and problem in raised.value.error

    assert [(r.dialect, r.error_type, r.http_status) for r in rows_after(2)] == [
        ("openai", "invalid_request", 400), ("ollama", "invalid_request", 400)]
    assert ollama.requests == []


def test_the_mock_is_never_asked_for_more_than_the_bounds(gateway):
    """In mock mode, the default, a schema asking for a million items is refused before the mock builds any."""
    client = ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                  trust_env=False)
    schema = {"type": "object", "properties": {"tags": {"type": "array", "minItems": 1_000_000}}, "required": ["tags"]}

    with pytest.raises(ollama_client.ResponseError) as raised:
        client.chat(model="qwen2.5:7b", messages=HELLO, format=schema, stream=False)

    assert raised.value.status_code == 400 and "minItems at $.properties.tags.minItems" in raised.value.error


def test_the_template_admin_refuses_each_bound_on_the_output_schema_field(editor):
    for name, schema, problem in [*BOUNDS, ("depth", deep(20), "nested more than 32 levels deep")]:
        response = add_template(editor, schema, task=name.replace(" ", "_")[:30])

        assert response.status_code == 200, name
        problems = response.context["adminform"].form.errors["output_schema"]
        assert any(problem in p for p in problems), (name, problems)
    assert not PromptTemplate.objects.filter(role="tester").exists()


def test_the_template_admin_answers_json_nested_too_deeply_with_a_form_error(editor):
    response = editor.post(reverse("admin:llm_prompttemplate_add"), {
        "role": "tester", "task": "deep", "is_active": "on", "sample_payload": '{"word": "hi"}',
        "system_prompt": "You answer.", "user_template": "Say {word}.", "mode": "json", "options": "{}",
        "output_schema": "[" * 5000 + "]" * 5000})

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["output_schema"] == ["Enter JSON nested less deeply."]
