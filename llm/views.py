from django.conf import settings
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from llm import services
from llm.authentication import ApiKeyAuthentication, KeyRefused
from llm.serializers import GenerationSerializer


class GenerateView(APIView):
    """POST /api/v1/llm/generate: one generation, audited whatever its outcome."""

    authentication_classes = [ApiKeyAuthentication]
    # The service refuses callers without a valid key itself, after writing their audit row.
    permission_classes = [AllowAny]
    # No parsers: the service reads the raw body, so that even one that is not JSON leaves an audit row.
    parser_classes = []

    def perform_authentication(self, request):
        """Deferred to post(): DRF would answer a bad key before the attempt could be audited."""

    def post(self, request):
        body, body_size = _read_body(request)
        try:
            api_key, refusal = request.auth, None  # runs ApiKeyAuthentication
        except KeyRefused as exc:
            api_key, refusal = None, exc.refusal
        request.log_context = {"consumer": api_key.consumer.name if api_key else None}
        generation = services.generate(
            request_id=request.request_id,
            body=body,
            body_size=body_size,
            content_type=request.META.get("CONTENT_TYPE", ""),
            started=request.started_at,
            api_key=api_key,
            refusal=refusal,
            client_ip=request.META.get("REMOTE_ADDR"),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )
        request.log_context.update(provider=generation.provider, model=generation.model)
        return Response(GenerationSerializer(generation).data)


def _read_body(request) -> tuple[bytes, int]:
    """The body, unless its declared size is over the limit: then it is not read at all."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > settings.GENERATE_MAX_BODY_BYTES:
        return b"", declared
    body = request.body
    return body, len(body)
