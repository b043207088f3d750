from rest_framework import serializers


class ConnectionCheckQuerySerializer(serializers.Serializer):
    """Query parameters of GET /api/v1/debug/ollama[/generate]."""

    model = serializers.CharField(required=False, max_length=200, help_text="default: OLLAMA_DEFAULT_MODEL")
    timeout = serializers.FloatField(required=False, help_text="seconds per step (default 5)")
