"""The mock provider's content: deterministic, valid against the template's schema, and echoing the payload."""

import json
import tracemalloc

import pytest
from jsonschema import Draft202012Validator

from llm.models import PromptTemplateVersion
from llm.providers.base import GenerationRequest
from llm.providers.mock import MOCK_MAX_TEXT, mock_content, payload_text

SNS_PAYLOAD = {"product": "Green tea", "tone": "calm"}


def request(**fields):
    base = {"role": "copywriter", "task": "sns", "payload": SNS_PAYLOAD, "mode": "json", "model": "qwen2.5:7b",
            "messages": [{"role": "user", "content": "Write."}], "output_schema": None}
    return GenerationRequest(**{**base, **fields})


def strings(value):
    """Every string in a JSON value."""
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


def fixed_values(schema):
    """The enum and const values anywhere in a schema."""
    if isinstance(schema, dict):
        found = list(schema.get("enum") or []) + ([schema["const"]] if "const" in schema else [])
        return found + [v for item in schema.values() for v in fixed_values(item)]
    if isinstance(schema, list):
        return [v for item in schema for v in fixed_values(item)]
    return []


def test_json_output_carries_the_payload_values(generate, valid_request):
    # What a front-end developer wiring up mock mode sees: the payload came through.
    output = generate(valid_request).json()["output"]

    assert output["caption"] == "[mock] caption: Green tea, calm"
    assert output["hashtags"][0] == "[mock] hashtags 1: Green tea, calm"
    assert output["call_to_action"] == "[mock] call_to_action: Green tea, calm"


@pytest.mark.parametrize("role, task", [("copywriter", "sns"), ("copywriter", "product_description"),
                                        ("copywriter", "ad_headline"), ("marketer", "campaign_brief")])
def test_every_shipped_template_gets_valid_output_that_echoes_its_sample_payload(shipped_templates, role, task):
    version = PromptTemplateVersion.objects.get(template__role=role, template__task=task)
    payload = version.template.sample_payload

    output = json.loads(mock_content(request(role=role, task=task, payload=payload,
                                             output_schema=version.output_schema)))

    Draft202012Validator(version.output_schema).validate(output)
    # Every free-text string has room for the start of the payload's values (the shortest maxLength is 60);
    # enum and const strings are the schema's own.
    free = [text for text in strings(output) if text not in fixed_values(version.output_schema)]
    assert free and all(payload_text(payload)[:20] in text for text in free), free


def test_strings_are_cut_to_their_max_length_and_items_stay_distinct():
    schema = {"type": "object", "properties": {
        "short": {"type": "string", "maxLength": 12},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 3, "uniqueItems": True}},
        "required": ["short", "tags"]}

    output = json.loads(mock_content(request(payload={"product": "A very long product name"},
                                             output_schema=schema)))

    Draft202012Validator(schema).validate(output)
    assert output["short"] == "[mock] short"
    assert output["tags"] == ["[mock] tags 1: A", "[mock] tags 2: A", "[mock] tags 3: A"]


def test_non_string_values_and_lists_are_echoed_as_text():
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}}
    payload = {"product": "Tea", "features": ["organic", "20 bags"], "price": 4.5, "gift": True}

    output = json.loads(mock_content(request(payload=payload, output_schema=schema)))

    assert output == {"summary": "[mock] summary: Tea, organic, 20 bags, 4.5, true"}


def test_the_same_request_gets_the_same_content_and_another_payload_other_content():
    schema = {"type": "object", "properties": {"caption": {"type": "string"}}}

    assert mock_content(request(output_schema=schema)) == mock_content(request(output_schema=schema))
    assert mock_content(request(output_schema=schema)) != mock_content(
        request(output_schema=schema, payload={"product": "Coffee", "tone": "calm"}))


@pytest.mark.parametrize("mode, schema", [("text", None), ("json", None)])
def test_text_and_schemaless_json_carry_the_payload_too(mode, schema):
    content = mock_content(request(mode=mode, output_schema=schema))

    assert "Green tea" in content and "calm" in content
    if mode == "json":
        assert json.loads(content)["payload"] == SNS_PAYLOAD


# -- bounds: whatever the schema asks (a template saved before the checks, or a direct call) ----------------------


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"tags": {"type": "array", "minItems": 1_000_000}}},
    {"type": "object", "properties": {"text": {"type": "string", "minLength": 50_000_000}}},
    {"type": "object", "properties": {"grid": {"type": "array", "minItems": 1_000, "items": {
        "type": "array", "minItems": 100, "items": {"type": "string", "minLength": 100}}}}},
], ids=["a million items", "50 million characters", "1,000 x 100 x 100 characters"])
def test_the_mock_builds_no_more_than_its_bounds(schema):
    tracemalloc.start()
    try:
        content = mock_content(request(output_schema=schema))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 8 * MOCK_MAX_TEXT, f"{peak / 1024:.0f} KiB"
    assert len(content) < MOCK_MAX_TEXT + 100 * 1024


def test_the_mock_follows_recursive_refs_and_ends():
    endless = {"type": "object", "required": ["self"], "properties": {"self": {"$ref": "#"}}}
    threes = {"type": "object", "$defs": {"node": {"type": "object", "required": ["kids"], "properties": {
        "kids": {"type": "array", "minItems": 3, "items": {"$ref": "#/$defs/node"}}}}},
        "properties": {"root": {"$ref": "#/$defs/node"}}}

    nested = json.loads(mock_content(request(output_schema=endless)))
    tree = json.loads(mock_content(request(output_schema=threes)))

    # No finite value satisfies either: the mock goes as deep as its bounds allow, then stops.
    depth = 0
    while isinstance(nested, dict) and "self" in nested:
        nested, depth = nested["self"], depth + 1
    assert 10 < depth <= 40
    assert len(tree["root"]["kids"]) == 3 and len(tree["root"]["kids"][0]["kids"]) == 3
    assert len(json.dumps(tree)) < 200 * 1024


def test_the_mock_follows_refs_inside_the_schema_as_pydantic_writes_them():
    schema = {"$defs": {"Item": {"type": "object", "title": "Item", "required": ["name", "qty"], "properties": {
        "name": {"type": "string", "maxLength": 20}, "qty": {"type": "integer", "minimum": 1}}},
        "Comment": {"type": "object", "required": ["text"], "properties": {
            "text": {"type": "string"}, "replies": {"type": "array", "items": {"$ref": "#/$defs/Comment"}}}}},
        "type": "object", "title": "Order", "required": ["items", "note"], "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 2},
            "note": {"$ref": "#/$defs/Comment"}}}

    output = json.loads(mock_content(request(output_schema=schema)))

    Draft202012Validator(schema).validate(output)
    assert output["items"][0] == {"name": "[mock] items 1 name:", "qty": 1}
    assert output["note"]["replies"] == [{"text": "[mock] note replies 1 text: Green tea, calm"}]
