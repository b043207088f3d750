"""JSON that matches a schema: sent as Ollama's format, validated, asked for once more, then invalid_output."""

import json

import pytest
from jsonschema import Draft202012Validator

from llm.models import Generation, PromptTemplateVersion
from llm.output_schema import schema_problem
from llm.providers.mock import schema_instance
from tests.conftest import SNS_REPLY, assert_error

pytestmark = pytest.mark.django_db


def only_row():
    rows = list(Generation.objects.all())
    assert len(rows) == 1, rows
    return rows[0]


def chat_reply(content: str) -> str:
    """A complete Ollama /api/chat reply whose message is `content`."""
    return json.dumps({"model": "qwen2.5:7b", "created_at": "2025-01-20T10:00:00Z",
                       "message": {"role": "assistant", "content": content}, "done": True})


def sns_schema():
    return PromptTemplateVersion.objects.get(template__role="copywriter", template__task="sns").output_schema


def test_the_schema_is_sent_as_format_and_a_matching_reply_is_returned(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY

    response = generate(valid_request)

    assert response.status_code == 200
    assert response.json()["output"]["hashtags"] == ["#greentea", "#calm"]
    sent = ollama.requests[-1].json
    assert sent["format"] == sns_schema()
    assert "JSON Schema" in sent["messages"][0]["content"] and '"call_to_action"' in sent["messages"][0]["content"]


def test_a_reply_that_misses_the_schema_is_asked_for_once_more(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY
    ollama.fault("malformed", times=1, body=chat_reply('{"caption": "Tea time"}'))

    response = generate(valid_request)

    assert response.status_code == 200, response.content
    assert response.json()["output"] == json.loads(SNS_REPLY)
    assert len(ollama.requests) == 2
    assert ollama.requests[0].json == ollama.requests[1].json  # the same request, asked again
    assert only_row().models_tried == [{"model": "qwen2.5:7b", "outcome": "invalid_output"},
                                       {"model": "qwen2.5:7b", "outcome": "succeeded"}]


@pytest.mark.parametrize(
    "reply, complaint",
    [
        ('{"caption": "Tea time", "hashtags": ["#tea"]}', "'call_to_action' is a required property at $."),
        ('{"caption": "Tea", "hashtags": "#tea", "call_to_action": "Buy"}',
         "'#tea' is not of type 'array' at $.hashtags."),
        ('{"caption": "Tea", "hashtags": [], "call_to_action": "Buy"}', "should be non-empty at $.hashtags."),
        ('{"caption": "' + "x" * 300 + '", "hashtags": ["#t"], "call_to_action": "Buy"}', "is too long at $.caption."),
        ('{"caption": "Tea", "hashtags": ["#t"], "call_to_action": "Buy", "extra": 1}',
         "Additional properties are not allowed ('extra' was unexpected) at $."),
    ],
)
def test_a_reply_that_misses_the_schema_twice_is_invalid_output_saying_why(generate, valid_request, ollama,
                                                                             reply, complaint):
    ollama.reply = reply

    error = assert_error(generate(valid_request), 502, "invalid_output")

    assert "does not match the output schema" in error["message"]
    assert complaint in error["message"]
    assert len(ollama.requests) == 2
    row = only_row()
    assert row.error_type == "invalid_output" and row.http_status == 502
    assert row.raw_output == reply and row.output is None
    assert [t["outcome"] for t in row.models_tried] == ["invalid_output", "invalid_output"]


def test_invalid_output_does_not_fall_back_to_another_model(generate, valid_request, ollama):
    ollama.models[:] = ["qwen2.5:7b", "llama3.2:3b"]  # the sns fallback is there too
    ollama.reply = '{"caption": "no hashtags"}'

    assert_error(generate(valid_request), 502, "invalid_output")

    assert {r.json["model"] for r in ollama.requests} == {"qwen2.5:7b"}


def test_json_mode_without_a_schema_sends_json_and_takes_any_object(generate, make_template, ollama):
    make_template("plain", "free_json")

    response = generate({"role": "plain", "task": "free_json", "payload": {"word": "hi"}})

    assert response.status_code == 200
    assert ollama.requests[-1].json["format"] == "json"
    assert response.json()["output"] == {"echo": "Say hi.", "model": "qwen2.5:7b"}  # the test server's echo


def test_text_mode_on_a_schema_template_sends_no_format_and_validates_nothing(generate, valid_request, ollama):
    ollama.reply = "Calm mornings start with green tea."

    response = generate({**valid_request, "mode": "text"})

    assert response.json()["output"] == "Calm mornings start with green tea."
    assert "format" not in ollama.requests[-1].json


# -- the mock ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role, task", [("copywriter", "sns"), ("copywriter", "product_description"),
                                        ("copywriter", "ad_headline"), ("marketer", "campaign_brief")])
def test_the_mock_answers_every_shipped_template_with_schema_valid_json(generate, shipped_templates, role, task):
    version = PromptTemplateVersion.objects.get(template__role=role, template__task=task)

    response = generate({"role": role, "task": task, "payload": version.template.sample_payload})

    assert response.status_code == 200, response.content
    Draft202012Validator(version.output_schema).validate(response.json()["output"])


def test_schema_instance_covers_the_keywords_templates_use():
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": True},
            "short": {"type": "string", "minLength": 5, "maxLength": 8},
            "tone": {"enum": ["calm", "bold"]},
            "version": {"const": 2},
            "score": {"type": "integer", "minimum": 3, "maximum": 9},
            "ratio": {"type": "number", "exclusiveMinimum": 0},
            "ok": {"type": "boolean"},
            "maybe": {"type": ["null", "string"]},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "none": {"type": "array", "maxItems": 0},
        },
        "required": ["tags", "short", "tone", "version", "score", "ratio", "ok", "maybe", "either", "none"],
        "additionalProperties": False,
    }

    value = schema_instance(schema, "mock 1234")

    Draft202012Validator(schema).validate(value)
    assert value == schema_instance(schema, "mock 1234")  # deterministic


def test_the_mock_is_deterministic_per_request(generate, valid_request):
    first = generate(valid_request).json()["output"]
    again = generate(valid_request).json()["output"]
    other = generate({**valid_request, "payload": {"product": "Coffee", "tone": "bold"}}).json()["output"]

    assert first == again != other


# -- checking schemas on save ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema, problem",
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}}, None),
        ({"type": "object", "required": "caption"}, "Not a valid JSON Schema (draft 2020-12)"),
        ({"type": "object", "properties": {"a": {"minItems": -1}}}, "at $.properties.a.minItems"),
        ({"type": "string"}, "must describe an object"),
        ({"properties": {}}, "must describe an object"),
        ("object", "must be a JSON object"),
    ],
)
def test_schema_problem(schema, problem):
    found = schema_problem(schema)

    assert found is None if problem is None else problem in found
