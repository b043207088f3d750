"""The request rules every front door shares, beside the use case: Ollama's options with their ranges, model names,
output formats, and the neutral request each front door parses its wire format into.

llm.models and every dialect import this module; it imports no API module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.validators import RegexValidator
from rest_framework import serializers

from llm.errors import InvalidRequest
from llm.output_schema import schema_problem

# Go's int in Ollama's options is 64 bits wide, but a seed or a count beyond 32 bits is a mistake, not a wish.
INT32 = 2**31 - 1
MAX_CONTEXT_TOKENS = 131072


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of quietly turning them into text."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        # The limit applies to the text as sent, as the schema says; trimming must not make a long value fit.
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An IntegerField that refuses strings, floats and booleans: Ollama's Go types would refuse them later."""

    default_error_messages = {"not_an_integer": "Must be a whole number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("not_an_integer")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A FloatField that takes JSON numbers only (no strings, no booleans)."""

    default_error_messages = {"not_a_number": "Must be a number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("not_a_number")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"not_a_boolean": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("not_a_boolean")
        return data


class OllamaOptionsSerializer(serializers.Serializer):
    """The Ollama options a consumer may set (docs/api.md, "Valid Parameters and Values"), with sane ranges.

    Load-time options (num_gpu, main_gpu, num_thread, num_batch, numa, low_vram, use_mmap, use_mlock, vocab_only)
    are left out on purpose: they change how a model sits in memory, and every distinct value makes Ollama
    reload the model for all consumers. They are the operator's to set, in a Modelfile.
    """

    num_ctx = StrictIntegerField(min_value=1, max_value=MAX_CONTEXT_TOKENS, required=False,
                                 help_text="Context window in tokens.")
    num_keep = StrictIntegerField(min_value=-1, max_value=MAX_CONTEXT_TOKENS, required=False,
                                  help_text="Prompt tokens kept when the context is shifted.")
    num_predict = StrictIntegerField(min_value=-2, max_value=MAX_CONTEXT_TOKENS, required=False,
                                     help_text="Most tokens to generate; -1: until the model stops, -2: fill context.")
    seed = StrictIntegerField(min_value=-INT32 - 1, max_value=INT32, required=False,
                              help_text="Random seed; the same seed and prompt give the same reply.")
    temperature = StrictFloatField(min_value=0, max_value=2, required=False)
    top_k = StrictIntegerField(min_value=0, max_value=1000, required=False)
    top_p = StrictFloatField(min_value=0, max_value=1, required=False)
    min_p = StrictFloatField(min_value=0, max_value=1, required=False)
    typical_p = StrictFloatField(min_value=0, max_value=1, required=False)
    tfs_z = StrictFloatField(min_value=0, max_value=10, required=False)
    repeat_last_n = StrictIntegerField(min_value=-1, max_value=MAX_CONTEXT_TOKENS, required=False,
                                       help_text="How far back repetition is penalised; -1: the whole context.")
    repeat_penalty = StrictFloatField(min_value=0, max_value=2, required=False)
    presence_penalty = StrictFloatField(min_value=-2, max_value=2, required=False)
    frequency_penalty = StrictFloatField(min_value=-2, max_value=2, required=False)
    penalize_newline = StrictBooleanField(required=False)
    mirostat = StrictIntegerField(min_value=0, max_value=2, required=False, help_text="0: off, 1: Mirostat, 2: 2.0.")
    mirostat_tau = StrictFloatField(min_value=0, max_value=10, required=False)
    mirostat_eta = StrictFloatField(min_value=0, max_value=1, required=False)
    stop = serializers.ListField(child=StrictCharField(max_length=100, trim_whitespace=False), max_length=8,
                                 required=False, help_text="Up to 8 sequences that end the reply.")

    def to_internal_value(self, data):
        # Nested, this serializer has no initial_data to compare with: unknown names are caught here instead.
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        errors = {}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not unknown:
                raise
            errors.update(exc.detail)
        if unknown:
            allowed = ", ".join(sorted(self.fields))
            errors.update({name: [f"Unknown option; allowed: {allowed}."] for name in unknown})
            raise serializers.ValidationError(errors)
        return value


MODEL_NAME = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*\Z", "Must be an Ollama model name such as qwen2.5:7b.")
MODEL_NAME_MAX_LENGTH = 200


def invalid(field: str, message: str) -> InvalidRequest:
    """A front door's refusal of one of its fields: the message, and the same under that field in `details`."""
    return InvalidRequest(message, details={field: [message]})


def model_name_problem(name) -> str | None:
    """Why a requested model name cannot be an Ollama model, or None."""
    if not isinstance(name, str) or not name:
        return "Must be a model name (a non-empty string)."
    if len(name) > MODEL_NAME_MAX_LENGTH:
        return f"Must be at most {MODEL_NAME_MAX_LENGTH} characters."
    if not MODEL_NAME.regex.match(name):
        return MODEL_NAME.message
    return None


def options_problems(options) -> dict | None:
    """Per-option messages if `options` break the shared rules (unknown names, types, ranges), else None."""
    serializer = OllamaOptionsSerializer(data=options)
    if serializer.is_valid():
        return None
    return {name: [str(m) for m in messages] for name, messages in serializer.errors.items()}


def output_schema_problem(schema) -> str | None:
    """Why a client's JSON Schema cannot constrain a json-mode reply (the same rule as a template's), or None."""
    return schema_problem(schema)


TEXT, JSON = "text", "json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class NeutralRequest:
    """One generation request as the use case takes it, whichever front door it came through.

    Either a prompt template's role, task and payload (the native API), or chat messages as sent (the compatible
    dialects: `{"role": "system" | "user" | "assistant", "content": str}` each). Options are Ollama's, already
    checked against the shared rules; `mode` None means the template's; `output_schema` constrains a json-mode
    reply of a raw chat (a template brings its own).
    """

    stream: bool = False
    role: str = ""
    task: str = ""
    payload: dict | None = None
    messages: list[dict] | None = None
    model: str | None = None
    options: dict = field(default_factory=dict)
    mode: str | None = None
    output_schema: dict | None = None
    user: str = ""  # the end user a client names (OpenAI's `user`), kept on the audit row

    @property
    def templated(self) -> bool:
        return self.messages is None
