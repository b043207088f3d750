"""Reading a request's body from ASGI: never past its path's limit, never longer than REQUEST_BODY_TIMEOUT.

Django's ASGIHandler reads every body whole, however large and however slowly it comes (spooled to a temporary
file past FILE_UPLOAD_MAX_MEMORY_SIZE), before any view or middleware can refuse it. The gateway's handlers
(gateway_project.asgi) read through here instead. A body that is not read to its end is described by an Unread,
which the request carries as `request.unread_body`: llm.body_limits answers it in the path's own error shape (the
generation endpoints hand it to the use case, which records it).
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import RequestAborted

TOO_LARGE = "too_large"
TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class Unread:
    """Why a body was not read to its end: over `limit` (TOO_LARGE) or not complete within the timeout (TIMED_OUT).

    `size` is what the client declared in Content-Length when it was refused on that alone, else the bytes that
    had arrived when reading stopped. `declared` says which.
    """

    reason: str
    size: int
    limit: int | None
    declared: bool = False


@dataclass
class Body:
    file: io.IOBase
    unread: Unread | None = None


def declared_length(scope) -> int | None:
    """The request's Content-Length, or None (chunked, or no body). The HTTP server has refused a malformed one."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read(scope, receive, *, limit: int | None) -> Body:
    """The body, up to `limit` bytes (None: no limit) and within REQUEST_BODY_TIMEOUT; RequestAborted if the client
    leaves first.

    A Content-Length over the limit is refused before a byte is read; a chunked body is read to one chunk past
    the limit at most, and none of it is kept.
    """
    declared = declared_length(scope)
    if limit is not None and declared is not None and declared > limit:
        return Body(io.BytesIO(), Unread(TOO_LARGE, declared, limit, declared=True))
    # As Django's read_body: in memory, on disk past FILE_UPLOAD_MAX_MEMORY_SIZE (bounded by the limit).
    file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
    received = 0
    try:
        async with asyncio.timeout(settings.REQUEST_BODY_TIMEOUT):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestAborted()
                chunk = message.get("body", b"")
                received += len(chunk)
                if limit is not None and received > limit:
                    file.close()
                    return Body(io.BytesIO(), Unread(TOO_LARGE, received, limit))
                file.write(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        file.close()
        return Body(io.BytesIO(), Unread(TIMED_OUT, received, limit))
    except BaseException:
        file.close()
        raise
    file.seek(0)
    return Body(file)
