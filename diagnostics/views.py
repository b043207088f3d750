"""The debug API (staff only), the metrics and the health endpoints. Thin: the work is in the services."""

import asyncio
import hashlib
import hmac

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from rest_framework.authentication import (BaseAuthentication, BasicAuthentication, SessionAuthentication,
                                           get_authorization_header)
from rest_framework.exceptions import AuthenticationFailed, MethodNotAllowed
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission, IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from diagnostics.health import database_ready
from gateway_project.db_steps import db_step
from llm import admission
from diagnostics.models import ConnectionCheck
from diagnostics.resolved_settings import resolved_settings, shown
from diagnostics.serializers import ConnectionCheckQuerySerializer
from diagnostics.services import run_connection_check
from llm import metrics


class StaffOnlyAPIView(APIView):
    """A staff user by session (the admin's login) or HTTP Basic auth; others get 401/403 in the error shape."""

    # Basic first: DRF answers an anonymous caller with the first class's challenge, and only Basic has one
    # (so curl without -u gets 401 + WWW-Authenticate rather than 403).
    authentication_classes = [BasicAuthentication, SessionAuthentication]
    permission_classes = [IsAdminUser]


class DebugSettingsView(StaffOnlyAPIView):
    """GET /api/v1/debug/settings: the effective gateway settings (secrets masked), their sources and warnings."""

    def get(self, request):
        report = resolved_settings()
        return Response({
            "generator_mode": settings.GENERATOR_MODE,
            "ollama_base_url": shown("OLLAMA_BASE_URL", settings.OLLAMA_BASE_URL),
            "ollama_timeout": settings.OLLAMA_TIMEOUT,
            "ollama_default_model": settings.OLLAMA_DEFAULT_MODEL,
            "comfyui_base_url": shown("COMFYUI_BASE_URL", settings.COMFYUI_BASE_URL),
            **report.as_dict(),
        })


class NotCrossSite(BasePermission):
    """Refuse what a browser sends from another site (`Sec-Fetch-Site: cross-site`): a browser that has cached
    Basic credentials for the gateway would attach them to a form another site posts here. A session needs the CSRF
    token besides (DRF's SessionAuthentication checks it on POST); curl and scripts send no Sec-Fetch-Site."""

    message = "A debug action cannot be requested from another site."

    def has_permission(self, request, view):
        return request.META.get("HTTP_SEC_FETCH_SITE", "none") in ("same-origin", "none")


class DebugOllamaView(StaffOnlyAPIView):
    """POST /api/v1/debug/ollama: run the connection check (recorded in the history) and return its report.

    An action (it calls Ollama, and writes a row), so POST only: a GET link or image on another site must not run
    it with a staff member's cookie. With the admin's session the CSRF token is needed too.
    """

    generate = False
    permission_classes = [*StaffOnlyAPIView.permission_classes, NotCrossSite]

    def post(self, request):
        # The options as query parameters (curl -X POST '...?model=x') or as a JSON body.
        given = {**request.query_params.dict(), **(request.data if isinstance(request.data, dict) else {})}
        query = ConnectionCheckQuerySerializer(data=given)
        query.is_valid(raise_exception=True)
        report, row = run_connection_check(origin=ConnectionCheck.Origin.API, user=request.user,
                                           generate=self.generate, **query.validated_data)
        body = report.as_dict()
        cause = report.cause
        body.update({
            "success": report.ok,
            "total_models": len(report.models or []),
            "error": {"type": cause.code, "message": cause.message, "details": {"fix": cause.fix}} if cause else None,
            "check_id": row.pk if row else None,
        })
        return Response(body)


    def http_method_not_allowed(self, request, *args, **kwargs):
        raise MethodNotAllowed(request.method, detail=f"Method {request.method} is not allowed: this runs a check "
                                                      "against Ollama and records it, so use POST.")


class DebugOllamaGenerateView(DebugOllamaView):
    """POST /api/v1/debug/ollama/generate: the same check plus a tiny test generation."""

    generate = True


METRICS_SCRAPER = "metrics-token"


class MetricsTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <METRICS_TOKEN>`, for the Prometheus scraper; any other bearer token is refused."""

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        expected = settings.METRICS_TOKEN
        # Compared as digests in constant time: neither the token's characters nor its length leak through timing.
        if len(parts) != 2 or not expected or not hmac.compare_digest(
                hashlib.sha256(parts[1]).digest(), hashlib.sha256(expected.encode()).digest()):
            raise AuthenticationFailed("Invalid metrics token.")
        return AnonymousUser(), METRICS_SCRAPER

    def authenticate_header(self, request):
        return 'Bearer realm="llm-gateway-metrics"'


class IsScraperOrStaff(BasePermission):
    def has_permission(self, request, view):
        return request.auth == METRICS_SCRAPER or IsAdminUser().has_permission(request, view)


class ErrorsAsJson(BaseContentNegotiation):
    """Prometheus asks for text formats only; errors still leave as JSON instead of 406 Not Acceptable."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class MetricsView(StaffOnlyAPIView):
    """GET /metrics: the Prometheus metrics, for the scraper's token or a staff user; never open to anyone."""

    authentication_classes = [MetricsTokenAuthentication, *StaffOnlyAPIView.authentication_classes]
    permission_classes = [IsScraperOrStaff]
    content_negotiation_class = ErrorsAsJson

    def get(self, request):
        metrics.count_budget_warnings()
        body, content_type = metrics.exposition(request.META.get("HTTP_ACCEPT"))
        return HttpResponse(body, content_type=content_type)


@require_GET
async def healthz(request):
    """The process answers; no I/O at all, and no thread: it answers while hundreds of generations are in flight."""
    return JsonResponse({"status": "ok"})


# /readyz answers within this, whatever the database does: a load balancer's probe gives up after a few seconds,
# and a probe that times out says less than a 503.
READY_TIMEOUT = 1.5


@require_GET
async def readyz(request):
    """The database answers and the process is not stopping; 503 otherwise, so a load balancer moves on.

    Never Ollama's health: a gateway whose Ollama is down still answers (with errors, and audits them).
    """
    if admission.draining():
        return JsonResponse({"status": "unavailable", "checks": {"shutdown": "draining"}}, status=503)
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            ready = await db_step(database_ready)
    except TimeoutError:
        ready = False  # the step goes on in its thread, bounded by the database's own timeouts
    if ready:
        return JsonResponse({"status": "ok", "checks": {"database": "ok"}})
    return JsonResponse({"status": "unavailable", "checks": {"database": "unavailable"}}, status=503)
