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

import asyncio  # noqa: E402

from django.conf import settings  # noqa: E402  (after setup)
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.urls import set_script_prefix  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402


class LeanASGIHandler(ASGIHandler):
    """An ASGIHandler whose middleware chain is settings.API_MIDDLEWARE, and that takes no thread hop of its own.

    Django's handler sends request_started and request_finished, whose receivers are sync (they close the thread's
    database connections), and closes the response in a thread: each is a hop through a thread that asgiref starts
    per request. On the API path no database connection lives on the event loop's thread (gateway_project.db_steps
    hands each back at the end of its step), so there is nothing for them to close. Otherwise `handle` is Django's.
    """

    def load_middleware(self, is_async=False):
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected while the response was being sent
            return response

        # As Django does: a disconnect while the view runs cancels it (the use case completes its row then).
        tasks = [asyncio.create_task(self.listen_for_disconnect(receive)),
                 asyncio.create_task(process_request(request, send))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        body_file.close()


api_application = LeanASGIHandler()


def is_api_path(path: str) -> bool:
    return path.startswith(settings.API_PATH_PREFIXES) or path in settings.API_PATHS


from llm import audit_spool  # noqa: E402


async def application(scope, receive, send):
    # The audit spool's replay, on whatever server runs this: at the first request, then periodically.
    audit_spool.start_replaying()
    if scope["type"] == "http" and is_api_path(scope["path"]):
        return await api_application(scope, receive, send)
    return await django_application(scope, receive, send)
