"""Output schemas: checked when a template is saved, and the models' JSON replies validated against them."""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from llm.errors import InvalidOutput

# The draft templates are written in; Ollama's structured outputs take the same JSON Schema object.
Validator = Draft202012Validator


def schema_problem(schema) -> str | None:
    """Why a template's output schema is unusable, or None."""
    if not isinstance(schema, dict):
        return "The output schema must be a JSON object."
    try:
        Validator.check_schema(schema)
    except SchemaError as exc:
        return f"Not a valid JSON Schema (draft 2020-12): {exc.message} at {exc.json_path}."
    if schema.get("type") != "object":
        # JSON mode answers with an object; a schema for anything else could never be satisfied.
        return 'The output schema must describe an object: set "type": "object".'
    return None


def read_output(content: str, mode: str, schema: dict | None):
    """The reply as the client receives it: text as is, JSON mode an object valid against the schema.

    Raises InvalidOutput saying what is wrong with the reply.
    """
    if mode == "text":
        return content
    try:
        output = json.loads(content)
    except (ValueError, RecursionError):
        output = None
    if not isinstance(output, dict):
        raise InvalidOutput("The model's reply is not a JSON object (json mode); the raw reply is in the audit log.")
    if schema:
        error = best_match(Validator(schema).iter_errors(output))
        if error is not None:
            raise InvalidOutput(
                f"The model's reply does not match the template's output schema: {_short(error)} "
                f"at {error.json_path}. The raw reply is in the audit log."
            )
    return output


def _short(error, limit: int = 300) -> str:
    """The validation message with a long offending value cut short: the full reply is in the audit log."""
    text, shown = error.message, repr(error.instance)
    if len(shown) > 60:
        text = text.replace(shown, shown[:50] + "…")
    return text if len(text) <= limit else text[:limit] + "…"
