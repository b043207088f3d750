"""The bounded validator answers as jsonschema does, for the keywords it does differently (patterns on RE2, hashed
uniqueItems, enum and const, its own unevaluatedProperties), and stops at its budget before doing the work."""

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry

from llm import bounded_validator
from llm.bounded_validator import TooCostly, reply_error
from llm.output_schema import schema_problem, schema_resolver

SCHEMAS = [
    {"uniqueItems": True},
    {"items": {"enum": [1, "1", True, None, [1, 2], {"a": 1, "b": [True]}, 2.5]}},
    {"items": {"const": {"a": [1, {"b": None}], "c": False}}},
    {"items": {"const": 1}},
    {"items": {"const": [1.0, "x"]}},
]
VALUES = [
    [1, 1.0], [1, True], [0, False], [True, True], [None, None], ["1", 1], [[1, 2], [1, 2]], [[1, 2], [2, 1]],
    [{"a": 1, "b": 2}, {"b": 2, "a": 1}], [{"a": 1}, {"a": True}], [{"a": [1, {"b": None}], "c": False}],
    [{"c": False, "a": [1.0, {"b": None}]}], [{"a": [True, {"b": None}], "c": False}], [2.5], [[1, "x"]],
    [{"a": 1, "b": [True]}], [{"a": 1, "b": [1]}], [[]], [{}], [1, 2, 3], ["a", "b", "a"],
]


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_uniqueItems_enum_and_const_agree_with_jsonschema(index):
    """Hashed canonical forms (1 == 1.0, true != 1, objects in any key order) instead of comparing every pair."""
    schema = {"type": "object", "properties": {"v": {"type": "array", **SCHEMAS[index]}}}
    assert schema_problem(schema) is None
    reference = Draft202012Validator(schema, registry=Registry())

    for value in VALUES:
        ours = reply_error(schema, {"v": value}, schema_resolver(schema))
        assert (ours is None) == reference.is_valid({"v": value}), (SCHEMAS[index], value)


PATTERN_SCHEMAS = [
    {"properties": {"a": {"type": "string", "pattern": "^[a-z]+\\d{2}$"}}},
    {"patternProperties": {"^x-": {"type": "integer"}, "[0-9]$": {"type": "string"}}},
    {"properties": {"id": {}}, "patternProperties": {"^x-": {}}, "additionalProperties": False},
    {"patternProperties": {"^x-": {}}, "additionalProperties": {"type": "boolean"}},
    {"allOf": [{"properties": {"a": {}}}, {"patternProperties": {"^b": {}}}], "unevaluatedProperties": False},
    {"properties": {"a": {}}, "if": {"required": ["a"]}, "then": {"properties": {"b": {}}},
     "else": {"patternProperties": {"^c": {}}}, "unevaluatedProperties": {"type": "integer"}},
    {"$defs": {"base": {"properties": {"a": {}}, "patternProperties": {"^z": {}}}}, "$ref": "#/$defs/base",
     "anyOf": [{"properties": {"b": {}}}, {"properties": {"c": {}}}], "unevaluatedProperties": False},
    {"dependentSchemas": {"a": {"properties": {"b": {}}}}, "properties": {"a": {}}, "unevaluatedProperties": False},
]
OBJECTS = [{}, {"a": "abc12"}, {"a": "ABC12"}, {"a": "abc1"}, {"x-1": 1}, {"x-1": "1"}, {"k9": "s"}, {"k9": 9},
           {"id": 1, "x-y": 2}, {"id": 1, "other": 2}, {"other": True}, {"other": 1}, {"a": 1, "b2": 2},
           {"a": 1, "c": 3}, {"b": 1, "c": 1}, {"c": 1}, {"c": "x"}, {"z1": 1, "b": 1}, {"a": 1, "b": 1},
           {"b": 1}, {"d": 1}]


@pytest.mark.parametrize("index", range(len(PATTERN_SCHEMAS)))
def test_patterns_and_unevaluatedProperties_agree_with_jsonschema(index):
    schema = {"type": "object", **PATTERN_SCHEMAS[index]}
    assert schema_problem(schema) is None
    reference = Draft202012Validator(schema, registry=Registry())

    for value in OBJECTS:
        ours = reply_error(schema, value, schema_resolver(schema))
        theirs = next(reference.iter_errors(value), None)
        assert (ours is None) == (theirs is None), (schema, value, ours, theirs)
        if ours is not None and ours.validator in ("additionalProperties", "unevaluatedProperties"):
            assert ours.message == theirs.message


def test_the_budget_is_charged_before_the_work(monkeypatch):
    """A reply the budget cannot pay for is refused before the keyword runs, whatever it would have cost."""
    ran = []
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}
    monkeypatch.setitem(bounded_validator._Validator.VALIDATORS, "type", (
        lambda check: lambda *args: ran.append(1) or check(*args))(bounded_validator._Validator.VALIDATORS["type"]))

    with pytest.raises(TooCostly, match="more than the 5,000 steps"):
        reply_error(schema, {"a": list(range(10_000))}, schema_resolver(schema))

    # The object's and the array's types; `items` asked for 30,000 units before descending into any of the items.
    assert len(ran) == 2


def test_a_long_text_against_a_large_pattern_is_refused_before_RE2_runs(monkeypatch):
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^[\\pL ]+$"}}}
    assert schema_problem(schema) is None
    searched = []
    compiled, size = bounded_validator._compiled("^[\\pL ]+$")
    monkeypatch.setitem(bounded_validator._patterns, "^[\\pL ]+$", (
        type("Spy", (), {"search": lambda self, text: searched.append(text) or compiled.search(text)})(), size))

    assert reply_error(schema, {"a": "Grüner Tee"}, schema_resolver(schema)) is None
    with pytest.raises(TooCostly):
        reply_error(schema, {"a": "Tee " * 5000}, schema_resolver(schema))

    assert searched == ["Grüner Tee"]
