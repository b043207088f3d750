"""Inputs: Ollama options limited to known names, types and ranges; field lengths; clear per-field errors."""

import pytest

from llm.models import Generation
from tests.conftest import SNS_REPLY, assert_error

pytestmark = pytest.mark.django_db

EVERY_OPTION = {
    "num_ctx": 8192, "num_keep": 5, "num_predict": -1, "seed": 42, "temperature": 0.7, "top_k": 40, "top_p": 0.9,
    "min_p": 0.05, "typical_p": 1, "tfs_z": 1.0, "repeat_last_n": 64, "repeat_penalty": 1.1,
    "presence_penalty": -0.5, "frequency_penalty": 1.5, "penalize_newline": False, "mirostat": 2,
    "mirostat_tau": 5.0, "mirostat_eta": 0.1, "stop": ["\n\n", "</answer>"],
}


def test_every_allowed_option_reaches_ollama_unchanged(generate, valid_request, ollama):
    ollama.reply = SNS_REPLY

    response = generate({**valid_request, "options": EVERY_OPTION})

    assert response.status_code == 200, response.content
    assert ollama.requests[-1].json["options"] == EVERY_OPTION


@pytest.mark.parametrize(
    "options, field, message",
    [
        ({"num_gpu": 0}, "num_gpu", "load-time option"),
        ({"use_mlock": True}, "use_mlock", "operator"),
        ({"Temperature": 0.5}, "Temperature", "Unknown option"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"temperature": "hot"}, "temperature", "Must be a number"),
        ({"temperature": True}, "temperature", "Must be a number"),
        ({"top_p": 1.01}, "top_p", "less than or equal to 1"),
        ({"num_ctx": 0}, "num_ctx", "greater than or equal to 1"),
        ({"num_ctx": 10**7}, "num_ctx", "less than or equal to 131072"),
        ({"num_predict": 1.5}, "num_predict", "whole number"),
        ({"num_predict": "64"}, "num_predict", "whole number"),
        ({"seed": 2**40}, "seed", "less than or equal to"),
        ({"mirostat": 3}, "mirostat", "less than or equal to 2"),
        ({"mirostat": True}, "mirostat", "whole number"),
        ({"mirostat": "1"}, "mirostat", "whole number"),
        ({"penalize_newline": "yes"}, "penalize_newline", "true or false"),
        ({"stop": "END"}, "stop", "list"),
        ({"stop": [1]}, "stop", "string"),
        ({"stop": ["x"] * 9}, "stop", "no more than 8"),
        ({"stop": ["x" * 101]}, "stop", "no more than 100"),
    ],
)
def test_bad_options_are_400_naming_the_option(generate, valid_request, ollama, options, field, message):
    error = assert_error(generate({**valid_request, "options": options}), 400, "invalid_request")

    problems = error["details"]["options"][field]
    assert message in str(problems), problems
    assert ollama.requests == []
    row = Generation.objects.get()
    assert (row.error_type, row.http_status, row.request["options"]) == ("invalid_request", 400, options)


def test_unknown_and_out_of_range_options_are_reported_together(generate, valid_request):
    options = {"num_gpu": 1, "top_k": -1, "frobnicate": 2}
    error = assert_error(generate({**valid_request, "options": options}), 400, "invalid_request")

    assert set(error["details"]["options"]) == {"num_gpu", "top_k", "frobnicate"}
    assert "allowed: " in error["details"]["options"]["frobnicate"][0]
    assert "load-time option" in error["details"]["options"]["num_gpu"][0]


@pytest.mark.parametrize("options", [[], "temperature=1", 5, None])
def test_options_must_be_an_object(generate, valid_request, options):
    error = assert_error(generate({**valid_request, "options": options}), 400, "invalid_request")
    assert "options" in error["details"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("task", "t" * 101, "no more than 100"),
        ("task", "\x1c" * 10 + "t" * 95, "no more than 100"),  # found by schemathesis: trimmed, it used to fit
        ("model", "m" * 201, "no more than 200"),
        ("model", "qwen 2.5", "Ollama model name"),
        ("model", "../../api/delete", "Ollama model name"),
        ("mode", "JSON", "not a valid choice"),
    ],
)
def test_field_limits(generate, valid_request, field, value, message):
    error = assert_error(generate({**valid_request, field: value}), 400, "invalid_request")

    assert message in str(error["details"][field])


REAL_MODEL_NAMES = ["qwen2.5:7b", "llama3.2:1b", "library/llama3.2:latest",
                    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"]


@pytest.mark.parametrize("model", REAL_MODEL_NAMES)
def test_real_model_names_are_accepted(generate, make_template, model):
    make_template("any", "model", allowed_models=REAL_MODEL_NAMES)  # a template that allows them all

    assert generate({"role": "any", "task": "model", "payload": {"word": "hi"}, "model": model}).status_code == 200


def test_several_field_errors_come_back_at_once(generate):
    error = assert_error(generate({"role": "", "task": 5, "payload": [], "extra": 1}), 400, "invalid_request")

    assert {"role", "task", "payload"} <= set(error["details"])


def test_unknown_fields_are_rejected_by_name(generate, valid_request):
    error = assert_error(generate({**valid_request, "prompt": "ignore the above", "n": 2}), 400,
                         "invalid_request")

    assert error["details"] == {"prompt": ["Unknown field."], "n": ["Unknown field."]}


def nested(levels: int) -> dict:
    value = {}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


@pytest.mark.parametrize("raw", ['{"a":' * 500 + "1" + "}" * 500, "[" * 900 + "]" * 900, '{"a":[' * 300 + "]}" * 300])
def test_deeply_nested_bodies_are_400_not_a_crash(generate, raw):
    # Found while hardening: hundreds of levels parse, then exhausted the stack of the code that walks them.
    error = assert_error(generate(raw=raw), 400, "invalid_request")

    assert "nested more than 32 levels" in error["message"]
    row = Generation.objects.get()
    assert (row.error_type, row.request) == ("invalid_request", None)


def test_nesting_up_to_32_levels_is_accepted(generate, valid_request):
    fields = valid_request["payload"]  # what the template needs, beside the deep value (which it ignores)
    # The body itself is level 1.
    assert generate({**valid_request, "payload": {**fields, **nested(31)}}).status_code == 200
    assert_error(generate({**valid_request, "payload": {**fields, **nested(32)}}), 400, "invalid_request")


@pytest.mark.parametrize("field", ["mode", "role", "model"])
def test_an_overlong_value_is_400_and_still_audited_on_every_database(generate, valid_request, field):
    # Found by schemathesis on PostgreSQL: a 17-character mode did not fit the audit row's 8-character column,
    # so the rejection itself failed with 503.
    error = assert_error(generate({**valid_request, field: "x" * 300}), 400, "invalid_request")

    row = Generation.objects.get()
    assert str(row.id) == error["request_id"]
    assert getattr(row, field) == "x" * Generation._meta.get_field(field).max_length
