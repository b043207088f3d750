from django.conf import settings
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.middleware import annotate_request_log
from llm import selectors, services
from llm.serializers import GenerationSerializer, TemplateCatalogSerializer


class GenerateView(APIView):
    """POST /api/v1/llm/generate: one generation, audited whatever its outcome."""

    authentication_classes = []
    permission_classes = [AllowAny]
    # No parsers: the service reads the raw body, so that even one that is not JSON leaves an audit row.
    parser_classes = []

    def post(self, request):
        body, body_size = _read_body(request)
        generation = services.generate(
            request_id=request.request_id,
            body=body,
            body_size=body_size,
            content_type=request.META.get("CONTENT_TYPE", ""),
            started=request.started_at,
            client_ip=request.META.get("REMOTE_ADDR"),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )
        annotate_request_log(request, provider=generation.provider, model=generation.model)
        return Response(GenerationSerializer(generation).data)


class TemplateListView(APIView):
    """GET /api/v1/llm/templates: the roles and tasks a request may name, their payload fields and output schemas."""

    authentication_classes = []
    permission_classes = [AllowAny]

    def get(self, request):
        return Response(TemplateCatalogSerializer(selectors.template_catalog()).data)


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
