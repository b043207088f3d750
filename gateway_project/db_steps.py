"""Database work on the async request path: each step is one plain function run in a small bounded thread pool.

The event loop never waits on the database, and no database connection is held while a request waits for Ollama:
a step takes a connection (from Django's psycopg pool on PostgreSQL), does its queries and hands it back. With
DATABASE_POOL_SIZE - 1 threads (one connection is left to the sync views) the number of connections per process
stays at DATABASE_POOL_SIZE, however many requests are in flight. SQLite keeps one open connection per thread (reopening a WAL database costs ~2.5 ms), with at most two
threads (settings.DB_STEP_THREADS).
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=settings.DB_STEP_THREADS, thread_name_prefix="db-step")
    return _executor


async def db_step(fn, /, *args, **kwargs):
    """Run fn(*args, **kwargs), a function that uses the ORM, off the event loop; its result or its exception."""
    call = functools.partial(_run_step, fn, args, kwargs)
    if settings.DB_STEPS_IN_CALLER_THREAD:
        # Tests: the test client drives the async view from the test's own thread, whose connection holds the
        # test's transaction; thread_sensitive runs the step there. Servers started by tests use the pool.
        return await sync_to_async(call, thread_sensitive=True)()
    return await asyncio.get_running_loop().run_in_executor(executor(), call)


def _run_step(fn, args, kwargs):
    try:
        return fn(*args, **kwargs)
    finally:
        release_connections()


def release_connections() -> None:
    """Give this thread's pooled connections back (and drop failed ones); also before a sync view waits long."""
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue  # a test's transaction: never ended by a step
        if connection.settings_dict.get("OPTIONS", {}).get("pool") or connection.errors_occurred:
            # Back to the pool; a connection that failed is dropped so the next step opens a good one.
            connection.close()
