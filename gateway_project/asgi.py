"""The ASGI application that production serves (gunicorn + uvicorn workers; see gunicorn.conf.py).

Two Django handlers share one process. The API paths get a lean, async-only middleware chain: Django's own
middleware (sessions, auth, messages, CSRF, ...) is sync, and in an async request each one costs a hop to the one
thread that runs sync code, per hook — a dozen hops per request, all queued behind one another and behind the
admin's sync views. The admin, the debug API and the docs keep the full chain. Both read a request's body only up
to its path's limit and within REQUEST_BODY_TIMEOUT; the request's head is bounded by the HTTP protocol the worker
speaks (gateway_project.connections).
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application, before the handlers below are built

import asyncio  # noqa: E402

from asgiref.sync import sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402  (after setup)
from django.core import signals  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.urls import set_script_prefix  # noqa: E402

from gateway_project import request_body  # noqa: E402
from llm import body_limits  # noqa: E402


class GatewayASGIHandler(ASGIHandler):
    """Django's ASGIHandler, except that it reads a body only up to its path's limit and within REQUEST_BODY_TIMEOUT.

    Django's handler reads every body whole before any view runs (an unauthenticated 500 MB body was spooled to
    disk before its 401), and waits as long as the client takes to send it. A body this handler stops reading is
    left to llm.body_limits to answer (413 or 408), and the connection is closed after the answer: the rest of
    the body may still be coming, so no next request can be read from it. Otherwise `handle` is Django's.
    """

    def body_limit(self, path: str) -> int | None:
        # The admin's forms, the debug API and the docs: Django's own limit on a body it reads.
        return settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    async def request_started(self, scope) -> None:
        await signals.request_started.asend(sender=self.__class__, scope=scope)

    async def request_finished(self, response) -> None:
        """`response` is None when the view was cancelled (the client left)."""
        if response is None:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await sync_to_async(response.close)()

    async def handle(self, scope, receive, send):
        try:
            body = await request_body.read(scope, receive, limit=self.body_limit(scope["path"]))
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        await self.request_started(scope)
        request, error_response = self.create_request(scope, body.file)
        if request is None:
            body.file.close()
            await self.send_response(error_response, send)
            await self.request_finished(error_response)
            return
        request.unread_body = body.unread

        async def process_request(request, send):
            response = await self.run_get_response(request)
            if body.unread is not None:
                response["Connection"] = "close"
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected while the response was being sent
            return response

        # As Django does: a disconnect while the view runs cancels it (the use case completes its row then). Not
        # when the body was left unread: receive() would hand out the rest of it (and, to a client that sent
        # `Expect: 100-continue`, invite it to send the body after all).
        tasks = [asyncio.create_task(process_request(request, send))]
        if body.unread is None:
            tasks.insert(0, asyncio.create_task(self.listen_for_disconnect(receive)))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body.file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[-1].result()
        except asyncio.CancelledError:
            response = None
        await self.request_finished(response)
        body.file.close()


class LeanASGIHandler(GatewayASGIHandler):
    """A GatewayASGIHandler whose middleware chain is settings.API_MIDDLEWARE, and that takes no thread hop of its own.

    Django's handler sends request_started and request_finished, whose receivers are sync (they close the thread's
    database connections), and closes the response in a thread: each is a hop through a thread that asgiref starts
    per request. On the API path no database connection lives on the event loop's thread (gateway_project.db_steps
    hands each back at the end of its step), so there is nothing for them to close.
    """

    def load_middleware(self, is_async=False):
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full

    def body_limit(self, path: str) -> int:
        return body_limits.api_limit(path)

    async def request_started(self, scope) -> None:
        pass

    async def request_finished(self, response) -> None:
        pass


api_application = LeanASGIHandler()
site_application = GatewayASGIHandler()


def is_api_path(path: str) -> bool:
    return path.startswith(settings.API_PATH_PREFIXES) or path in settings.API_PATHS


async def application(scope, receive, send):
    if scope["type"] == "http" and is_api_path(scope["path"]):
        return await api_application(scope, receive, send)
    return await site_application(scope, receive, send)
