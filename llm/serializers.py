from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of quietly turning them into text."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class GenerateRequestSerializer(serializers.Serializer):
    role = StrictCharField(max_length=100, help_text="Who the model acts as, e.g. copywriter.")
    task = StrictCharField(max_length=100, help_text="What it is asked to do, e.g. sns.")
    payload = serializers.JSONField(help_text="The input of the task: a JSON object.")
    mode = serializers.ChoiceField(choices=["json", "text"], required=False,
                                   help_text="Defaults to the template's mode.")
    model = StrictCharField(max_length=200, required=False,
                            help_text="One the template allows; defaults to the template's model and fallbacks.")
    options = serializers.DictField(required=False,
                                    help_text="Ollama options; they override the template's defaults.")

    def validate_payload(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value

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
