"""Several Ollama servers behind one gateway: a pool over one OllamaProvider per server.

The servers listed in the admin (llm.models.OllamaServer) are read into `registry` at most every REFRESH_SECONDS,
inside database steps a request takes anyway (llm.services, llm.listings) or a page's own view: no request waits
on the database for them. With none listed, `get_provider()` gives OLLAMA_BASE_URL's provider exactly as before and
nothing here runs.

Per process: each server's health (consecutive failures, down after DOWN_AFTER, misconfigured on 401/403), what it
has (/api/tags) and has loaded (/api/ps), read by a poller thread with its own event loop (never by a request).
Shared through Redis when CACHE_URL is Redis: the slots, as leases (llm.leases) per (server, model) and per server.

Every call that reaches a server goes through `Pool.run()`: the choice of a server (have the model, healthy, not
draining; then the conversation's previous server, a server with the model loaded, the least loaded), the wait for
a slot in one fair queue per model (round robin across consumers), and failover before any byte.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import json
import logging
import random
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

from django.conf import settings

from llm import admission, metrics
from llm.errors import (GatewayError, ModelFailed, ModelNotFound, RateLimited, UpstreamBusy, UpstreamUnavailable)
from llm.leases import LeaseManager, redis_url_from_settings
from llm.model_access import canonical
from llm.models import masked_server_url
from llm.providers.base import GenerationRequest, ProviderReply
from llm.providers.ollama import SERVER_FAILURES, OllamaProvider

logger = logging.getLogger("llm.servers")

REFRESH_SECONDS = 2.0  # the admin's list re-read at most this often
PS_EVERY = 2.0  # /api/ps of each server (and the probe of a down one)
TAGS_EVERY = 30.0  # /api/tags and /api/version
POLL_CONNECT_TIMEOUT = 1.0
POLL_READ_TIMEOUT = 2.0
DOWN_AFTER = 3  # consecutive failures
AFFINITY_ENTRIES = 10_000  # conversations remembered per process
CATALOG_TIMEOUT = 5.0  # a listing's live reads


@dataclass(frozen=True, eq=False)
class ServerConfig:
    name: str
    base_url: str
    state: str  # enabled | draining | disabled
    slots: int = 1
    model_slots: dict = field(default_factory=dict)
    max_in_flight: int | None = None

    @property
    def shown_url(self) -> str:
        return masked_server_url(self.base_url)

    def slots_for(self, model: str) -> int:
        wanted = canonical(model)
        for name, slots in self.model_slots.items():
            if canonical(name) == wanted:
                return slots
        return self.slots

    def same(self, other: ServerConfig) -> bool:
        return (self.name, self.base_url, self.state, self.slots, self.model_slots, self.max_in_flight) == (
            other.name, other.base_url, other.state, other.slots, other.model_slots, other.max_in_flight)


class Registry:
    """The servers listed in the admin, as this process last read them."""

    def __init__(self):
        self.configs: tuple[ServerConfig, ...] = ()
        self.loaded_at: float | None = None
        self._lock = threading.Lock()

    @property
    def listed(self) -> bool:
        return bool(self.configs)

    def refresh_if_stale(self) -> None:
        """Re-read the list if it is older than REFRESH_SECONDS (one query; call it from a database step)."""
        loaded_at = self.loaded_at
        if loaded_at is None or time.monotonic() - loaded_at >= REFRESH_SECONDS:
            self.refresh()

    def refresh(self) -> None:
        from django.db import DatabaseError

        from llm.models import OllamaServer

        try:
            rows = list(OllamaServer.objects.order_by("name").values_list(
                "name", "base_url", "state", "slots", "model_slots", "max_in_flight"))
        except DatabaseError:
            # The step that called this meets the same database and says so; the last list read stays in use.
            logger.info("Ollama servers not re-read: the database did not answer")
            return
        configs = tuple(ServerConfig(name=n, base_url=u.rstrip("/"), state=s, slots=sl,
                                     model_slots=ms if isinstance(ms, dict) else {}, max_in_flight=mx)
                        for n, u, s, sl, ms, mx in rows)
        with self._lock:
            changed = len(configs) != len(self.configs) or any(
                not a.same(b) for a, b in zip(configs, self.configs))
            self.configs = configs
            self.loaded_at = time.monotonic()
        if changed:
            logger.info("Ollama servers: %s", ", ".join(f"{c.name} ({c.state})" for c in configs) or "none listed",
                        extra={"servers": [c.name for c in configs]})
            if configs:
                pool().configured()

    def forget(self) -> None:
        with self._lock:
            self.configs, self.loaded_at = (), None


registry = Registry()


class Health:
    """What this process knows of one server: up or down, what it has and has loaded, what it runs now."""

    def __init__(self, name: str):
        self.name = name
        self.failures = 0
        self.down = False
        self.misconfigured = False
        self.models: frozenset[str] | None = None  # None: never read (it may be tried for any model)
        self.tags: list[dict] = []
        self.loaded: frozenset[str] = frozenset()
        self.ps: list[dict] = []
        self.version: str = ""
        self.last_error = ""  # its type only, never a body
        self.last_seen: float | None = None  # time.time() of the last answer
        self.in_flight: collections.Counter[str] = collections.Counter()  # by model, this process
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.tags_due = 0.0  # monotonic
        self.ps_due = 0.0
        self._lock = threading.Lock()

    @property
    def usable(self) -> bool:
        return not self.down and not self.misconfigured

    @property
    def status(self) -> str:
        if self.misconfigured:
            return "misconfigured"
        if self.down:
            return "down"
        return "up" if self.last_seen is not None else "unknown"

    # The provider's observer: every generation's and probe's failure or answer.
    def failed(self, exc: GatewayError) -> None:
        with self._lock:
            self.last_error = exc.type if not getattr(exc, "upstream_status", None) else \
                f"{exc.type} (HTTP {exc.upstream_status})"
            if getattr(exc, "misconfigured", False):
                if not self.misconfigured:
                    logger.warning("Ollama server %s refuses the gateway (HTTP %s): not used until it answers",
                                   self.name, exc.upstream_status, extra={"server": self.name})
                self.misconfigured = True
                return
            if exc.type not in SERVER_FAILURES or isinstance(exc, ModelFailed):
                # A model's own 500 (it would not load on this box) says nothing of the server's other models.
                return
            self.failures += 1
            if self.failures >= DOWN_AFTER and not self.down:
                self.down = True
                logger.warning("Ollama server %s is down after %d consecutive failures (%s); probed every %gs",
                               self.name, self.failures, exc.type, PS_EVERY, extra={"server": self.name})

    def answered(self) -> None:
        with self._lock:
            came_back = self.down or self.misconfigured
            self.failures = 0
            self.down = self.misconfigured = False
            self.last_seen = time.time()
        if came_back:
            logger.info("Ollama server %s answers again", self.name, extra={"server": self.name})
            self.tags_due = self.ps_due = 0.0  # both read at once when a server comes back

    def lacks(self, model: str) -> None:
        """A call answered 404 for the model: not sent there again until /api/tags says otherwise."""
        if self.models is not None:
            self.models = self.models - {canonical(model)}


@dataclass(eq=False)
class _Waiter:
    consumer: Any
    event: asyncio.Event = field(default_factory=asyncio.Event)


class FairQueue:
    """The generations of one model waiting for a slot, in this process: served round robin across consumers, each
    consumer's own in arrival order, each consumer's queue bounded."""

    def __init__(self):
        self.by_consumer: dict[Any, collections.deque[_Waiter]] = {}
        self.turns: collections.deque = collections.deque()  # consumers with waiters, whose turn comes first

    def __len__(self) -> int:
        return sum(len(q) for q in self.by_consumer.values())

    def join(self, consumer, bound: int) -> _Waiter:
        queue = self.by_consumer.get(consumer)
        if queue is not None and bound and len(queue) >= bound:
            raise RateLimited(
                f"{len(queue)} of this consumer's generations already wait for this model "
                f"(UPSTREAM_QUEUE_PER_CONSUMER={bound}). Retry when some have finished.", retry_after=1)
        waiter = _Waiter(consumer)
        if queue is None:
            queue = self.by_consumer[consumer] = collections.deque()
            self.turns.append(consumer)
        queue.append(waiter)
        if self.head() is waiter:
            waiter.event.set()
        return waiter

    def head(self) -> _Waiter | None:
        return self.by_consumer[self.turns[0]][0] if self.turns else None

    def leave(self, waiter: _Waiter, *, served: bool) -> None:
        """Out of the queue: served (its consumer's turn passes to the next one) or given up."""
        was_head = self.head() is waiter
        queue = self.by_consumer.get(waiter.consumer)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self.by_consumer[waiter.consumer]
            self.turns.remove(waiter.consumer)
        elif served and self.turns and self.turns[0] == waiter.consumer:
            self.turns.rotate(-1)
        if was_head:
            self.wake()

    def wake(self) -> None:
        head = self.head()
        if head is not None:
            head.event.set()


class Slot:
    """A generation's place on a server: its leases (per model, and for the whole server if capped)."""

    def __init__(self, pool: Pool, server: ServerConfig, model: str, leases: list):
        self.pool, self.server, self.model, self.leases = pool, server, model, leases
        self.released = False
        pool.health_of(server.name).in_flight[model] += 1
        metrics.server_in_flight(server.name, 1)

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        health = self.pool.health_of(self.server.name)
        health.in_flight[self.model] -= 1
        if health.in_flight[self.model] <= 0:
            del health.in_flight[self.model]
        metrics.server_in_flight(self.server.name, -1)
        for lease in self.leases:
            try:
                await lease.release()
            except Exception:  # noqa: BLE001 - a lease not given back expires by itself
                logger.warning("slot lease not released", exc_info=True)
        self.pool.wake_queues()


class RouteState:
    """What one request's calls share: its retry budget, its consumer, and where its attempts are recorded."""

    def __init__(self, tried: list, consumer=None):
        self.tried = tried
        self.consumer = consumer
        self.retries_left = settings.OLLAMA_MAX_RETRIES
        self.server = ""  # the server that answered last


ROUTE: contextvars.ContextVar[RouteState | None] = contextvars.ContextVar("llm_route", default=None)


class PooledStream:
    """A stream from one server, holding its slot until it is closed."""

    def __init__(self, stream, slot: Slot, attempts: int):
        self._stream, self._slot = stream, slot
        self.attempts = attempts

    first = property(lambda self: self._stream.first)
    reply = property(lambda self: self._stream.reply)
    deltas_received = property(lambda self: self._stream.deltas_received)

    def __aiter__(self):
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            await self._slot.release()


class Pool:
    """The provider of a gateway with servers listed: OllamaProvider's interface over all of them."""

    name = "ollama"
    records_tries = True  # llm.routing lets it record its own attempts, one per server called

    def __init__(self):
        self._providers: dict[str, tuple[tuple, OllamaProvider]] = {}
        self._health: dict[str, Health] = {}
        self._leases: tuple[str | None, LeaseManager] | None = None
        self.lease_manager: LeaseManager | None = None  # a test's own (a key prefix of its own)
        self._queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {model: FairQueue}
        self._affinity: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._poller: Poller | None = None
        self._lock = threading.Lock()

    # -- state ----------------------------------------------------------------------------------------------------

    def configured(self) -> None:
        """The list changed (or was read first): start polling."""
        if settings.GENERATOR_MODE == "live":
            self.poller().start()

    def poller(self) -> Poller:
        with self._lock:
            if self._poller is None:
                self._poller = Poller(self)
            return self._poller

    def health_of(self, name: str) -> Health:
        health = self._health.get(name)
        if health is None:
            with self._lock:
                health = self._health.setdefault(name, Health(name))
        return health

    def provider(self, server: ServerConfig) -> OllamaProvider:
        key = (server.base_url, settings.OLLAMA_TIMEOUT, settings.OLLAMA_CONNECT_TIMEOUT)
        known = self._providers.get(server.name)
        if known is None or known[0] != key:
            provider = OllamaProvider(base_url=server.base_url, timeout=settings.OLLAMA_TIMEOUT,
                                      connect_timeout=settings.OLLAMA_CONNECT_TIMEOUT, max_retries=0,
                                      retry_backoff=settings.OLLAMA_RETRY_BACKOFF)
            # Staff messages and logs name the server by its name and masked URL.
            provider.where = f"Ollama server {server.name} ({server.shown_url})"
            provider.observer = self.health_of(server.name)
            self._providers[server.name] = known = (key, provider)
        return known[1]

    @property
    def leases(self) -> LeaseManager:
        if self.lease_manager is not None:
            return self.lease_manager
        from django.core.cache import cache

        url = redis_url_from_settings()
        # Under the cache's own KEY_PREFIX, as the consumers' caps: two deployments sharing one Redis (each with its
        # own server named "gpu-1") do not share slots.
        prefix = cache.make_key("llm:slots:")
        if self._leases is None or self._leases[0] != (url, prefix):
            self._leases = ((url, prefix), LeaseManager(url, prefix=prefix))
        return self._leases[1]

    def servers(self) -> tuple[ServerConfig, ...]:
        return registry.configs

    def forget(self) -> None:
        """Forget every server's health and the conversations (tests)."""
        self._health.clear()
        self._providers.clear()
        self._affinity.clear()
        self._queues = weakref.WeakKeyDictionary()

    # -- choosing a server ----------------------------------------------------------------------------------------

    def eligible(self, model: str) -> list[ServerConfig]:
        """The servers that may take `model` now; ModelNotFound or UpstreamUnavailable (at once) if none."""
        listed = self.servers()
        enabled = [s for s in listed if s.state == "enabled"]
        if not enabled:
            raise UpstreamUnavailable("No Ollama server takes generations now.",
                                      staff_message="Every Ollama server listed is draining or disabled.")
        wanted = canonical(model)
        having = [s for s in enabled
                  if s.slots_for(model) > 0 and (self.health_of(s.name).models is None
                                                 or wanted in self.health_of(s.name).models)]
        if not having:
            names = ", ".join(s.name for s in enabled)
            pull = f"Pull it there with: ollama pull {model}"
            raise ModelNotFound(f"Model {model!r} is not available on Ollama. {pull}",
                                staff_message=f"Model {model!r} is on none of the enabled Ollama servers "
                                              f"({names}). {pull}")
        usable = [s for s in having if self.health_of(s.name).usable]
        if not usable:
            states = ", ".join(f"{s.name}: {self.health_of(s.name).status} "
                               f"({self.health_of(s.name).last_error or 'no error'})" for s in having)
            raise UpstreamUnavailable(
                f"No Ollama server that has model {model!r} answers ({len(having)} servers tried).",
                staff_message=f"No Ollama server that has model {model!r} answers: {states}.")
        return usable

    def _ordered(self, servers: list[ServerConfig], model: str, affinity: str | None) -> list[ServerConfig]:
        if settings.OLLAMA_SERVER_CHOICE == "random":
            servers = list(servers)
            random.shuffle(servers)
            return servers
        wanted = canonical(model)
        previous = self._affinity.get(affinity) if affinity else None

        def rank(server: ServerConfig):
            health = self.health_of(server.name)
            mine = health.in_flight.get(wanted, 0)
            others = sum(health.in_flight.values()) - mine
            # Affinity; then the model there (running now, or loaded by /api/ps), a server running no other model
            # first (Ollama would have to make room for this one); then the fewest in flight for the model
            # relative to its slots.
            return (server.name != previous, not (mine > 0 or wanted in health.loaded), others > 0,
                    mine / max(1, server.slots_for(model)), others, server.name)

        return sorted(servers, key=rank)

    def _without_swaps(self, servers: list[ServerConfig], model: str) -> list[ServerConfig]:
        """While the model is loaded (or loading) on one of them, not the servers that run other models now and lack
        it: there
        Ollama would have to load it beside them or unload them first (10-60 s, and the others' prompt caches);
        a slot of a server that has it frees within one generation."""
        wanted = canonical(model)

        def present(server: ServerConfig) -> bool:  # loaded there, or being loaded for a generation of ours
            health = self.health_of(server.name)
            return wanted in health.loaded or health.in_flight.get(wanted, 0) > 0

        if not any(present(s) for s in servers):
            return servers

        def busy_elsewhere(server: ServerConfig) -> bool:
            health = self.health_of(server.name)
            return not present(server) and sum(health.in_flight.values()) > 0

        return [s for s in servers if not busy_elsewhere(s)]

    async def _take(self, server: ServerConfig, model: str) -> Slot | None:
        wanted = canonical(model)
        leases = self.leases
        first = await leases.acquire(f"{server.name}/{wanted}", server.slots_for(model))
        if first is None:
            return None
        taken = [first]
        if server.max_in_flight:
            try:
                whole = await leases.acquire(server.name, server.max_in_flight)
            except BaseException:
                # Cancelled (or Redis failed) between the two: the model's slot is given back now, not at its expiry.
                await asyncio.shield(first.release())
                raise
            if whole is None:
                await first.release()
                return None
            taken.append(whole)
        return Slot(self, server, wanted, taken)

    async def _try(self, servers: list[ServerConfig], model: str, affinity: str | None) -> Slot | None:
        if settings.OLLAMA_SERVER_CHOICE != "random":
            servers = self._without_swaps(servers, model)
        for server in self._ordered(servers, model, affinity):
            slot = await self._take(server, model)
            if slot is not None:
                return slot
        return None

    def _queue(self, model: str) -> FairQueue:
        loop = asyncio.get_running_loop()
        queues = self._queues.get(loop)
        if queues is None:
            queues = self._queues[loop] = {}
        return queues.setdefault(canonical(model), FairQueue())

    def wake_queues(self) -> None:
        try:
            queues = self._queues.get(asyncio.get_running_loop()) or {}
        except RuntimeError:
            return
        for queue in queues.values():
            queue.wake()

    def queued(self) -> int:
        """Generations waiting for a slot in this process (this event loop)."""
        try:
            queues = self._queues.get(asyncio.get_running_loop()) or {}
        except RuntimeError:
            return 0
        return sum(len(q) for q in queues.values())

    async def slot(self, model: str, *, exclude: set[str], consumer=None, affinity: str | None = None) -> Slot:
        """A slot on an eligible server (not in `exclude` while another is left), waiting in the model's fair
        queue when every one is taken; UpstreamBusy after UPSTREAM_QUEUE_TIMEOUT."""
        def candidates() -> list[ServerConfig]:
            servers = self.eligible(model)
            return [s for s in servers if s.name not in exclude] or servers

        servers = candidates()
        queue = self._queue(model)
        if not len(queue):
            slot = await self._try(servers, model, affinity)
            if slot is not None:
                return slot
        waiter = queue.join(consumer, settings.UPSTREAM_QUEUE_PER_CONSUMER)
        served = False
        poll = self.leases.poll
        try:
            # What the wait for the process's own cap (UPSTREAM_MAX_IN_FLIGHT) left of UPSTREAM_QUEUE_TIMEOUT.
            async with asyncio.timeout(admission.queue_time_left()):
                while True:
                    if queue.head() is waiter:
                        slot = await self._try(candidates(), model, affinity)
                        if slot is not None:
                            served = True
                            return slot
                        waiter.event.clear()
                        try:
                            await asyncio.wait_for(waiter.event.wait(), poll)
                        except TimeoutError:
                            pass
                    else:
                        waiter.event.clear()
                        await waiter.event.wait()
        except TimeoutError:
            raise UpstreamBusy(
                f"Every Ollama slot for model {model!r} stayed taken for {settings.UPSTREAM_QUEUE_TIMEOUT:g}s "
                f"(UPSTREAM_QUEUE_TIMEOUT). Try again later.") from None
        finally:
            queue.leave(waiter, served=served)

    def queued_everywhere(self) -> int:
        """Generations waiting for a slot in this process, over every event loop (tests, diagnostics)."""
        return sum(len(q) for queues in list(self._queues.values()) for q in queues.values())

    # -- calls ----------------------------------------------------------------------------------------------------

    async def run(self, model: str, invoke: Callable[[OllamaProvider], Awaitable[Any]], *, generation: bool = True,
                  affinity: str | None = None) -> tuple[Any, ServerConfig, Slot | None, int]:
        """`invoke(provider)` on a chosen server, moving to another one on a failure before any byte.

        The generic per-call helper: chat, generate, show and embeddings all go through it. A generation holds a
        slot (returned, for a stream to keep until it ends; released here otherwise). Returns the answer, the server,
        the slot (None once released) and the HTTP calls made.
        """
        route = ROUTE.get() or RouteState([])
        tried_here: set[str] = set()
        model_failures: list[GatewayError] = []
        calls = 0
        attempt = 0
        while True:
            try:
                if generation:
                    slot = await self.slot(model, exclude=tried_here, consumer=route.consumer, affinity=affinity)
                    server = slot.server
                else:
                    slot = None
                    servers = self.eligible(model)
                    fresh = [s for s in servers if s.name not in tried_here]
                    server = self._ordered(fresh or servers, model, affinity)[0]
            except (ModelNotFound, UpstreamUnavailable) as exc:
                if model_failures:
                    raise _with_calls(model_failures[0], calls) from None
                if isinstance(exc, ModelNotFound) and not tried_here:
                    for listed in self.servers():
                        if listed.state == "enabled":
                            route.tried.append({"model": model, "server": listed.name, "outcome": exc.type})
                raise _with_calls(exc, calls) from None
            except (UpstreamBusy, RateLimited) as exc:
                # The queue's timeout or its bound: no server was called for this wait, only the calls before it.
                exc.attempts = calls
                raise
            again = server.name in tried_here
            if again:
                attempt += 1
                try:
                    await _pause(attempt, settings.OLLAMA_RETRY_BACKOFF)
                except BaseException:
                    # Ended during the backoff (the deadline, the client gone): the slot held meanwhile goes back.
                    if slot is not None:
                        await asyncio.shield(slot.release())
                    raise
            entry = {"model": model, "server": server.name, "outcome": "pending"}
            route.tried.append(entry)
            health = self.health_of(server.name)
            try:
                answer = await invoke(self.provider(server))
            except GatewayError as exc:
                calls += exc.attempts or 1
                entry["outcome"] = exc.type
                health.outcomes[exc.type] += 1
                metrics.server_request(server.name, exc.type)
                if slot is not None:
                    await slot.release()
                tried_here.add(server.name)
                if isinstance(exc, (ModelNotFound, ModelFailed)):
                    if isinstance(exc, ModelNotFound):
                        health.lacks(model)
                    model_failures.append(exc)
                    if self._others_left(model, tried_here):
                        continue
                    raise _with_calls(model_failures[0] if isinstance(exc, ModelNotFound) else exc, calls) \
                        from None
                if getattr(exc, "failover", False) and route.retries_left > 0:
                    route.retries_left -= 1
                    continue
                raise _with_calls(exc, calls) from None
            except BaseException as exc:
                calls += 1
                entry["outcome"] = "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal_error"
                if slot is not None:
                    await asyncio.shield(slot.release())
                raise
            calls += getattr(answer, "attempts", 1) or 1
            entry["outcome"] = "succeeded"
            health.outcomes["succeeded"] += 1
            metrics.server_request(server.name, "succeeded")
            route.server = server.name
            return answer, server, slot, calls

    def _others_left(self, model: str, tried: set[str]) -> bool:
        try:
            return any(s.name not in tried for s in self.eligible(model))
        except GatewayError:
            return False

    def _remember(self, request: GenerationRequest, server: ServerConfig) -> None:
        key = conversation_key(request.messages, upto_last_user=True)
        if key is None or settings.OLLAMA_SERVER_CHOICE == "random":
            return
        self._affinity[key] = server.name
        self._affinity.move_to_end(key)
        while len(self._affinity) > AFFINITY_ENTRIES:
            self._affinity.popitem(last=False)

    # -- OllamaProvider's interface -------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> ProviderReply:
        return await self._whole(request, lambda provider: provider.generate(request))

    async def stream(self, request: GenerationRequest) -> PooledStream:
        return await self._streamed(request, lambda provider: provider.stream(request))

    async def complete(self, request: GenerationRequest, *, stream: bool = False):
        if stream:
            return await self._streamed(request, lambda provider: provider.complete(request, stream=True))
        return await self._whole(request, lambda provider: provider.complete(request))

    async def embed(self, request, *args, **kwargs):
        """Embeddings: a slot of the model on a chosen server, like a generation; its attempts are every HTTP call
        made, on every server tried (the row's `attempts`)."""
        answer, _, slot, calls = await self.run(request.model,
                                                lambda provider: provider.embed(request, *args, **kwargs))
        if slot is not None:
            await slot.release()
        return replace(answer, attempts=calls)

    async def one_call(self, model: str, invoke: Callable[[OllamaProvider], Awaitable[Any]], *,
                       generation: bool = True):
        """`invoke(provider)` once answered by a chosen server (see run()), its slot released: the shape any further
        provider call takes through the pool."""
        answer, _, slot, calls = await self.run(model, invoke, generation=generation)
        if slot is not None:
            await slot.release()
        return answer

    async def _whole(self, request: GenerationRequest, invoke) -> ProviderReply:
        answer, server, slot, calls = await self.run(request.model, invoke,
                                                     affinity=conversation_key(request.messages))
        if slot is not None:
            await slot.release()
        self._remember(request, server)
        return replace(answer, attempts=calls)

    async def _streamed(self, request: GenerationRequest, invoke) -> PooledStream:
        stream, server, slot, calls = await self.run(request.model, invoke,
                                                     affinity=conversation_key(request.messages))
        self._remember(request, server)
        return PooledStream(stream, slot, calls)

    async def catalog(self, method: str, path: str, body: dict | None = None) -> dict:
        """The listings over every healthy server: /api/tags and /api/ps merged, /api/version the lowest,
        /api/show (and any call about one model) from a server that has the model."""
        if body is not None and isinstance(body.get("model"), str):
            answer, *_ = await self.run(body["model"], lambda provider: provider.catalog(method, path, body),
                                        generation=False)
            return answer
        servers = [s for s in self.servers() if s.state != "disabled" and self.health_of(s.name).usable]
        if path == "/api/tags":
            return {"models": await self._merged(servers, "tags", method, path)}
        if path == "/api/ps":
            return {"models": await self._merged(servers, "ps", method, path)}
        if path == "/api/version":
            answers = await self._live(servers, method, path)
            versions = [str(a.get("version", "")) for a in answers if a.get("version")]
            return {"version": min(versions, key=version_key) if versions else ""}
        raise ValueError(f"no pooled listing for {path}")

    async def _merged(self, servers: list[ServerConfig], kind: str, method: str, path: str) -> list[dict]:
        """One entry per model name over the servers: what the poller read, read live where it has read nothing
        yet (tags) and live for what is loaded (ps)."""
        known = [self.health_of(s.name).tags for s in servers
                 if kind == "tags" and self.health_of(s.name).models is not None]
        unread = [s for s in servers if kind == "ps" or self.health_of(s.name).models is None]
        live = await self._live(unread, method, path, allow_none=bool(known))
        answers = known + [a.get("models") or [] for a in live]
        merged: dict[str, dict] = {}
        for entries in answers:
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("name") or entry.get("model"), str):
                    merged.setdefault(canonical(entry.get("name") or entry["model"]), entry)
        return list(merged.values())

    async def _live(self, servers: list[ServerConfig], method: str, path: str, *, allow_none: bool = False) -> list:
        if not servers:
            if allow_none:
                return []
            raise UpstreamUnavailable("No Ollama server answers.",
                                      staff_message="No listed Ollama server is enabled and healthy.")

        async def one(server):
            async with asyncio.timeout(CATALOG_TIMEOUT):
                return await self.provider(server).catalog(method, path)

        results = await asyncio.gather(*(one(s) for s in servers), return_exceptions=True)
        answers = [r for r in results if isinstance(r, dict)]
        if not answers and not allow_none:
            failure = next((r for r in results if isinstance(r, GatewayError)), None)
            raise failure or UpstreamUnavailable("No Ollama server answers.")
        return answers


def _with_calls(exc: GatewayError, calls: int) -> GatewayError:
    exc.attempts = max(calls, 1)
    return exc


async def _pause(attempt: int, backoff: float) -> None:
    delay = min(10.0, backoff * 2 ** (attempt - 1))
    await asyncio.sleep(random.uniform(delay / 2, delay))


def conversation_key(messages, *, upto_last_user: bool = False) -> str | None:
    """A conversation's key: a hash of its messages (assistant turns left out) before its last user message, or,
    `upto_last_user`, up to it included: the key its next turn will have."""
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last is None:
        return None
    end = last + 1 if upto_last_user else last
    kept = [(m.role, m.content) for m in messages[:end] if m.role != "assistant"]
    if not kept:
        return None
    return hashlib.sha256(json.dumps(kept, ensure_ascii=False).encode()).hexdigest()


def version_key(version: str) -> tuple:
    parts = []
    for piece in version.split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


class Poller:
    """Reads /api/ps and /api/tags of every listed server that is not disabled, in a thread of its own with its
    own event loop: never in a request's path. A read's body is never kept or shown when it fails."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="ollama-poller", daemon=True)
        self._thread.start()

    def refresh_now(self, name: str | None = None) -> None:
        """Both reads of every server (or one) on the poller's next turn, at once."""
        for server in self.pool.servers():
            if name is None or server.name == name:
                health = self.pool.health_of(server.name)
                health.tags_due = health.ps_due = 0.0
        self._wake.set()

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        import httpx

        timeout = httpx.Timeout(POLL_READ_TIMEOUT, connect=POLL_CONNECT_TIMEOUT, pool=POLL_CONNECT_TIMEOUT)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False,
                                     headers={"User-Agent": "llm-gateway-poller"}) as client:
            while True:
                try:
                    await poll_once(self.pool, client)
                    update_gauges()
                except Exception:  # noqa: BLE001 - the poller must outlive any surprise
                    logger.warning("Ollama poll round failed", exc_info=True)
                for _ in range(5):  # a quarter of a second, or less when "refresh now" is asked
                    if self._wake.is_set():
                        break
                    await asyncio.sleep(0.05)
                self._wake.clear()


async def poll_once(pool: Pool, client, *, force: bool = False) -> None:
    """One round: the reads that are due, of every server that is not disabled."""
    now = time.monotonic()
    jobs = []
    for server in pool.servers():
        if server.state == "disabled":
            continue
        health = pool.health_of(server.name)
        if force or now >= health.ps_due:
            health.ps_due = now + PS_EVERY
            jobs.append(_read_ps(server, health, client))
        if force or (now >= health.tags_due and health.usable):
            health.tags_due = now + TAGS_EVERY
            jobs.append(_read_tags(server, health, client))
    if jobs:
        await asyncio.gather(*jobs)


async def _get(server: ServerConfig, health: Health, client, path: str) -> dict | None:
    import httpx

    try:
        response = await client.get(server.base_url + path)
    except httpx.TimeoutException:
        health.failed(_PollFailure("upstream_timeout"))
        return None
    except httpx.HTTPError as exc:
        health.failed(_PollFailure("upstream_unavailable", kind=exc.__class__.__name__))
        return None
    status = response.status_code
    if status != 200:
        health.failed(_PollFailure("upstream_error" if status >= 500 else "upstream_refused", status=status))
        return None
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        health.failed(_PollFailure("upstream_error", kind="not Ollama's JSON"))
        return None
    health.answered()
    return data


def _entries(data: dict) -> list[dict]:
    """A listing's model entries that name a model; anything else in a server's answer is dropped."""
    models = data.get("models")
    return [e for e in models if isinstance(e, dict) and isinstance(e.get("name") or e.get("model"), str)] \
        if isinstance(models, list) else []


async def _read_ps(server: ServerConfig, health: Health, client) -> None:
    data = await _get(server, health, client, "/api/ps")
    if data is None:
        return
    entries = _entries(data)
    health.ps = entries
    health.loaded = frozenset(canonical(e.get("name") or e["model"]) for e in entries)
    if health.tags_due == 0.0:  # came back: read its models now as well
        await _read_tags(server, health, client)


async def _read_tags(server: ServerConfig, health: Health, client) -> None:
    health.tags_due = time.monotonic() + TAGS_EVERY
    data = await _get(server, health, client, "/api/tags")
    if data is None:
        return
    entries = _entries(data)
    health.tags = entries
    health.models = frozenset(canonical(e.get("name") or e["model"]) for e in entries)
    version = await _get(server, health, client, "/api/version")
    if version is not None:
        health.version = str(version.get("version", ""))[:40]


class _PollFailure(GatewayError):
    """A failed read of the poller, by type (and status) only: its body is never kept."""

    def __init__(self, type_: str, *, status: int | None = None, kind: str = ""):
        super().__init__(type_)
        self.type = type_
        self.upstream_status = status
        self.misconfigured = status in (401, 403)
        self.kind = kind


_pool: Pool | None = None
_pool_lock = threading.Lock()


def pool() -> Pool:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = Pool()
    return _pool


def refresh_if_stale() -> None:
    """The admin's list re-read if stale; in a database step (a request's, or a sync view's)."""
    if settings.GENERATOR_MODE == "live":
        registry.refresh_if_stale()


def listed() -> bool:
    return registry.listed


def _changed(sender, **kwargs) -> None:
    """A server saved or deleted in this process (the admin): re-read the list here at once (the database work
    of a sync view or a test). Other processes see it within REFRESH_SECONDS of their next request."""
    registry.refresh()


def connect_signals() -> None:
    from django.db.models.signals import post_delete, post_save

    from llm.models import OllamaServer

    post_save.connect(_changed, sender=OllamaServer, dispatch_uid="llm.servers.saved")
    post_delete.connect(_changed, sender=OllamaServer, dispatch_uid="llm.servers.deleted")


def snapshot() -> dict:
    """What diagnostics show: each listed server as this process knows it (health, models, loaded models, in flight
    against slots, last error type, last seen) and the warnings (OLLAMA_BASE_URL ignored, versions differing).
    No URL is shown unmasked, no body of a failed read at all."""
    current = pool()
    rows = []
    for server in registry.configs:
        health = current.health_of(server.name)
        in_flight = sum(health.in_flight.values())
        rows.append({
            "name": server.name, "url": server.shown_url, "state": server.state,
            "health": health.status if server.state != "disabled" else "not polled",
            "models": sorted(health.models) if health.models is not None else None,
            "loaded": sorted(health.loaded),
            "in_flight": in_flight, "in_flight_by_model": dict(sorted(health.in_flight.items())),
            "slots": server.slots, "model_slots": dict(server.model_slots), "max_in_flight": server.max_in_flight,
            "last_error": health.last_error, "version": health.version,
            "last_seen": (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(health.last_seen))
                          if health.last_seen else None),
        })
    warnings = []
    if rows:
        warnings.append(f"OLLAMA_BASE_URL ({masked_server_url(settings.OLLAMA_BASE_URL)}) is ignored: "
                        f"{len(rows)} Ollama server(s) are listed in the admin.")
    versions = {r["version"] for r in rows if r["version"]}
    if len(versions) > 1:
        warnings.append("The Ollama servers run different versions (" + ", ".join(
            f"{r['name']} {r['version']}" for r in rows if r["version"]) + "): a model may behave differently, "
            "or be missing features, depending on the server chosen. /api/version answers the lowest.")
    return {"servers": rows, "warnings": warnings, "shared_slots": current.leases.shared,
            "queued": current.queued_everywhere()}


def update_gauges() -> None:
    """Each listed server's slots and up/down in /metrics (by the poller every round, and at each scrape)."""
    if _pool is None:
        return
    for server in registry.configs:
        health = _pool.health_of(server.name)
        metrics.server_state(server.name, slots=server.slots,
                             up=server.state != "disabled" and health.usable and health.last_seen is not None)
