"""Leases on named counters with a capacity: at most `capacity` holders of a key at once, across processes.

A lease is one slot of a key (e.g. one generation of model M on server S, or one of a consumer's `max_concurrent`
generations). `await manager.acquire(key, capacity)` takes a slot now or answers None; `await lease.release()`
gives it back. A lease expires `ttl` seconds after its last renewal, so a crashed process does not keep its slots:
a background task of the process renews every lease it holds every `renew_every` seconds.

With Redis (CACHE_URL=redis://...) every process shares the counts: a key is a sorted set of lease ids scored by
their expiry, in Redis's own clock; one Lua script prunes the expired ids, counts and adds, atomically. Without
Redis, or while Redis does not answer, the counts are per process (the same rules, in memory); the outage is
logged once when it begins and once when it ends (gateway_project.conditions), and Redis is tried again after a
few seconds, not on every call.

A waiter learns of a free slot promptly with `wait_for_slot()`: a release in this process wakes it at once, one in
another process within `poll` seconds (50 ms).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from dataclasses import dataclass, field

from gateway_project.conditions import Condition

logger = logging.getLogger("llm.leases")
REDIS_DOWN = Condition(logger, "lease_store_unavailable")

TTL = 30.0
RENEW_EVERY = 10.0
POLL = 0.05
# After Redis failed to answer, leases are counted in this process for this long before Redis is asked again.
RETRY_REDIS_AFTER = 5.0
REDIS_TIMEOUT = 0.5

# KEYS[1]: the key; ARGV: ttl in ms, capacity, lease id. Times are Redis's own clock (in ms), so that processes on
# several hosts agree on what has expired. Answers 1 if the lease was taken, 0 if the key is full.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""
# KEYS: the keys; ARGV[1]: ttl in ms, then one lease id per key. Extends each lease still present (XX: an expired,
# pruned lease is not brought back); answers how many were extended.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local n = 0
for i, key in ipairs(KEYS) do
  n = n + redis.call('ZADD', key, 'XX', 'CH', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return n
"""
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


@dataclass(eq=False)
class Lease:
    """One slot of `key`, held until released (or until it expires, if its process stops renewing it)."""

    manager: LeaseManager
    key: str
    id: str
    shared: bool  # held in Redis (True) or in this process's memory (False)
    released: bool = field(default=False)

    async def release(self) -> None:
        """Give the slot back (idempotent). Wakes this process's waiters at once."""
        if self.released:
            return
        self.released = True
        await self.manager._release(self)

    async def renew(self) -> None:
        """Extend the lease by the manager's ttl now (the background renewal does this every `renew_every`)."""
        if not self.released:
            await self.manager._renew([self])

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.release()


class LeaseManager:
    """The leases of one process (one per purpose: its own key prefix)."""

    def __init__(self, redis_url: str | None = None, *, prefix: str = "llm:lease:", ttl: float = TTL,
                 renew_every: float = RENEW_EVERY, poll: float = POLL):
        self.redis_url = redis_url
        self.prefix = prefix
        self.ttl = ttl
        self.renew_every = renew_every
        self.poll = poll
        # In-memory leases: key -> {lease id: expiry (monotonic)}; used without Redis or while it is down.
        self._local: dict[str, dict[str, float]] = {}
        # Renewed while held. Weakly: a lease its holder dropped without releasing (a bug, a task torn down) is no
        # longer renewed, and expires within ttl instead of keeping its slot for ever.
        self._held: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._redis_failed_at: float | None = None
        # Per event loop (a Redis asyncio client and the waiters' wake-up are bound to the loop that made them).
        self._loop_state: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- public API ------------------------------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether counts are shared between processes right now (Redis configured and answering)."""
        return self.redis_url is not None and self._redis_failed_at is None

    async def acquire(self, key: str, capacity: int) -> Lease | None:
        """A slot of `key` now, or None if `capacity` leases are held already (a capacity <= 0 means no slot)."""
        if capacity <= 0:
            return None
        lease_id = uuid.uuid4().hex
        client = self._client()
        if client is not None:
            try:
                taken = await client.eval(_ACQUIRE, 1, self.prefix + key, int(self.ttl * 1000), int(capacity),
                                          lease_id)
            except Exception as exc:  # noqa: BLE001 - redis raises ConnectionError, TimeoutError, ResponseError...
                self._redis_down(exc)
            else:
                self._redis_up()
                return self._hold(Lease(self, key, lease_id, shared=True)) if taken else None
        return self._acquire_local(key, capacity, lease_id)

    async def count(self, key: str) -> int:
        """Leases of `key` held now (expired ones not counted)."""
        client = self._client()
        if client is not None:
            try:
                count = int(await client.eval(_COUNT, 1, self.prefix + key))
            except Exception as exc:  # noqa: BLE001
                self._redis_down(exc)
            else:
                self._redis_up()
                return count
        return len(self._prune_local(key))

    async def wait_for_slot(self, key: str, capacity: int, timeout: float) -> Lease | None:
        """A slot of `key` as soon as one is free, or None after `timeout` seconds. Arrival order is not kept: a
        caller that needs an order (fairness) keeps its own queue and lets one waiter at a time call this."""
        deadline = time.monotonic() + timeout
        while True:
            lease = await self.acquire(key, capacity)
            if lease is not None:
                return lease
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await self.released_somewhere(min(self.poll, remaining))

    async def released_somewhere(self, timeout: float) -> None:
        """Return when a lease of this manager is released in this process, or after `timeout` (releases in other
        processes are seen by the caller's next try; `poll` is how long to wait for them)."""
        event = self._state()["released"]
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    def held(self) -> int:
        """Leases this process holds (not released)."""
        return sum(1 for lease in list(self._held) if not lease.released)

    async def close(self) -> None:
        """Stop the renewal and close this loop's Redis client (tests; a process just exits)."""
        state = self._loop_state.pop(asyncio.get_running_loop(), None)
        if state is None:
            return
        task = state.get("renewer")
        if task is not None:
            task.cancel()
        client = state.get("client")
        if client is not None:
            await client.aclose()

    # -- internals -------------------------------------------------------------------------------------------------

    def _state(self) -> dict:
        loop = asyncio.get_running_loop()
        state = self._loop_state.get(loop)
        if state is None:
            state = {"released": asyncio.Event(), "client": None, "renewer": None}
            self._loop_state[loop] = state
        return state

    def _client(self):
        if self.redis_url is None:
            return None
        if self._redis_failed_at is not None and time.monotonic() - self._redis_failed_at < RETRY_REDIS_AFTER:
            return None
        state = self._state()
        if state["client"] is None:
            import redis.asyncio

            state["client"] = redis.asyncio.Redis.from_url(
                self.redis_url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
        return state["client"]

    def _redis_down(self, exc: BaseException) -> None:
        self._redis_failed_at = time.monotonic()
        REDIS_DOWN.occurred("leases counted per process: Redis does not answer; it is asked again every "
                            f"{RETRY_REDIS_AFTER:g}s", error=exc.__class__.__name__)

    def _redis_up(self) -> None:
        self._redis_failed_at = None
        REDIS_DOWN.cleared("leases shared through Redis again")

    def _hold(self, lease: Lease) -> Lease:
        self._held.add(lease)
        state = self._state()
        if state["renewer"] is None or state["renewer"].done():
            state["renewer"] = asyncio.get_running_loop().create_task(self._renew_forever(),
                                                                      name="lease-renewal")
        return lease

    def _prune_local(self, key: str) -> dict[str, float]:
        leases = self._local.setdefault(key, {})
        now = time.monotonic()
        for lease_id in [lid for lid, expiry in leases.items() if expiry <= now]:
            del leases[lease_id]
        return leases

    def _acquire_local(self, key: str, capacity: int, lease_id: str) -> Lease | None:
        leases = self._prune_local(key)
        if len(leases) >= capacity:
            return None
        leases[lease_id] = time.monotonic() + self.ttl
        return self._hold(Lease(self, key, lease_id, shared=False))

    async def _release(self, lease: Lease) -> None:
        self._held.discard(lease)
        try:
            if lease.shared:
                client = self._state()["client"] or self._client()
                if client is not None:
                    try:
                        await client.zrem(self.prefix + lease.key, lease.id)
                    except Exception as exc:  # noqa: BLE001 - it expires by itself within ttl
                        self._redis_down(exc)
            else:
                self._local.get(lease.key, {}).pop(lease.id, None)
        finally:
            event = self._state()["released"]
            event.set()
            event.clear()

    async def _renew(self, leases: list[Lease]) -> None:
        local = [lease for lease in leases if not lease.shared and not lease.released]
        expiry = time.monotonic() + self.ttl
        for lease in local:
            if lease.id in self._local.get(lease.key, {}):
                self._local[lease.key][lease.id] = expiry
        shared = [lease for lease in leases if lease.shared and not lease.released]
        if not shared:
            return
        client = self._state()["client"] or self._client()
        if client is None:
            return
        try:
            await client.eval(_RENEW, len(shared), *[self.prefix + lease.key for lease in shared],
                              int(self.ttl * 1000), *[lease.id for lease in shared])
        except Exception as exc:  # noqa: BLE001 - the leases expire unless a later renewal gets through
            self._redis_down(exc)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            held = [lease for lease in list(self._held) if not lease.released]
            if not held:
                continue
            try:
                await self._renew(held)
            except Exception:  # noqa: BLE001 - never let the renewal die; the next round tries again
                logger.warning("lease renewal failed", exc_info=True)


def redis_url_from_settings() -> str | None:
    """The Redis URL of CACHE_URL, or None when the cache is not Redis."""
    from django.conf import settings

    cache = settings.CACHES.get("default", {})
    if cache.get("BACKEND") != "django.core.cache.backends.redis.RedisCache":
        return None
    location = cache.get("LOCATION")
    if isinstance(location, (list, tuple)):
        location = location[0] if location else None
    return location or None
