"""Failed attempts counted per client address or per user name in the Django cache, and the delay they earn.

No lockout: the first FREE_FAILURES failures cost nothing, then each one doubles the wait before the next attempt
is heard (1 s, 2 s, 4 s, …) up to a cap; the counts are forgotten an hour after the last failure. The counts live
in the cache (CACHE_URL: Redis in production), so every gateway process applies the same delay. An unreachable
cache delays nobody: the cost of that is bounded elsewhere (one password hash at a time per process).

The client address is REMOTE_ADDR, which uvicorn resolves: behind a proxy listed in FORWARDED_ALLOW_IPS it is the
client that proxy names in X-Forwarded-For, otherwise the peer of the connection. A client cannot forge it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from dataclasses import dataclass

from django.core.cache import cache

from gateway_project.conditions import Condition

logger = logging.getLogger("gateway.throttling")

# Typing mistakes, a password manager trying an old entry: not worth a delay yet.
FREE_FAILURES = 5
FORGET_AFTER_SECONDS = 3600
UNKNOWN_ADDRESS = "unknown"
# Expected while the cache is down: one warning when it begins, one info line when it ends.
CACHE_DOWN = Condition(logger, "throttle_cache_unavailable")


def now() -> float:
    """Wall-clock seconds: the cache is shared by processes, and maybe hosts, so monotonic clocks will not do."""
    return time.time()


def client_address(remote_addr: str | None) -> str:
    """The address a client is counted under: its IPv4 address, or its IPv6 /64 (what one host is given)."""
    if not remote_addr:
        return UNKNOWN_ADDRESS
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return remote_addr[:64]
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def subject(kind: str, value: str) -> str:
    """A cache-safe name for what failures are counted against: kind "address" or "user" and its value."""
    # Hashed: a user name is anything a client sends, and cache keys must be short and plain.
    return f"{kind}:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


@dataclass(frozen=True)
class Failures:
    """Failures of one subject since it was last quiet for an hour: how many, and when the last one was."""

    count: int = 0
    last: float = 0.0

    def delay(self, max_delay: float) -> float:
        if self.count < FREE_FAILURES:
            return 0.0
        return min(2.0 ** (self.count - FREE_FAILURES), max_delay)

    def wait(self, now: float, max_delay: float) -> float:
        """Seconds from now until a further attempt is heard (0: at once)."""
        return max(0.0, self.last + self.delay(max_delay) - now)


def _count_key(name: str, prefix: str) -> str:
    return f"{prefix}:fail:{name}"


def _last_key(name: str, prefix: str) -> str:
    return f"{prefix}:fail-at:{name}"


def failures(names: list[str], *, prefix: str) -> dict[str, Failures]:
    """The failures of each subject, read in one round trip; {} when the cache cannot be read."""
    keys = [key for name in names for key in (_count_key(name, prefix), _last_key(name, prefix))]
    try:
        found = cache.get_many(keys)
    except Exception as exc:  # noqa: BLE001 - each cache backend raises its own errors
        _cache_unavailable(exc)
        return {}
    _cache_answered()
    return {name: Failures(int(found.get(_count_key(name, prefix)) or 0),
                           float(found.get(_last_key(name, prefix)) or 0.0)) for name in names}


def record_failure(names: list[str], *, prefix: str) -> None:
    """Count one more failure against each subject, atomically (several processes may count at once)."""
    moment = now()
    try:
        for name in names:
            key = _count_key(name, prefix)
            # add() creates the counter only if it is missing and incr() is atomic (INCR in Redis).
            if not cache.add(key, 1, timeout=FORGET_AFTER_SECONDS):
                try:
                    cache.incr(key)
                except ValueError:  # expired between add() and incr()
                    cache.add(key, 1, timeout=FORGET_AFTER_SECONDS)
                cache.touch(key, FORGET_AFTER_SECONDS)  # forgotten an hour after the last failure, not the first
            cache.set(_last_key(name, prefix), moment, timeout=FORGET_AFTER_SECONDS)
    except Exception as exc:  # noqa: BLE001
        _cache_unavailable(exc)


def forget(names: list[str], *, prefix: str) -> None:
    try:
        cache.delete_many([key for name in names for key in (_count_key(name, prefix), _last_key(name, prefix))])
    except Exception as exc:  # noqa: BLE001
        _cache_unavailable(exc)


def mark(key: str, *, seconds: int) -> None:
    """Remember a fact (e.g. "this user signed in from this address") for a while; best effort."""
    try:
        cache.set(key, 1, timeout=seconds)
    except Exception as exc:  # noqa: BLE001
        _cache_unavailable(exc)


def marked(key: str) -> bool:
    try:
        return bool(cache.get(key))
    except Exception as exc:  # noqa: BLE001
        _cache_unavailable(exc)
        return False


def _cache_unavailable(exc: Exception) -> None:
    CACHE_DOWN.occurred("failed attempts not counted: the cache is unavailable; nobody is delayed until it answers",
                        error=f"{exc.__class__.__name__}: {exc}")


def _cache_answered() -> None:
    CACHE_DOWN.cleared("failed attempts counted again: the cache answers")
