"""The ASGI application that production serves (gunicorn + uvicorn workers; see gunicorn.conf.py).

Two Django handlers share one process. The API paths get a lean, async-only middleware chain: Django's own
middleware (sessions, auth, messages, CSRF, ...) is sync, and in an async request each one costs a hop to the one
thread that runs sync code, per hook — a dozen hops per request, all queued behind one another and behind the
admin's sync views. The admin, the debug API and the docs keep the full chain.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (after setup)
from django.core.handlers.asgi import ASGIHandler  # noqa: E402


class LeanASGIHandler(ASGIHandler):
    """An ASGIHandler whose middleware chain is settings.API_MIDDLEWARE."""

    def load_middleware(self, is_async=False):
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full


api_application = LeanASGIHandler()


def is_api_path(path: str) -> bool:
    return path.startswith(settings.API_PATH_PREFIXES) or path in settings.API_PATHS


async def application(scope, receive, send):
    if scope["type"] == "http" and is_api_path(scope["path"]):
        return await api_application(scope, receive, send)
    return await django_application(scope, receive, send)
