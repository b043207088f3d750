from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from llm.request_rules import MODEL_NAME, OllamaOptionsSerializer, StrictBooleanField, StrictCharField


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
        validators=[MODEL_NAME],
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
    thinking = serializers.CharField(required=False, help_text="The model's thinking (reasoning models), when it "
                                                               "produced any; never part of the output.")

    def to_representation(self, instance):
        body = super().to_representation(instance)
        if not body.get("thinking"):
            body.pop("thinking", None)  # present only when the model thought
        return body


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
    models = serializers.ListField(child=serializers.CharField(),
                                   help_text="Tried in this order when a request names no model (those the "
                                             "consumer may use).")
    allowed_models = serializers.ListField(child=serializers.CharField(),
                                           help_text="The models a request may name (those the consumer may use).")
    output_schema = serializers.JSONField(source="current.output_schema")


class TemplateCatalogSerializer(serializers.Serializer):
    """GET /api/v1/llm/templates: every active role with its tasks, and the templates themselves."""

    roles = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                  help_text='Each role and its tasks, e.g. {"marketer": ["campaign_brief"]}.')
    templates = PromptTemplateSerializer(many=True)
