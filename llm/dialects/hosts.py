"""ALLOWED_HOSTS on the lean API chain (gateway_project.asgi), in the error shape of the path's front door.

Django checks the Host header only when something asks for it (CommonMiddleware, CSRF, a redirect), and the lean
chain has none of those: without this check a request for any host name was answered, which is what DNS rebinding
needs. A refused request reaches no view, so it leaves no audit row, as Django's own refusal does on the admin; its
log line says why. /healthz and /readyz stay open: load balancers probe them by IP address.
"""

from __future__ import annotations

from asgiref.sync import markcoroutinefunction
from django.core.exceptions import DisallowedHost

from llm.errors import InvalidRequest

EXEMPT_PATHS = ("/healthz", "/readyz")


class AllowedHostsMiddleware:
    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        if request.path not in EXEMPT_PATHS:
            try:
                request.get_host()
            except DisallowedHost:
                return refused(request)
        return await self.get_response(request)


def refused(request):
    """The 400 for a Host header outside ALLOWED_HOSTS, as the path's front door shapes its errors."""
    from llm import views
    from llm.dialects import ollama, openai

    host = request.META.get("HTTP_HOST", "")[:100]
    error = InvalidRequest(f"This gateway does not answer to the host name {host!r} (ALLOWED_HOSTS).")
    if request.path.startswith("/v1/"):
        return openai.error_response(request, error)
    if request.path.startswith("/api/v1/"):
        return views.error_response(request, error)
    return ollama.error_response(request, error)
