from rest_framework import serializers


class ConnectionCheckQuerySerializer(serializers.Serializer):
    """Options of POST /api/v1/debug/ollama[/generate], as query parameters or a JSON body."""

    model = serializers.CharField(required=False, max_length=200, help_text="default: OLLAMA_DEFAULT_MODEL")
    timeout = serializers.FloatField(required=False, help_text="seconds per step (default 5)")
