"""The native API's front door: POST /api/v1/llm/generate (JSON or NDJSON stream) and the template catalog.

The generation view only translates: HTTP in, services.generate, the row (or the stream's events) out in the native
wire format. Authentication, auditing, limits, retries and streaming live in the use case.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.middleware import annotate_request_log
from llm import selectors, services
from llm.authentication import ApiKeyAuthentication
from llm.dialects import http
from llm.errors import GatewayError, InvalidRequest, annotate_error, error_body
from llm.providers.base import TextDelta, ThinkingDelta, ToolCallsDelta
from llm.request_rules import NeutralRequest
from llm.schema import ERROR_RESPONSES
from llm.serializers import GenerateRequestSerializer, TemplateCatalogSerializer

NDJSON = "application/x-ndjson"


@csrf_exempt  # an API key authenticates, not a session cookie
async def generate(request):
    """POST /api/v1/llm/generate: one generation, audited whatever its outcome; JSON whatever Accept says."""
    if request.method != "POST":
        return _error(request, 405, "method_not_allowed", f"Method {request.method} is not allowed; use POST.",
                      headers={"Allow": "POST"})
    door = services.FrontDoor(dialect="native", endpoint=request.path, parse=parse,
                              max_body_bytes=settings.GENERATE_MAX_BODY_BYTES,
                              described=("role", "task", "mode", "model"), masks_secrets=True)
    try:
        result = await http.generate(request, caller=http.caller_of(request), door=door)
    except GatewayError as exc:
        return error_response(request, exc)
    if isinstance(result, services.Streaming):
        annotate_request_log(request, provider=result.row.provider, model=result.row.model, stream=True)
        response = StreamingHttpResponse(result.body(_ndjson(request, result)), content_type=NDJSON,
                                         headers={"Server-Timing": http.server_timing(result.timing), **result.headers,
                                                  "X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
        return response
    annotate_request_log(request, provider=result.row.provider, model=result.row.model)
    return JsonResponse(generation_body(result.row),
                        headers={"Server-Timing": http.server_timing(result.timing), **result.headers})


def parse(data) -> NeutralRequest:
    """The native body: a template's role and task with its payload, and the shared options."""
    serializer = GenerateRequestSerializer(data=data)
    if not serializer.is_valid():
        raise InvalidRequest("The request is invalid; see details.", details=serializer.errors)
    fields = serializer.validated_data
    return NeutralRequest(role=fields["role"], task=fields["task"], payload=fields["payload"],
                          mode=fields.get("mode"), model=fields.get("model"), options=fields.get("options") or {},
                          stream=fields["stream"])


def _ndjson(request, streaming: services.Streaming):
    """The stream's NDJSON lines: one per delta, then the final line (the answer, or the error)."""
    row_id = str(streaming.row.id)

    def render(event) -> bytes:
        if isinstance(event, TextDelta):
            return _line({"id": row_id, "delta": event.text, "done": False})
        if isinstance(event, ThinkingDelta):
            return _line({"id": row_id, "thinking": event.text, "done": False})
        if isinstance(event, ToolCallsDelta):
            return b""  # a template offers no tools
        row = event.row
        if event.error is not None:
            annotate_error(request, event.error)
            error = error_body(type=event.error.type, message=event.error.message, request_id=row.id)["error"]
            return _line({"id": row_id, "done": True, "error": error})
        return _line({**generation_body(row), "done": True, "first_token_ms": row.first_token_ms})

    return render


def generation_body(row) -> dict:
    """The answer to a generation: GenerationSerializer's fields (its OpenAPI description), built directly because a
    DRF serializer costs more per request than the rest of this view."""
    body = {"id": str(row.id), "provider": row.provider, "model": row.model, "mode": row.mode, "output": row.output,
            "usage": {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens},
            "latency_ms": row.latency_ms, "upstream_ms": row.upstream_ms}
    if row.thinking:
        body["thinking"] = row.thinking  # a reasoning model's, kept apart from the output
    return body


def _line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_response(request, exc: GatewayError) -> HttpResponse:
    """A gateway error in the native shape."""
    annotate_error(request, exc)
    return _error(request, exc.status, exc.type, exc.message, details=exc.details, headers=exc.headers)


def _error(request, status: int, type_: str, message: str, *, details=None, headers=None) -> HttpResponse:
    annotate_request_log(request, error_type=type_)
    body = error_body(type=type_, message=message, request_id=request.request_id, details=details)
    return JsonResponse(body, status=status, headers=headers)


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
        responses={200: TemplateCatalogSerializer, 401: ERROR_RESPONSES[401], 429: ERROR_RESPONSES[429]},
    )
    def get(self, request):
        # request.user is the key's Consumer (ApiKeyAuthentication): it sees only the models it may use.
        return Response(TemplateCatalogSerializer(selectors.template_catalog(request.user)).data)
