"""Request ids and the one structured log line each request leaves."""

import asyncio
import logging
import time
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.middleware.security import SecurityMiddleware

logger = logging.getLogger("gateway.request")


def annotate_request_log(request, **fields) -> None:
    """Add fields (provider, error type, ...) to the request's log line; takes a Django or a DRF request."""
    request = getattr(request, "_request", request)  # DRF's Request wraps the HttpRequest the middleware sees
    request.log_context = {**getattr(request, "log_context", {}), **fields}


class RequestIdMiddleware:
    """Give every request a UUID (the audit row's id for generations), echo it as X-Request-ID and log the request.

    Async-capable, so that the async request path takes no thread hop here. A streamed response is logged when its
    stream ends, with its real duration (and an error type, if the stream ended with one).

    An incoming X-Request-ID is not adopted: it becomes a primary key, so a client could collide on purpose.
    It is logged as `client_request_id` so that a caller's own tracing still lines up.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        started = self._start(request)
        return self._finish(request, self.get_response(request), started)

    async def _acall(self, request):
        started = self._start(request)
        try:
            response = await self.get_response(request)
        except asyncio.CancelledError:
            # The client went away before the answer (nginx's 499): the request still gets its line.
            annotate_request_log(request, client_disconnected=True)
            _log(request, 499, started)
            raise
        return self._finish(request, response, started)

    @staticmethod
    def _start(request) -> float:
        started = time.perf_counter()
        request.request_id = uuid.uuid4()
        request.started_at = started
        return started

    def _finish(self, request, response, started: float):
        response["X-Request-ID"] = str(request.request_id)
        # This middleware's line is the request's log. Django's own (django.request) would repeat it at error
        # level for every 5xx the gateway answers by design (503 upstream_unavailable, 501, shutting_down).
        # An exception is still logged where it is raised.
        response._has_been_logged = True
        if response.streaming and response.is_async:
            response.streaming_content = self._logged_stream(request, response, response.streaming_content, started)
        else:
            _log(request, response.status_code, started)
        return response

    @staticmethod
    async def _logged_stream(request, response, content, started: float):
        try:
            async for chunk in content:
                yield chunk
        except BaseException:
            annotate_request_log(request, client_disconnected=True)
            raise
        finally:
            _log(request, response.status_code, started)


def _log(request, status: int, started: float) -> None:
    extra = {
        "request_id": str(request.request_id),
        "method": request.method,
        # The path only: query strings may carry credentials.
        "path": request.path,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "client_ip": request.META.get("REMOTE_ADDR"),
    }
    client_request_id = request.META.get("HTTP_X_REQUEST_ID")
    if client_request_id:
        extra["client_request_id"] = client_request_id[:128]
    extra.update(getattr(request, "log_context", {}))
    logger.info("request", extra=extra)


class SecurityHeadersMiddleware(SecurityMiddleware):
    """Django's SecurityMiddleware (HTTPS redirect, HSTS, nosniff, Referrer-Policy, COOP) for the async API chain.

    Its hooks do no I/O, so they run inline instead of in a thread hop each.
    """

    async def __acall__(self, request):
        response = self.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.process_response(request, response)
