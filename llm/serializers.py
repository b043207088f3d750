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
    mode = serializers.ChoiceField(choices=["json", "text"], default="json")
    model = StrictCharField(max_length=200, required=False, help_text="Defaults to OLLAMA_DEFAULT_MODEL.")
    options = serializers.DictField(required=False, help_text="Passed on as Ollama's options.")

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
