"""The request rules every front door shares, beside the use case: Ollama's options with their ranges, model names,
output formats, thinking levels, keep-alive, and the neutral request each front door parses its wire format into.

llm.models and every dialect import this module; it imports no API module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from django.conf import settings
from django.core.validators import RegexValidator
from rest_framework import serializers

from llm.errors import InvalidRequest
from llm.output_schema import schema_problem
from llm.providers.base import Completion, Message, Tool

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

    Load-time options (LOAD_TIME_OPTIONS) are left out on purpose: they change how a model sits in memory, and
    every distinct value makes Ollama reload the model for all consumers. They are the operator's to set, in a
    Modelfile. num_ctx reloads the model too, so it is bounded by the operator's NUM_CTX_MAX.
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
        errors = {name: [LOAD_TIME_MESSAGE] for name in unknown if name in LOAD_TIME_OPTIONS}
        unknown = [name for name in unknown if name not in LOAD_TIME_OPTIONS]
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not unknown and not errors:
                raise
            errors.update(exc.detail)
        if unknown:
            allowed = ", ".join(sorted(self.fields))
            errors.update({name: [f"Unknown option; allowed: {allowed}."] for name in unknown})
        if errors:
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


# Options that decide how a model is loaded (api/types.go, Runner): a new value reloads it for every consumer.
LOAD_TIME_OPTIONS = frozenset({"num_gpu", "main_gpu", "num_thread", "num_batch", "numa", "low_vram", "use_mmap",
                               "use_mlock", "vocab_only", "f16_kv", "logits_all", "draft_num_predict"})
LOAD_TIME_MESSAGE = ("A load-time option: it decides how the model sits in the server's memory, and a new value "
                     "reloads the model for every consumer. The gateway's operator sets it on the Ollama server "
                     "(a Modelfile PARAMETER), not a request.")


def without_nulls(options: dict) -> dict:
    """Options with those sent as null left out: null means unset, as in Ollama (LlamaIndex sends
    "temperature": null)."""
    return {name: value for name, value in options.items() if value is not None}


def options_problems(options) -> dict | None:
    """Per-option messages if `options` break the shared rules (unknown names, load-time options, types, ranges,
    the operator's num_ctx bound), else None."""
    serializer = OllamaOptionsSerializer(data=options)
    problems = None if serializer.is_valid() else {
        name: [str(m) for m in messages] for name, messages in serializer.errors.items()}
    num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
    if isinstance(num_ctx, int) and not isinstance(num_ctx, bool) and num_ctx > settings.NUM_CTX_MAX \
            and not (problems and "num_ctx" in problems):
        problems = {**(problems or {}), "num_ctx": [
            f"At most {settings.NUM_CTX_MAX} (NUM_CTX_MAX, the operator's bound): a new context size reloads "
            "the model for every consumer."]}
    return problems


THINK_LEVELS = ("low", "medium", "high", "max")
# OpenAI's reasoning_effort as Ollama's think, as Ollama's own /v1 maps it (openai/openai.go), but "xhigh" is
# "high": the strongest level every thinking model has.
REASONING_EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                    "xhigh": "high"}


def think_problem(value) -> str | None:
    """Why a value cannot be Ollama's think, or None."""
    if isinstance(value, bool) or value in THINK_LEVELS:
        return None
    return f"Must be true, false or one of {', '.join(repr(level) for level in THINK_LEVELS)}."


def think_from_effort(effort, name: str) -> bool | str:
    """OpenAI's reasoning effort as Ollama's think; InvalidRequest naming the parameter for any other value."""
    if isinstance(effort, str) and effort in REASONING_EFFORT:
        return REASONING_EFFORT[effort]
    raise invalid(name, f"{name} must be one of {', '.join(REASONING_EFFORT)}, not {str(effort)[:40]!r}.")


# Go's time.ParseDuration, which Ollama reads a keep_alive string with: "300ms", "-1.5h", "2h45m".
GO_DURATION = re.compile(r"([-+]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+\Z")
GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def keep_alive_problem(value) -> str | None:
    """Why a client's keep_alive may not be sent, or None: within the operator's KEEP_ALIVE_MAX, never negative
    (Ollama reads that as "for ever") and never 0 (it unloads the model for every other consumer)."""
    seconds = _keep_alive_seconds(value)
    limit = settings.KEEP_ALIVE_MAX
    shown = _duration_text(limit)
    if seconds is None:
        return (f'Must be a number of seconds or a duration such as "5m" or "1h30m"; at most {shown} '
                "(KEEP_ALIVE_MAX).")
    if seconds < 0:
        return (f"Must not be negative: Ollama would keep the model loaded for ever. At most {shown} "
                "(KEEP_ALIVE_MAX).")
    if seconds == 0:
        return ("Must not be 0: that unloads the model for every other consumer of the server. "
                f"Send a duration up to {shown} (KEEP_ALIVE_MAX), or none for the server's default.")
    if seconds > limit:
        return f"At most {shown} (KEEP_ALIVE_MAX, the operator's limit): the model stays loaded for everyone."
    return None


def _keep_alive_seconds(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            return float("inf") if value > 0 else float("-inf")
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    match = GO_DURATION.match(text)
    if not match:
        return None
    seconds = sum(float(number) * GO_UNIT_SECONDS[unit] for number, unit in GO_DURATION_PART.findall(text))
    return -seconds if match.group(1) == "-" else seconds


def _duration_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60:g}m"
    return f"{seconds:g}s"


def output_schema_problem(schema) -> str | None:
    """Why a client's JSON Schema cannot constrain a json-mode reply (the same rule as a template's), or None."""
    return schema_problem(schema)


TEXT, JSON = "text", "json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class NeutralRequest:
    """One generation request as the use case takes it, whichever front door it came through.

    Either a prompt template's role, task and payload (the native API), or chat messages as sent (the compatible
    dialects), or a prompt completion (Ollama's /api/generate). Options are Ollama's, already checked against the
    shared rules; `mode` None means the template's; `output_schema` constrains a json-mode reply of a raw chat (a
    template brings its own).
    """

    stream: bool = False
    role: str = ""
    task: str = ""
    payload: dict | None = None
    messages: list[Message] | None = None
    model: str | None = None
    options: dict = field(default_factory=dict)
    mode: str | None = None
    output_schema: dict | None = None
    user: str = ""  # the end user a client names in the body (OpenAI's `user`); it wins over a header
    tools: tuple[Tool, ...] = ()
    think: bool | str | None = None
    keep_alive: int | float | str | None = None
    completion: Completion | None = None

    @property
    def templated(self) -> bool:
        return self.messages is None and self.completion is None
