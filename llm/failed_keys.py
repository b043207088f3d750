"""Failed API keys per client address: past a limit, their refusals are counted together in one audit row a minute.

Every attempt on a generation endpoint leaves an audit row, refusals included; unchecked, a client without any key
could make the gateway write hundreds of rows a second. So each refusal of a key (none, malformed, unknown, revoked,
expired) is counted per client address (gateway_project.throttling.client_address) in fixed one-minute windows
in the cache (Redis: every process counts together). The first FAILED_KEYS_PER_MINUTE refusals keep a row each.
Past them, every further refusal from that address is answered 429 auth_throttled and counted in the one row of
its address and minute: `repeat_count` says how many requests that row stands for. A valid key from the same address
is served as usual: a client sharing an address (a NAT, an office proxy) with a misconfigured or hostile one is not
shut out. The key is still looked up (one indexed read); what a flood no longer costs is a row per request.

A throttled request is answered only once it is counted in that row, so the rows' counts add up to the requests
answered. The requests of one address that one process throttles within LINGER_SECONDS are counted by one UPDATE:
however many an address sends, it costs each process at most 1 / LINGER_SECONDS writes a second.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import ExpressionWrapper, F, FloatField, Value
from django.utils import timezone

from gateway_project.db_steps import db_step
from gateway_project.conditions import Condition
from gateway_project.throttling import client_address
from llm import metrics
from llm.errors import AuditUnavailable, AuthThrottled
from llm.models import Generation

logger = logging.getLogger("llm.failed_keys")
# Expected while the cache is down: one warning when it begins, one info line when it ends.
CACHE_DOWN = Condition(logger, "failed_keys_cache_unavailable")

WINDOW_SECONDS = 60
LINGER_SECONDS = 0.1
# The row of an address and a minute has an id computed from both, so that every process finds the same row.
ROW_NAMESPACE = uuid.UUID("5b0d8a52-3a55-4a0c-9d83-8f4f1b7c2e61")


def _window(now: float) -> int:
    return math.floor(now / WINDOW_SECONDS) * WINDOW_SECONDS


def _counter(address: str, window: int) -> str:
    return f"llm:failed-keys:{address}:{window}"


def count_refusal(client_ip: str | None) -> None:
    """Count one refused key against the address, in this minute's window; AuthThrottled once past the limit."""
    limit = settings.FAILED_KEYS_PER_MINUTE
    if not limit:
        return
    now = time.time()
    window = _window(now)
    key = _counter(client_address(client_ip), window)
    try:
        # add() creates the counter only if it is missing and incr() is atomic (INCR in Redis).
        if cache.add(key, 1, timeout=WINDOW_SECONDS + 5):
            refused = 1
        else:
            try:
                refused = cache.incr(key)
            except ValueError:  # expired between add() and incr()
                cache.add(key, 1, timeout=WINDOW_SECONDS + 5)
                refused = 1
    except Exception as exc:  # noqa: BLE001 - each cache backend raises its own errors
        # Open, as the rate limit: each refusal then keeps a row of its own, as without the throttle.
        CACHE_DOWN.occurred("failed keys not throttled: the cache is unavailable; each refusal keeps a row of its "
                            "own until it answers", error=f"{exc.__class__.__name__}: {exc}")
        return
    CACHE_DOWN.cleared("failed keys throttled again: the cache answers")
    if refused > limit:
        retry_after = max(1, math.ceil(window + WINDOW_SECONDS - now))
        raise AuthThrottled(
            f"Too many requests with a missing or invalid API key from this address (more than {limit} a minute), "
            f"this one included. Requests with a valid key are served as usual; retry after {retry_after}s.",
            retry_after=retry_after)


@dataclass
class _Batch:
    """Throttled requests of one address and minute, in this process, not written yet."""

    row: Generation  # the first one's: inserted if the minute has no row yet
    written: asyncio.Future
    count: int = 0
    latency_ms: float = 0.0  # summed
    last: datetime = field(default_factory=timezone.now)


# event loop -> {(address, window): the batch collecting its requests}
_batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def record(row: Generation, error: AuthThrottled, *, latency_ms: float) -> None:
    """Count one throttled request (its unsaved row) in the row of its address and minute; return once written.

    Raises AuditUnavailable if that row cannot be written.
    """
    row.status, row.http_status, row.error_type = Generation.Status.FAILED, error.status, error.type
    row.error_message, row.latency_ms, row.finished_at = error.staff_message, latency_ms, timezone.now()
    # Each request is observed on its own: the metrics count requests, not rows.
    metrics.observe_generation(row, dialect=row.dialect)
    loop = asyncio.get_running_loop()
    batches = _batches.setdefault(loop, {})
    key = (client_address(row.client_ip), _window(time.time()))
    batch = batches.get(key)
    if batch is None:
        batch = batches[key] = _Batch(row=row, written=loop.create_future())
        loop.create_task(_flush(batches, key, batch))
    batch.count += 1
    batch.latency_ms += latency_ms
    batch.last = row.finished_at
    # Shielded: a client that leaves meanwhile is still counted, by the flush that runs for everyone.
    await asyncio.shield(batch.written)


async def _flush(batches: dict, key: tuple[str, int], batch: _Batch) -> None:
    await asyncio.sleep(LINGER_SECONDS)
    del batches[key]  # from here on, a request of this address opens the next batch
    try:
        await db_step(_write, key, batch.row, batch.count, batch.latency_ms, batch.last)
    except DatabaseError as exc:
        logger.error("throttled requests not recorded", extra={"client_address": key[0], "requests": batch.count,
                                                               "error": str(exc)})
        metrics.audit_write_failed("insert")
        batch.written.set_exception(AuditUnavailable("The audit log cannot be written. Try again later."))
        batch.written.exception()  # retrieved here too: every waiter may have gone
    except BaseException as exc:
        batch.written.set_exception(exc)
        batch.written.exception()
        raise
    else:
        batch.written.set_result(None)


def _write(key: tuple[str, int], first: Generation, count: int, latency_ms: float, last: datetime) -> None:
    """Add `count` requests to the row of the address and minute, inserting it (from `first`) if there is none."""
    address, window = key
    row_id = uuid.uuid5(ROW_NAMESPACE, f"{address}/{window}")
    if _add(row_id, count, latency_ms, last):
        return
    first.id, first.repeat_count = row_id, count
    first.latency_ms, first.finished_at = round(latency_ms / count, 2), last
    try:
        with transaction.atomic():
            first.save(force_insert=True)
    except IntegrityError:
        # Another process inserted it meanwhile.
        _add(row_id, count, latency_ms, last)


def _add(row_id: uuid.UUID, count: int, latency_ms: float, last: datetime) -> bool:
    # latency_ms stays the mean of the requests counted, so that the rollup's latency sums stay right.
    mean = ExpressionWrapper((F("latency_ms") * F("repeat_count") + Value(latency_ms)) / (F("repeat_count") + count),
                             output_field=FloatField())
    return bool(Generation.objects.filter(pk=row_id).update(repeat_count=F("repeat_count") + count, latency_ms=mean,
                                                           finished_at=last))
