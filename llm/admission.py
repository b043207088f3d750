"""Who may call the provider now: the cap on upstream calls (per process), each consumer's cap on generations in
flight, and the end of a worker's life (draining on SIGTERM).

A consumer's cap holds across every gateway process when the cache is Redis: each generation holds a lease
(llm.leases) that its process renews, so the slots of a process that dies come back within the lease's lifetime
(LEASE_TTL, 30 s). Without Redis it holds per process: N gateway processes admit up to N times as many.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import weakref
from contextlib import asynccontextmanager

from django.conf import settings
from django.core.cache import cache

from llm import leases
from llm.errors import RateLimited, UpstreamBusy

logger = logging.getLogger("llm.admission")

_upstream: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> asyncio.Semaphore
# How long the request in this context waited for its UPSTREAM_MAX_IN_FLIGHT slot (see queue_time_left()).
_waited_for_cap: contextvars.ContextVar[float] = contextvars.ContextVar("waited_for_upstream_cap", default=0.0)


def queue_time_left() -> float:
    """What is left of UPSTREAM_QUEUE_TIMEOUT for a wait of this request's: one timeout covers both its wait for
    the process's cap and its wait for a server's slot (llm.servers), not one each."""
    return max(0.0, settings.UPSTREAM_QUEUE_TIMEOUT - _waited_for_cap.get())


@asynccontextmanager
async def upstream_slot():
    """Hold one of the UPSTREAM_MAX_IN_FLIGHT slots; UpstreamBusy after UPSTREAM_QUEUE_TIMEOUT without one."""
    limit = settings.UPSTREAM_MAX_IN_FLIGHT
    if not limit:
        yield
        return
    loop = asyncio.get_running_loop()
    semaphore = _upstream.get(loop)
    if semaphore is None or semaphore.limit != limit:
        semaphore = _upstream[loop] = _Semaphore(limit)
    waited = time.perf_counter()
    try:
        async with asyncio.timeout(settings.UPSTREAM_QUEUE_TIMEOUT):
            await semaphore.acquire()
    except TimeoutError:
        raise UpstreamBusy(
            f"This gateway process already has {limit} calls to the model running (UPSTREAM_MAX_IN_FLIGHT) and "
            f"none finished within {settings.UPSTREAM_QUEUE_TIMEOUT:g}s (UPSTREAM_QUEUE_TIMEOUT). Try again later."
        ) from None
    waited = time.perf_counter() - waited
    if waited > 0.001:
        logger.debug("waited for an upstream slot", extra={"waited_ms": round(waited * 1000)})
    token = _waited_for_cap.set(waited)
    try:
        yield
    finally:
        try:
            _waited_for_cap.reset(token)
        except ValueError:
            pass  # a stream's slot is given back by the task that drives its response, in a context of its own
        semaphore.release()


class _Semaphore(asyncio.Semaphore):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


_consumer_lock = threading.Lock()
_consumer_in_flight: dict[int, int] = {}


def concurrency_cap(consumer) -> tuple[int, str]:
    """The consumer's cap on generations in flight (0: none) and where it comes from, for messages."""
    if consumer.max_concurrent is not None:
        return consumer.max_concurrent, "max_concurrent"
    return settings.DEFAULT_MAX_CONCURRENT, "DEFAULT_MAX_CONCURRENT"


def take_consumer_slot(consumer) -> None:
    """Count one generation in flight for the consumer; RateLimited (429) when it already has its cap running.

    Without a cap of its own a consumer has DEFAULT_MAX_CONCURRENT, so that no single one can hold every upstream
    slot. Called from a database step's thread; release_consumer_slot() gives the slot back.
    """
    cap, named = concurrency_cap(consumer)
    with _consumer_lock:
        running = _consumer_in_flight.get(consumer.pk, 0)
        if cap and running >= cap:
            raise RateLimited(
                f"Consumer {consumer.name!r} already has {running} generations in flight, its cap "
                f"({named}={cap}) on this gateway process. Retry when one has finished.",
                retry_after=1,
            )
        _consumer_in_flight[consumer.pk] = running + 1


# The consumer slots' leases: their lifetime and renewal (tests shorten them).
LEASE_TTL = leases.TTL
LEASE_RENEW_EVERY = leases.RENEW_EVERY
_lease_managers: dict[tuple, leases.LeaseManager] = {}


def caps_shared() -> bool:
    """Whether consumers' caps hold across processes: the cache is Redis (then the per-process count is not used)."""
    return leases.redis_url_from_settings() is not None


def _consumer_leases() -> leases.LeaseManager:
    url = leases.redis_url_from_settings()
    # Under the cache's own KEY_PREFIX: two deployments (or two tests) sharing one Redis do not share caps.
    prefix = cache.make_key("llm:consumer-slots:")
    key = (url, prefix, LEASE_TTL, LEASE_RENEW_EVERY)
    manager = _lease_managers.get(key)
    if manager is None:
        manager = _lease_managers[key] = leases.LeaseManager(url, prefix=prefix, ttl=LEASE_TTL,
                                                             renew_every=LEASE_RENEW_EVERY)
    return manager


async def take_shared_consumer_slot(consumer) -> leases.Lease | None:
    """A lease on one of the consumer's slots, shared by every process (None: it has no cap); RateLimited when it
    already has its cap running anywhere. Give it back with `await lease.release()`."""
    cap, named = concurrency_cap(consumer)
    if not cap:
        return None
    lease = await _consumer_leases().acquire(str(consumer.pk), cap)
    if lease is None:
        raise RateLimited(
            f"Consumer {consumer.name!r} already has {cap} generations in flight, its cap ({named}={cap}) across "
            "the gateway's processes. Retry when one has finished.",
            retry_after=1,
        )
    return lease


def release_consumer_slot(consumer_id: int) -> None:
    with _consumer_lock:
        running = _consumer_in_flight.get(consumer_id, 0) - 1
        if running > 0:
            _consumer_in_flight[consumer_id] = running
        else:
            _consumer_in_flight.pop(consumer_id, None)


# The worker's end of life: the tasks that run a generation, so that those still running when the grace period
# is over can be ended with an error and a completed audit row instead of being killed mid-way.
_generations: set[asyncio.Task] = set()
_draining = threading.Event()
_ending = threading.Event()


def draining() -> bool:
    """True once this process has been told to stop: /readyz answers 503 so the load balancer moves on."""
    return _draining.is_set()


def ending() -> bool:
    """True once the grace period is over and the remaining generations are being ended."""
    return _ending.is_set()


def register(task: asyncio.Task) -> None:
    _generations.add(task)


def unregister(task: asyncio.Task) -> None:
    _generations.discard(task)


def in_flight() -> int:
    return len(_generations)


async def drain(grace: float, *, settle: float = 10.0) -> None:
    """Let generations in flight finish for up to `grace` seconds, then end the rest and wait for their rows."""
    _draining.set()
    deadline = time.monotonic() + grace
    if _generations:
        logger.info("draining: waiting for generations in flight", extra={"in_flight": len(_generations),
                                                                            "grace_seconds": grace})
    while _generations and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if not _generations:
        return
    _ending.set()
    logger.warning("grace period over: ending generations in flight", extra={"in_flight": len(_generations)})
    for task in list(_generations):
        task.cancel()
    deadline = time.monotonic() + settle
    while _generations and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

