"""The largest body each API path takes, and the answer to a request whose body the handler left unread.

The ASGI handlers (gateway_project.asgi) read a body only up to its path's limit and within REQUEST_BODY_TIMEOUT
(gateway_project.request_body). A body they stopped reading is refused: 413 payload_too_large or 408
request_timeout. On the generation endpoints the use case answers it, after the key, and records it like any
other refusal; on every other path UnreadBodyMiddleware answers it here, in the path's own error shape, before
any view runs.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpResponse, JsonResponse

from gateway_project.middleware import annotate_request_log
from gateway_project.request_body import TOO_LARGE, Unread
from llm.errors import GatewayError, PayloadTooLarge, RequestTimeout, error_body

# The generation endpoints and the setting that bounds each one's body (their FrontDoor's max_body_bytes). The chat
# endpoints take images: their bodies may reach CHAT_MAX_IMAGE_BODY_BYTES, and without the images must still fit
# CHAT_MAX_BODY_BYTES (checked once the body is parsed, llm.services).
GENERATION_LIMITS = {
    "/api/v1/llm/generate": "GENERATE_MAX_BODY_BYTES",
    "/v1/chat/completions": "CHAT_MAX_IMAGE_BODY_BYTES",
    "/api/chat": "CHAT_MAX_IMAGE_BODY_BYTES",
    "/api/generate": "CHAT_MAX_IMAGE_BODY_BYTES",
    "/v1/embeddings": "CHAT_MAX_BODY_BYTES",
    "/api/embed": "CHAT_MAX_BODY_BYTES",
    "/api/embeddings": "CHAT_MAX_BODY_BYTES",
}


def api_limit(path: str) -> int:
    """The largest body the lean API handler reads for `path`."""
    return getattr(settings, GENERATION_LIMITS.get(path, "API_MAX_BODY_BYTES"))


def answered_by_use_case(path: str) -> bool:
    return path in GENERATION_LIMITS


def refusal(unread: Unread) -> GatewayError:
    """The error that answers a body the handler did not read (outside the generation endpoints)."""
    if unread.reason == TOO_LARGE:
        return PayloadTooLarge(f"The request body is over this endpoint's limit of {unread.limit} bytes.")
    return RequestTimeout(f"The request body did not arrive within {settings.REQUEST_BODY_TIMEOUT:g}s "
                          "(REQUEST_BODY_TIMEOUT).")


class UnreadBodyMiddleware:
    """Answer a request whose body was not read, unless its use case answers (and audits) it: first in both
    middleware chains, right after the request id, so that nothing else spends work on it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        refused = _refused(request)
        if self.is_async:
            return self._acall(request, refused)
        return refused if refused is not None else self.get_response(request)

    async def _acall(self, request, refused):
        return refused if refused is not None else await self.get_response(request)


def _refused(request) -> HttpResponse | None:
    unread = getattr(request, "unread_body", None)
    if unread is None or answered_by_use_case(request.path):
        return None
    return _answer(request, refusal(unread))


def _answer(request, exc: GatewayError) -> HttpResponse:
    """`exc` in the error shape of the path's dialect (llm.dialects.urls), the native one for the gateway's own
    JSON paths, plain text for the admin's pages."""
    from llm.dialects import ollama, openai

    path = request.path
    if path.startswith("/v1/"):
        return openai.error_response(request, exc)
    if path.startswith("/api/") and not path.startswith("/api/v1/"):
        return ollama.error_response(request, exc)
    annotate_request_log(request, error_type=exc.type)
    if path.startswith(("/api/", "/healthz", "/readyz", "/metrics")) \
            or "application/json" in request.META.get("HTTP_ACCEPT", ""):
        body = error_body(type=exc.type, message=exc.message, request_id=getattr(request, "request_id", None))
        return JsonResponse(body, status=exc.status, headers=exc.headers)
    return HttpResponse(exc.message, status=exc.status, content_type="text/plain; charset=utf-8")
