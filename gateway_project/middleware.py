"""Request ids and the one structured log line each request leaves."""

import logging
import time
import uuid

logger = logging.getLogger("gateway.request")


def annotate_request_log(request, **fields) -> None:
    """Add fields (provider, error type, ...) to the request's log line; takes a Django or a DRF request."""
    request = getattr(request, "_request", request)  # DRF's Request wraps the HttpRequest the middleware sees
    request.log_context = {**getattr(request, "log_context", {}), **fields}


class RequestIdMiddleware:
    """Give every request a UUID (the audit row's id for generations), echo it as X-Request-ID and log the request.

    An incoming X-Request-ID is not adopted: it becomes a primary key, so a client could collide on purpose.
    It is logged as `client_request_id` so that a caller's own tracing still lines up.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        request.request_id = uuid.uuid4()
        request.started_at = started
        response = self.get_response(request)
        response["X-Request-ID"] = str(request.request_id)
        extra = {
            "request_id": str(request.request_id),
            "method": request.method,
            # The path only: query strings may carry credentials.
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "client_ip": request.META.get("REMOTE_ADDR"),
        }
        client_request_id = request.META.get("HTTP_X_REQUEST_ID")
        if client_request_id:
            extra["client_request_id"] = client_request_id[:128]
        extra.update(getattr(request, "log_context", {}))
        logger.info("request", extra=extra)
        return response
