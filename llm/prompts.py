"""Turn a prompt template and a request's payload into the chat messages sent to a model.

The one place prompts are built. Placeholders are `{name}` in the system prompt and the user template, filled
from the payload field of that name;
`{{` and `}}` are literal braces. Only simple names are allowed: `str.format` on user-supplied templates would
also evaluate `{payload.__class__}` or `{items[0]}`, so templates are parsed here and never formatted by Python.
"""

from __future__ import annotations

import json
import re
from string import Formatter

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

JSON_INSTRUCTION = "Answer with a single JSON object and nothing else: no prose, no code fences."
SCHEMA_INSTRUCTION = "Answer with a single JSON object that matches this JSON Schema, and nothing else:"
TEXT_INSTRUCTION = "Answer in plain text."


class TemplateSyntaxError(ValueError):
    """A user template that cannot be parsed, or that asks for more than a simple field name."""


class MissingPlaceholders(KeyError):
    """Payload fields a template needs and the payload lacks."""

    def __init__(self, names: list[str]):
        super().__init__(names)
        self.names = names


def placeholders(template: str) -> list[str]:
    """The field names a template uses, in order of first use; TemplateSyntaxError if it is not valid."""
    names: list[str] = []
    for _, name, spec, conversion in _parse(template):
        if name is None:
            continue
        if not NAME.match(name):
            shown = "{" + name + "}"
            raise TemplateSyntaxError(
                f"{shown} is not a placeholder: use a simple field name such as {{product}} "
                "(letters, digits and _; no dots, brackets or spaces). Write {{ and }} for literal braces."
            )
        if spec or conversion:
            raise TemplateSyntaxError(f"{{{name}}} has a format spec or conversion; write just {{{name}}}.")
        if name not in names:
            names.append(name)
    return names


def fill(template: str, payload: dict) -> str:
    """The template with every placeholder replaced by its payload value (non-strings as JSON)."""
    missing = [name for name in placeholders(template) if name not in payload]
    if missing:
        raise MissingPlaceholders(missing)
    parts = []
    for literal, name, _, _ in _parse(template):
        parts.append(literal)
        if name is not None:
            value = payload[name]
            parts.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return "".join(parts)


def system_message(system_prompt: str, mode: str, output_schema: dict | None) -> str:
    """The (filled) system prompt, followed by what the answer must look like in this mode."""
    if mode == "text":
        instruction = TEXT_INSTRUCTION
    elif output_schema:
        # Ollama constrains decoding to the schema too; stating it in the prompt grounds the content.
        instruction = f"{SCHEMA_INSTRUCTION}\n{json.dumps(output_schema, ensure_ascii=False, indent=2)}"
    else:
        instruction = JSON_INSTRUCTION
    return f"{system_prompt.strip()}\n\n{instruction}" if system_prompt.strip() else instruction


def build_messages(*, system_prompt: str, user_template: str, payload: dict, mode: str,
                   output_schema: dict | None) -> list[dict]:
    """The system and user messages for a payload; MissingPlaceholders names the fields it lacks."""
    missing = [name for name in payload_fields(system_prompt, user_template) if name not in payload]
    if missing:
        raise MissingPlaceholders(missing)
    return [
        {"role": "system", "content": system_message(fill(system_prompt, payload), mode, output_schema)},
        {"role": "user", "content": fill(user_template, payload)},
    ]


def payload_fields(system_prompt: str, user_template: str) -> list[str]:
    """The payload fields both prompts need, system prompt first."""
    return list(dict.fromkeys([*placeholders(system_prompt), *placeholders(user_template)]))


def _parse(template: str):
    try:
        return list(Formatter().parse(template))
    except ValueError as exc:
        raise TemplateSyntaxError(
            f"The template cannot be parsed ({exc}). Placeholders look like {{product}}; "
            "write {{ and }} for literal braces."
        ) from None
