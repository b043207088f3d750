"""Typed gateway errors and the one JSON error shape every API response uses.

    {"error": {"type": "...", "message": "...", "request_id": "...", "details": {...}?}}
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf_exceptions

from gateway_project.middleware import annotate_request_log
from gateway_project.passwords import PasswordCheckRefused
from llm.content_hmac import frames_only
from rest_framework.response import Response

logger = logging.getLogger("llm.errors")


class GatewayError(Exception):
    """An error with a machine-readable type and the HTTP status it is answered with.

    `message` is what the client is told; `staff_message` (the message itself unless given) is what the audit row
    and the log record. Only the staff message may name a server, its address or what it answered.
    """

    type = "internal_error"
    status = 500

    def __init__(self, message: str, *, staff_message: str | None = None, details: dict | None = None,
                 headers: dict | None = None, attempts: int | None = None):
        super().__init__(message)
        self.message = message
        self.staff_message = staff_message or message
        self.details = details
        self.headers = headers or {}
        # Calls made to the provider before this error was raised, retries included (None: not a provider error).
        self.attempts = attempts

    @property
    def has_staff_detail(self) -> bool:
        return self.staff_message != self.message


AUTHENTICATE_HEADER = 'Bearer realm="llm-gateway"'


class NotAuthenticated(GatewayError):
    type, status = "not_authenticated", 401

    def __init__(self, message: str, **kwargs):
        super().__init__(message, headers={"WWW-Authenticate": AUTHENTICATE_HEADER}, **kwargs)


class AuthenticationFailed(NotAuthenticated):
    type = "authentication_failed"


class RateLimited(GatewayError):
    type, status = "rate_limited", 429

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)}, details={"retry_after": retry_after})


class AuthThrottled(GatewayError):
    """Too many failed authentications from this client address (or for this user name)."""

    type, status = "auth_throttled", 429

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)}, details={"retry_after": retry_after})


class AuthBusy(GatewayError):
    """This process is already checking as many passwords as it checks at once: nothing was checked."""

    type, status = "auth_busy", 503

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)}, details={"retry_after": retry_after})


class InvalidRequest(GatewayError):
    type, status = "invalid_request", 400


class PayloadTooLarge(GatewayError):
    type, status = "payload_too_large", 413


class RequestTimeout(GatewayError):
    """The request body did not arrive within REQUEST_BODY_TIMEOUT: the client sent too slowly, or stopped."""

    type, status = "request_timeout", 408


class UnsupportedMediaType(GatewayError):
    type, status = "unsupported_media_type", 415


class ModelNotFound(GatewayError):
    type, status = "model_not_found", 404


class UpstreamUnavailable(GatewayError):
    type, status = "upstream_unavailable", 503


class UpstreamBusy(GatewayError):
    """This gateway process already has UPSTREAM_MAX_IN_FLIGHT calls to the provider running, for too long."""

    type, status = "upstream_busy", 503


class ShuttingDown(GatewayError):
    """The gateway process stopped before the generation could finish."""

    type, status = "shutting_down", 503


class ClientDisconnected(GatewayError):
    """The client went away before the answer was complete; nobody reads this error, the audit row keeps it."""

    type, status = "client_disconnected", 499


class UpstreamTimeout(GatewayError):
    type, status = "upstream_timeout", 504


class UpstreamError(GatewayError):
    type, status = "upstream_error", 502


class ModelFailed(UpstreamError):
    """Ollama answered 500 with its own error: this model would not load or run (a crash, not enough memory)."""


class InvalidOutput(GatewayError):
    type, status = "invalid_output", 502


class AuditUnavailable(GatewayError):
    type, status = "audit_unavailable", 503


def content_logged(request) -> bool:
    """False for a metadata-only consumer's request (llm.content_hmac.withhold_from_log): its log keeps no content."""
    request = getattr(request, "_request", request)
    return getattr(request, "log_context", {}).get("content_stored", True)


def annotate_error(request, exc: GatewayError) -> None:
    """Name the error on the request's log line: its type, and for staff what the client was not told."""
    fields = {"error_type": exc.type}
    if exc.has_staff_detail and content_logged(request):
        fields["error_detail"] = exc.staff_message
    annotate_request_log(request, **fields)


def error_body(*, type: str, message: str, request_id, details: dict | None = None) -> dict:
    error = {"type": type, "message": message, "request_id": str(request_id) if request_id else None}
    if details:
        error["details"] = details
    return {"error": error}


# DRF's own exceptions, renamed into the gateway's vocabulary.
_DRF_TYPES = {
    drf_exceptions.ParseError: "invalid_request",
    drf_exceptions.ValidationError: "invalid_request",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
}


def api_exception_handler(exc, context):
    """DRF exception handler: every error, expected or not, leaves in the gateway's JSON shape."""
    request = context.get("request")
    request_id = getattr(request, "request_id", None)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, PasswordCheckRefused):
        response = api_exception_handler(
            (AuthThrottled if exc.status == 429 else AuthBusy)(exc.message, retry_after=exc.retry_after), context)
        response._has_been_logged = True  # expected under a flood: gateway_project.passwords.BUSY says it once
        return response
    if isinstance(exc, GatewayError):
        annotate_error(request, exc)
        body = error_body(type=exc.type, message=exc.message, request_id=request_id, details=exc.details)
        return Response(body, status=exc.status, headers=exc.headers)
    if isinstance(exc, drf_exceptions.APIException):
        type_ = next((t for cls, t in _DRF_TYPES.items() if isinstance(exc, cls)), "api_error")
        annotate_request_log(request, error_type=type_)
        details = None
        if isinstance(exc, drf_exceptions.ValidationError):
            details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
            message = "The request is invalid; see details."
        else:
            message = str(exc.detail)
        headers = {}
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
            authenticate = context["view"].get_authenticate_header(request) if context.get("view") else None
            if authenticate:
                headers["WWW-Authenticate"] = authenticate
        return Response(error_body(type=type_, message=message, request_id=request_id, details=details),
                        status=exc.status_code, headers=headers)
    if content_logged(request):
        logger.exception("unhandled error", extra={"request_id": str(request_id)})
    else:
        logger.error("unhandled error", extra={"request_id": str(request_id), "traceback": frames_only(exc)})
    annotate_request_log(request, error_type="internal_error")
    return Response(
        error_body(type="internal_error", message="The gateway failed unexpectedly; the error is logged.",
                   request_id=request_id),
        status=500,
    )


def _wants_json(request) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.META.get("HTTP_ACCEPT", "")


def _json_error(request, status: int, type_: str, message: str) -> JsonResponse:
    body = error_body(type=type_, message=message, request_id=getattr(request, "request_id", None))
    return JsonResponse(body, status=status)


# Django's handler400/403/404/500: JSON for API clients, Django's own pages for people in the admin.
def bad_request(request, exception):
    if isinstance(exception, RequestDataTooBig):
        # Past DATA_UPLOAD_MAX_MEMORY_SIZE: a size, not a malformed request (the handlers refuse such bodies first).
        if _wants_json(request):
            return _json_error(request, 413, "payload_too_large", "The request body is too large.")
        return HttpResponse("Request body too large.", status=413, content_type="text/plain; charset=utf-8")
    if _wants_json(request):
        return _json_error(request, 400, "invalid_request", "The request could not be understood (bad Host header?).")
    return defaults.bad_request(request, exception)


def permission_denied(request, exception):
    if _wants_json(request):
        return _json_error(request, 403, "permission_denied", "Permission denied.")
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception):
    if _wants_json(request):
        return _json_error(request, 404, "not_found", f"No endpoint at {request.path}.")
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _wants_json(request):
        return _json_error(request, 500, "internal_error", "The gateway failed unexpectedly; the error is logged.")
    return defaults.server_error(request)


class ModelNotAllowed(GatewayError):
    """The consumer's allow-list (Consumer.allowed_models) does not include the model."""

    type, status = "model_not_allowed", 403


class RawPromptsNotAllowed(GatewayError):
    """The consumer is barred from raw prompts (Consumer.templates_only): native template API only."""

    type, status = "raw_prompts_not_allowed", 403


class ModelManagementRefused(GatewayError):
    """Pulling, pushing, creating, copying or deleting models: the server's operator does that, never a consumer."""

    type, status = "model_management_refused", 403


class OriginNotAllowed(GatewayError):
    """A browser page from an origin outside OLLAMA_DIALECT_ORIGINS called the Ollama dialect."""

    type, status = "origin_not_allowed", 403


class NotImplementedHere(GatewayError):
    type, status = "not_implemented", 501
