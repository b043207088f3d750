"""Per-consumer rate limits: a fixed-window counter per consumer in the Django cache.

The cache (CACHE_URL) is shared by every gateway process when it is Redis, so the limit holds for the whole
deployment; with the local-memory default it holds per process.
"""

from __future__ import annotations

import logging
import math
import time

from django.conf import settings
from django.core.cache import cache

from gateway_project.conditions import Condition
from llm.errors import RateLimited
from llm.models import Consumer

logger = logging.getLogger("llm.rate_limits")
# An unreachable cache is met by every request while it lasts: logged when it begins and when it ends.
CACHE_DOWN = Condition(logger, "cache_unavailable")


def limit_for(consumer: Consumer) -> int:
    """Generations per window the consumer may start; 0 means unlimited."""
    if consumer.rate_limit_per_minute is not None:
        return consumer.rate_limit_per_minute
    return settings.RATE_LIMIT_PER_MINUTE


def count_request(consumer: Consumer) -> str | None:
    """Count one request against the consumer's limit; raise RateLimited (with Retry-After) when it is over.

    Returns the counter's key (None: nothing counted), for forgive().
    """
    limit = limit_for(consumer)
    if not limit:
        return None
    window = settings.RATE_LIMIT_WINDOW_SECONDS
    now = time.time()
    window_start = math.floor(now / window) * window
    key = f"llm:rate:{consumer.pk}:{window}:{window_start}"
    try:
        count = _increment(key, timeout=window + 5)
    except Exception as exc:  # noqa: BLE001 - each cache backend raises its own errors (redis.ConnectionError, ...)
        # Fail open: an unreachable cache must not take the whole API down with it. Logged, and so alertable.
        CACHE_DOWN.occurred("rate limits not enforced: the cache is unavailable; requests are let through until "
                            "it answers", consumer=consumer.name, error=f"{exc.__class__.__name__}: {exc}")
        return None
    CACHE_DOWN.cleared("rate limits enforced again: the cache answers")
    if count > limit:
        retry_after = max(1, math.ceil(window_start + window - now))
        raise RateLimited(
            f"Rate limit of {limit} generations per {_window_text(window)} exceeded for consumer "
            f"{consumer.name!r}; retry after {retry_after}s.",
            retry_after=retry_after,
        )
    return key


def forgive(key: str | None) -> None:
    """Take back one request counted under key: one refused for a reason that must not use up the allowance (its
    token budget is spent)."""
    if key is None:
        return
    try:
        cache.decr(key)
    except Exception:  # noqa: BLE001 - expired meanwhile (ValueError), or the cache is down: nothing to take back
        pass


def _increment(key: str, *, timeout: int) -> int:
    """Add one to the counter under key, creating it if needed; the new count."""
    # add() creates the counter only if it is missing and incr() is atomic (INCR in Redis), so concurrent
    # requests from several processes are each counted exactly once.
    if cache.add(key, 1, timeout=timeout):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between add() and incr(): this request opens the counter again
        cache.add(key, 1, timeout=timeout)
        return 1


def _window_text(seconds: int) -> str:
    return "minute" if seconds == 60 else f"{seconds}s"
