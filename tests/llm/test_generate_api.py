"""POST /api/v1/llm/generate: mock and live success, every error type, one audit row per attempt."""

import json
import uuid

import pytest
from jsonschema import Draft202012Validator

from llm.models import Generation, PromptTemplateVersion
from tests.conftest import GENERATE_URL, SNS_REPLY, assert_error

pytestmark = pytest.mark.django_db


def only_row():
    rows = list(Generation.objects.all())
    assert len(rows) == 1, rows
    return rows[0]


# -- mock mode ---------------------------------------------------------------------------------------------------


def sns_version():
    return PromptTemplateVersion.objects.get(template__role="copywriter", template__task="sns", number=1)


def test_mock_json_mode_answers_with_the_template_schema_and_is_audited(generate, valid_request):
    response = generate(valid_request, HTTP_USER_AGENT="pytest-agent")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == response["X-Request-ID"]
    assert body["provider"] == "mock"
    assert body["model"] == "qwen2.5:7b"
    assert body["mode"] == "json"
    assert set(body["output"]) == {"caption", "hashtags", "call_to_action"}
    Draft202012Validator(sns_version().output_schema).validate(body["output"])
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert body["latency_ms"] >= body["upstream_ms"] >= 0

    row = only_row()
    assert str(row.id) == body["id"]
    assert row.status == Generation.Status.SUCCEEDED and row.http_status == 200
    assert (row.role, row.task, row.mode, row.provider, row.model) == ("copywriter", "sns", "json", "mock",
                                                                       "qwen2.5:7b")
    assert row.request == valid_request
    assert row.output == body["output"]
    assert row.template_version == sns_version()
    assert row.models_tried == [{"model": "qwen2.5:7b", "outcome": "succeeded"}]
    assert row.prompt[0]["role"] == "system" and "social media copywriter" in row.prompt[0]["content"]
    assert "social media post about Green tea" in row.prompt[1]["content"] and "Tone: calm" in row.prompt[1]["content"]
    assert row.client_ip == "127.0.0.1" and row.user_agent == "pytest-agent"
    assert row.finished_at >= row.created_at
    assert row.latency_ms == body["latency_ms"]


def test_mock_text_mode_returns_a_string(generate, valid_request):
    response = generate({**valid_request, "mode": "text", "model": "llama3.2:1b"})

    assert response.status_code == 200
    body = response.json()
    assert isinstance(body["output"], str) and "copywriter" in body["output"]
    assert body["model"] == "llama3.2:1b" and body["mode"] == "text"
    assert only_row().output == body["output"]


def test_mock_is_deterministic(generate, valid_request):
    first = generate(valid_request).json()
    second = generate(valid_request).json()
    other = generate({**valid_request, "payload": {"product": "Coffee", "tone": "calm"}}).json()

    assert first["output"] == second["output"]
    assert first["id"] != second["id"]
    assert other["output"] != first["output"]


def test_mock_waits_the_configured_delay(generate, valid_request, settings):
    settings.MOCK_RESPONSE_DELAY = 0.2

    body = generate(valid_request).json()

    assert body["upstream_ms"] >= 200
    assert body["latency_ms"] >= body["upstream_ms"]


# -- live mode ---------------------------------------------------------------------------------------------------


def test_live_json_mode_calls_ollama_chat_with_the_schema_as_format(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY

    response = generate({**valid_request, "options": {"temperature": 0.2, "num_predict": 64, "seed": 7}})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["provider"] == "ollama"
    assert body["model"] == "qwen2.5:7b"
    assert body["output"] == json.loads(SNS_REPLY)
    sent = ollama.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.json["stream"] is False
    assert sent.json["format"] == sns_version().output_schema
    assert sent.json["model"] == "qwen2.5:7b"
    assert sent.json["options"] == {"temperature": 0.2, "num_predict": 64, "seed": 7}
    assert [m["role"] for m in sent.json["messages"]] == ["system", "user"]
    assert "Green tea" in sent.json["messages"][1]["content"]
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0

    row = only_row()
    assert row.status == "succeeded" and row.provider == "ollama"
    assert row.prompt == sent.json["messages"]
    assert row.output == body["output"]
    assert row.upstream_ms is not None and row.upstream_ms <= row.latency_ms


def test_live_text_mode_sends_no_format(generate, valid_request, ollama):
    ollama.reply = "Calm mornings start with green tea."

    response = generate({**valid_request, "mode": "text"})

    assert response.status_code == 200
    assert response.json()["output"] == "Calm mornings start with green tea."
    assert "format" not in ollama.requests[-1].json
    assert ollama.requests[-1].json["options"] == {"temperature": 0.8}  # the template's default options


def test_live_token_counts_come_from_ollama(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY

    body = generate(valid_request).json()

    words_in_reply = len(ollama.reply.split())
    assert body["usage"]["completion_tokens"] == words_in_reply  # the test server's eval_count
    row = only_row()
    assert (row.prompt_tokens, row.completion_tokens) == (body["usage"]["prompt_tokens"], words_in_reply)


# -- invalid requests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({"task": "sns", "payload": {}}, "role"),
        ({"role": "copywriter", "payload": {}}, "task"),
        ({"role": "copywriter", "task": "sns"}, "payload"),
        ({"role": 123, "task": "sns", "payload": {}}, "role"),
        ({"role": "copywriter", "task": ["sns"], "payload": {}}, "task"),
        ({"role": "copywriter", "task": "sns", "payload": [1, 2]}, "payload"),
        ({"role": "copywriter", "task": "sns", "payload": "text"}, "payload"),
        ({"role": "copywriter", "task": "sns", "payload": {}, "mode": "yaml"}, "mode"),
        ({"role": "copywriter", "task": "sns", "payload": {}, "options": [1]}, "options"),
        ({"role": "copywriter", "task": "sns", "payload": {}, "model": 7}, "model"),
        ({"role": "", "task": "sns", "payload": {}}, "role"),
        ({"role": "x" * 101, "task": "sns", "payload": {}}, "role"),
        ({"role": "copywriter", "task": "sns", "payload": {}, "temperature": 1}, "temperature"),
    ],
)
def test_invalid_fields_are_400_with_per_field_details_and_audited(generate, body, field):
    response = generate(body)

    error = assert_error(response, 400, "invalid_request")
    assert field in error["details"], error
    row = only_row()
    assert str(row.id) == error["request_id"]
    assert row.status == "failed" and row.http_status == 400 and row.error_type == "invalid_request"
    assert row.request == body
    assert row.provider == ""  # no provider was called


@pytest.mark.parametrize(
    "raw",
    ['{"role": "copywriter",', "not json", "", "   ", '{"role": NaN}', "[1e999]", "\xff\xfe", "[" * 5000 + "]" * 5000],
)
def test_malformed_bodies_are_400_and_audited(generate, raw):
    response = generate(raw=raw.encode("latin-1") if raw == "\xff\xfe" else raw)

    error = assert_error(response, 400, "invalid_request")
    row = only_row()
    assert row.error_type == "invalid_request" and row.request is None
    assert str(row.id) == error["request_id"]


def test_json_that_is_not_an_object_is_400(generate):
    error = assert_error(generate(raw="[1, 2, 3]"), 400, "invalid_request")
    assert "non_field_errors" in error["details"]
    assert only_row().request == [1, 2, 3]


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_strings_no_database_can_store_are_400_and_still_audited(generate, valid_request, bad):
    raw = json.dumps({**valid_request, "payload": {"note": bad}})  # json.dumps escapes both as \uXXXX

    error = assert_error(generate(raw=raw), 400, "invalid_request")
    assert "payload.note" in error["message"]
    row = only_row()
    assert row.error_type == "invalid_request"
    assert "\x00" not in json.dumps(row.request, ensure_ascii=False)


def test_deeply_nested_payload_is_400(generate, valid_request):
    payload = current = {}
    for _ in range(40):
        current["x"] = {}
        current = current["x"]

    error = assert_error(generate({**valid_request, "payload": payload}), 400, "invalid_request")
    assert "nested" in error["message"]


def test_form_encoded_body_is_415(generate, valid_request):
    response = generate(raw="role=copywriter&task=sns", content_type="application/x-www-form-urlencoded")

    assert_error(response, 415, "unsupported_media_type")
    assert only_row().error_type == "unsupported_media_type"


def test_body_over_64_kib_is_413_and_audited(generate, valid_request):
    body = {**valid_request, "payload": {"text": "x" * (64 * 1024)}}

    error = assert_error(generate(body), 413, "payload_too_large")
    assert "65536" in error["message"]
    row = only_row()
    assert row.error_type == "payload_too_large" and row.http_status == 413
    assert row.request_bytes > 64 * 1024 and row.request is None


def test_body_just_under_the_limit_is_accepted(generate, valid_request):
    payload = {**valid_request["payload"], "text": ""}
    envelope = len(json.dumps({**valid_request, "payload": payload}).encode())
    body = {**valid_request, "payload": {**payload, "text": "x" * (64 * 1024 - envelope)}}
    assert len(json.dumps(body).encode()) == 64 * 1024

    assert generate(body).status_code == 200


# -- upstream faults (live mode) ---------------------------------------------------------------------------------


def test_a_named_model_that_is_not_pulled_is_404_with_the_pull_command(generate, valid_request, ollama):
    ollama.models.remove("llama3.2:1b")

    error = assert_error(generate({**valid_request, "model": "llama3.2:1b"}), 404, "model_not_found")

    assert "llama3.2:1b" in error["message"] and "ollama pull llama3.2:1b" in error["message"]
    row = only_row()
    assert (row.status, row.error_type, row.http_status, row.model) == ("failed", "model_not_found", 404,
                                                                        "llama3.2:1b")
    assert row.prompt is not None  # it was sent
    assert row.models_tried == [{"model": "llama3.2:1b", "outcome": "model_not_found"}]


def test_connection_refused_is_503(generate, valid_request, settings, refused_url):
    settings.GENERATOR_MODE = "live"
    settings.OLLAMA_BASE_URL = refused_url

    error = assert_error(generate(valid_request), 503, "upstream_unavailable")

    # The client learns that Ollama cannot be reached, not where it is; the row tells staff.
    assert error["message"] == "Cannot connect to Ollama. (3 attempts)"
    row = only_row()
    assert (row.status, row.error_type, row.provider) == ("failed", "upstream_unavailable", "ollama")
    assert f"Cannot connect to Ollama at {refused_url}: " in row.error_message


def test_unresolvable_host_is_503(generate, valid_request, settings):
    settings.GENERATOR_MODE = "live"
    settings.OLLAMA_BASE_URL = "http://ollama.invalid:11434"

    error = assert_error(generate(valid_request), 503, "upstream_unavailable")

    assert "ollama.invalid" not in error["message"]
    row = only_row()
    assert row.error_type == "upstream_unavailable" and "ollama.invalid" in row.error_message


def test_no_reply_within_the_timeout_is_504(generate, valid_request, ollama, settings):
    settings.OLLAMA_TIMEOUT = 0.3
    ollama.fault("slow", delay=3)

    error = assert_error(generate(valid_request), 504, "upstream_timeout")

    assert "0.3s" in error["message"]
    row = only_row()
    assert row.error_type == "upstream_timeout" and row.latency_ms >= 300


@pytest.mark.parametrize(
    "fault, params, expected",
    [
        ("status", {"status": 500}, "llama runner process has terminated"),
        ("status", {"status": 503, "message": "server busy, please try again."}, "server busy"),
        ("malformed", {}, "<html>oops"),
        ("cut_off", {}, "peer closed connection"),
        ("reset", {}, "broke off mid-reply: ReadError"),
        ("not_ollama", {}, "<html>"),
    ],
)
def test_upstream_faults_are_502(generate, valid_request, ollama, fault, params, expected):
    ollama.fault(fault, **params)

    error = assert_error(generate(valid_request), 502, "upstream_error")

    # What Ollama (or whatever answers) said is for staff: the row has it, the client does not.
    assert expected in only_row().error_message and expected not in error["message"]
    assert only_row().error_type == "upstream_error"


def test_a_200_without_a_chat_message_is_502(generate, valid_request, ollama):
    ollama.fault("malformed", body='{"model": "qwen2.5:7b", "done": true}')

    error = assert_error(generate(valid_request), 502, "upstream_error")

    assert "not Ollama's chat JSON" in error["message"]


def test_ollama_rejecting_options_is_400(generate, valid_request, ollama):
    ollama.fault("status", status=400, message="json: cannot unmarshal string into Go struct field")

    # The gateway's own checks pass (see test_input_limits.py); this is Ollama refusing what got through.
    error = assert_error(generate({**valid_request, "options": {"temperature": 0.5}}), 400, "invalid_request")

    assert "cannot unmarshal" not in error["message"] and "rejected the request" in error["message"]
    assert "cannot unmarshal" in only_row().error_message


@pytest.mark.parametrize("reply", ["Sure! Here is your caption.", "[1, 2]", '"just a string"', "```json\n{}"])
def test_json_mode_reply_that_is_not_an_object_is_invalid_output(generate, valid_request, ollama, reply):
    ollama.reply = reply

    assert_error(generate(valid_request), 502, "invalid_output")

    assert len(ollama.requests) == 2  # asked once more, then given up
    row = only_row()
    assert row.error_type == "invalid_output"
    assert row.raw_output == reply  # kept for whoever debugs the model
    assert row.output is None and row.completion_tokens is None


# -- the error shape elsewhere -----------------------------------------------------------------------------------


def test_wrong_method_is_405_in_the_error_shape(client):
    assert_error(client.get(GENERATE_URL), 405, "method_not_allowed")


def test_unknown_api_path_is_404_in_the_error_shape(client):
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_disallowed_host_is_400_in_the_error_shape(generate, valid_request):
    assert_error(generate(valid_request, HTTP_HOST="evil.example.com"), 400, "invalid_request")


def test_request_ids_are_uuids_and_unique(generate, valid_request):
    ids = {generate(valid_request)["X-Request-ID"] for _ in range(3)}

    assert len(ids) == 3
    assert all(uuid.UUID(i) for i in ids)


def test_the_answer_has_exactly_the_fields_the_schema_documents(generate, valid_request):
    from llm.serializers import GenerationSerializer
    from llm.views import generation_body

    response = generate(valid_request)

    row = Generation.objects.get()
    assert response.json() == generation_body(row) == GenerationSerializer(row).data
