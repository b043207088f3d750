from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

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


@extend_schema_field({"type": "object", "additionalProperties": True})
class PayloadField(serializers.JSONField):
    """Any JSON on the way in, so that a non-object gets a clear message rather than a parse error."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return super().to_internal_value(data)


class GenerateRequestSerializer(serializers.Serializer):
    role = StrictCharField(max_length=100, help_text="Who the model acts as, e.g. copywriter.")
    task = StrictCharField(max_length=100, help_text="What it is asked to do, e.g. sns.")
    payload = PayloadField(help_text="The input of the task: a JSON object. Values under secret-named keys "
                                     "(REDACT_KEYS: password, token, …) are masked before use.")
    mode = serializers.ChoiceField(choices=["json", "text"], required=False,
                                   help_text="Defaults to the template's mode.")
    model = StrictCharField(
        max_length=200, required=False,
        help_text="An Ollama model the template allows; defaults to the template's model, then its fallbacks.",
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*\Z",
                                   "Must be an Ollama model name such as qwen2.5:7b.")],
    )
    options = OllamaOptionsSerializer(required=False,
                                      help_text="Passed on to Ollama as its options, over the template's defaults.")
    stream = StrictBooleanField(required=False, default=False,
                                help_text="Answer as NDJSON: one line per piece of text as the model produces it, "
                                          "then a last line with the outcome.")

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField(allow_null=True)
    completion_tokens = serializers.IntegerField(allow_null=True)


class GenerationSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    provider = serializers.CharField()
    model = serializers.CharField()
    mode = serializers.CharField()
    output = serializers.JSONField()
    usage = UsageSerializer(source="*")
    latency_ms = serializers.FloatField()
    upstream_ms = serializers.FloatField()


class ErrorDetailSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="Machine-readable: invalid_request, not_authenticated, rate_limited, …")
    message = serializers.CharField(help_text="What went wrong and what to do, for people.")
    request_id = serializers.UUIDField(allow_null=True, help_text="The X-Request-ID header: the audit row's id.")
    details = serializers.DictField(required=False, help_text="Per-field messages, for invalid_request.")


class ErrorSerializer(serializers.Serializer):
    """The one error shape of every API response."""

    error = ErrorDetailSerializer()


class PromptTemplateSerializer(serializers.Serializer):
    """A template as consumers discover it: what to send (payload fields) and what comes back (output schema)."""

    role = serializers.CharField()
    task = serializers.CharField()
    description = serializers.CharField()
    version = serializers.IntegerField(source="current.number")
    mode = serializers.CharField(source="current.mode")
    payload_fields = serializers.ListField(source="current.payload_fields", child=serializers.CharField())
    sample_payload = serializers.JSONField()
    models = serializers.ListField(source="current.model_chain", child=serializers.CharField(),
                                   help_text="Tried in this order when a request names no model.")
    allowed_models = serializers.ListField(source="current.allowed_model_names", child=serializers.CharField(),
                                           help_text="The models a request may name.")
    output_schema = serializers.JSONField(source="current.output_schema")


class TemplateCatalogSerializer(serializers.Serializer):
    """GET /api/v1/llm/templates: every active role with its tasks, and the templates themselves."""

    roles = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                  help_text='Each role and its tasks, e.g. {"marketer": ["campaign_brief"]}.')
    templates = PromptTemplateSerializer(many=True)
