from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.middleware import annotate_request_log
from llm import selectors, services
from llm.authentication import ApiKeyAuthentication, ApiKeyRefused
from llm.schema import ERROR_RESPONSES
from llm.serializers import GenerateRequestSerializer, GenerationSerializer, TemplateCatalogSerializer


class AlwaysJSON(BaseContentNegotiation):
    """JSON whatever Accept or ?format= ask for: DRF's 406 (or 404) would answer before the attempt is audited."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class GenerateView(APIView):
    """POST /api/v1/llm/generate: one generation, audited whatever its outcome."""

    authentication_classes = [ApiKeyAuthentication]
    # No permission classes: the service refuses callers without a valid key itself, after auditing them.
    # (Not AllowAny either: the schema would then call the key optional.)
    permission_classes = []
    # No parsers: the service reads the raw body, so that even one that is not JSON leaves an audit row.
    parser_classes = []
    content_negotiation_class = AlwaysJSON

    def perform_authentication(self, request):
        """Deferred to post(): DRF would answer a bad key before the attempt could be audited."""

    @extend_schema(
        operation_id="generate",
        tags=["generation"],
        summary="Generate with a local LLM",
        description="Builds a prompt from role, task and payload, asks the model (Ollama, or the mock) and returns "
                    "its output: a JSON object in json mode, a string in text mode. Every attempt, refused ones "
                    "included, leaves one audit row whose id is the X-Request-ID response header.",
        request={"application/json": GenerateRequestSerializer},
        responses={200: GenerationSerializer, **ERROR_RESPONSES},
    )
    def post(self, request):
        body, body_size = _read_body(request)
        try:
            api_key, refusal = request.auth, None  # runs ApiKeyAuthentication
        except ApiKeyRefused as exc:
            api_key, refusal = None, exc.refusal
        annotate_request_log(request, consumer=api_key.consumer.name if api_key else None)
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
        annotate_request_log(request, provider=generation.provider, model=generation.model)
        return Response(GenerationSerializer(generation).data)


class TemplateListView(APIView):
    """GET /api/v1/llm/templates: the roles and tasks a request may name, their payload fields and output schemas."""

    # The same key as for generating: the catalog is part of the generation API.
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="templates",
        tags=["generation"],
        summary="List the roles and tasks",
        description="The active prompt templates: for each role and task, the payload fields a request must send, "
                    "a sample payload, the models it may name and the JSON Schema of its json-mode output.",
        responses={200: TemplateCatalogSerializer, 401: ERROR_RESPONSES[401]},
    )
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
