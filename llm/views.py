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
from llm import api_keys, selectors, services
from llm.authentication import ApiKeyAuthentication
from llm.errors import GatewayError, error_body
from llm.schema import ERROR_RESPONSES
from llm.serializers import TemplateCatalogSerializer

NDJSON = "application/x-ndjson"


@csrf_exempt  # an API key authenticates, not a session cookie
async def generate(request):
    """POST /api/v1/llm/generate: one generation, audited whatever its outcome; JSON whatever Accept says."""
    if request.method != "POST":
        return _error(request, 405, "method_not_allowed", f"Method {request.method} is not allowed; use POST.",
                      headers={"Allow": "POST"})
    body, body_size = _read_body(request)
    caller = _caller(request)
    try:
        result = await services.generate(
            request_id=request.request_id, body=body, body_size=body_size,
            content_type=request.META.get("CONTENT_TYPE", ""), started=request.started_at, caller=caller)
    except GatewayError as exc:
        _annotate(request, caller)
        return _error(request, exc.status, exc.type, exc.message, details=exc.details, headers=exc.headers)
    _annotate(request, caller)
    if isinstance(result, services.Streaming):
        annotate_request_log(request, provider=result.row.provider, model=result.row.model, stream=True)
        response = StreamingHttpResponse(_ndjson(request, result), content_type=NDJSON,
                                         headers={"Server-Timing": _server_timing(result.timing),
                                                  "X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
        return response
    row, timing = result
    annotate_request_log(request, provider=row.provider, model=row.model)
    return JsonResponse(generation_body(row), headers={"Server-Timing": _server_timing(timing)})


async def _ndjson(request, streaming: services.Streaming):
    row_id = str(streaming.row.id)
    async for event in streaming.events():
        if isinstance(event, services.Delta):
            yield _line({"id": row_id, "delta": event.text, "done": False})
            continue
        row = event.row
        if event.error is not None:
            annotate_request_log(request, error_type=event.error.type)
            error = error_body(type=event.error.type, message=event.error.message, request_id=row.id)["error"]
            yield _line({"id": row_id, "done": True, "error": error})
        else:
            yield _line({**generation_body(row), "done": True, "first_token_ms": row.first_token_ms})


def generation_body(row) -> dict:
    """The answer to a generation: GenerationSerializer's fields (its OpenAPI description), built directly because a
    DRF serializer costs more per request than the rest of this view."""
    return {"id": str(row.id), "provider": row.provider, "model": row.model, "mode": row.mode, "output": row.output,
            "usage": {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens},
            "latency_ms": row.latency_ms, "upstream_ms": row.upstream_ms}


def _line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _caller(request) -> services.Caller:
    try:
        presented, refusal = api_keys.presented_key(request.META), None
    except api_keys.KeyRefused as exc:
        presented, refusal = None, exc
    return services.Caller(presented_key=presented, refusal=refusal, client_ip=request.META.get("REMOTE_ADDR"),
                           user_agent=request.META.get("HTTP_USER_AGENT", ""))


def _annotate(request, caller: services.Caller) -> None:
    key = caller.api_key or getattr(caller.refusal, "api_key", None)
    annotate_request_log(request, consumer=key.consumer.name if key else None)


def _server_timing(timing: services.Timing) -> str:
    """`upstream` is the wait for the provider, `gateway` the rest: for a stream, up to its first byte."""
    total = timing.total_ms()
    upstream = min(timing.upstream_ms, total)
    return f"upstream;dur={upstream:.2f}, gateway;dur={total - upstream:.2f}"


def _error(request, status: int, type_: str, message: str, *, details=None, headers=None) -> HttpResponse:
    annotate_request_log(request, error_type=type_)
    body = error_body(type=type_, message=message, request_id=request.request_id, details=details)
    return JsonResponse(body, status=status, headers=headers)


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
