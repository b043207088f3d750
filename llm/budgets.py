"""Token budgets per consumer: tokens per UTC day and per UTC month, reserved at admission, settled at the end.

A generation reserves its prompt estimate (from the body's size) plus what it may produce (`max_tokens` /
`num_predict`, else BUDGET_COMPLETION_ESTIMATE). It is refused (429 budget_exceeded) when what is used, plus what
others in flight hold, leaves no room for its prompt and one token; when the room left is smaller than what it may
produce, its num_predict is capped at that room (its reply then ends with finish_reason "length"). Its real count
settles the reservation when it ends: `charged(row)`, a function of the row's own token counts, so any row with a
prompt_tokens / completion_tokens (embeddings included) counts the same way.

Where the counts live:
- With Redis (CACHE_URL redis://): running totals per consumer and window (INCRBY, expiring after the window), and
  the reservations in flight in a sorted set per consumer and window scored by their expiry, so that a process that
  dies holds nothing for long. Checking and reserving is one Lua script: atomic across every gateway process. A
  window's total that is missing (Redis restarted, evicted) is rebuilt from the audit rows.
- Otherwise: the window's audit rows summed (an index-only scan of gen_consumer_tokens, at most every
  DB_REFRESH_SECONDS per consumer and window; this process's own settlements are added in between) plus this
  process's reservations. Several processes without Redis may then overshoot by what the others hold in flight
  and spent since the last sum.

Redis is reached from the database step's thread (llm.services._begin and _write_outcome), never the event loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db.models import F, IntegerField, Q, Sum, Value
from django.db.models.functions import Coalesce
from redis.commands.core import Script

from gateway_project.conditions import Condition
from llm.errors import GatewayError
from llm.models import Consumer, Generation

logger = logging.getLogger("llm.budgets")
REDIS_DOWN = Condition(logger, "budget_store_unavailable")

# What a prompt estimate counts: a token is about four bytes of English text or JSON; an image about what a vision
# model's projector makes of it.
BYTES_PER_TOKEN = 4
IMAGE_TOKENS = 768
# A reservation outlives the longest generation (GENERATION_DEADLINE) by this much before it expires on its own.
RESERVATION_MARGIN = 60
# Without Redis: how old a window's sum of the rows may be before it is read again.
DB_REFRESH_SECONDS = 2.0
# After Redis failed to answer, budgets are counted from the database for this long before Redis is asked again.
RETRY_REDIS_AFTER = 5.0
WARNING_SHARE = 0.8
DAY, MONTH = "day", "month"


def clock() -> datetime:
    """Now, in UTC; the tests move it."""
    return datetime.now(timezone.utc)


class BudgetExceeded(GatewayError):
    """The consumer's token budget for the day or the month is spent: nothing more until it resets."""

    type, status = "budget_exceeded", 429

    def __init__(self, message: str, *, retry_after: int, window: str):
        super().__init__(message, details={"retry_after": retry_after, "window": window},
                         headers={"Retry-After": str(retry_after), "X-Budget-Remaining-Tokens": "0",
                                  "X-Budget-Window": window})


@dataclass(frozen=True)
class Window:
    """One budget window: a UTC day or month, its bounds and its key."""

    kind: str
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        return self.start.strftime("%Y-%m-%d" if self.kind == DAY else "%Y-%m")


def windows_at(now: datetime) -> tuple[Window, Window]:
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return Window(DAY, day, day + timedelta(days=1)), Window(MONTH, month, next_month)


@dataclass
class Reservation:
    """What one generation holds against its consumer's budgets, from admission until settle()."""

    consumer_id: int
    id: str
    windows: tuple[Window, ...]  # the windows whose budget applies, in the order (day, month)
    prompt_estimate: int
    tokens: int
    remaining: int  # of the tighter budget at admission, before this reservation
    window: str  # which budget is the tighter: day or month
    redis: bool
    settled: bool = field(default=False)

    def headers(self, *, charged: int | None = None) -> dict:
        """X-Budget-Remaining-Tokens (at admission, or after this generation's `charged` tokens) and X-Budget-Window."""
        remaining = self.remaining if charged is None else max(0, self.remaining - charged)
        return {"X-Budget-Remaining-Tokens": str(remaining), "X-Budget-Window": self.window}


def applies(consumer: Consumer) -> bool:
    return consumer.tokens_per_day is not None or consumer.tokens_per_month is not None


def prompt_estimate(request, body_size: int) -> int:
    """The prompt's tokens as far as the body's size tells: the body without its images (a template's rendered
    messages instead, for a templated request), plus IMAGE_TOKENS per image."""
    images = [image for message in request.messages for image in message.images]
    if request.completion is not None:
        images.extend(request.completion.images)
    if request.role:
        size = sum(len(message.content) for message in request.messages)
    else:
        size = body_size - sum(4 * math.ceil(image.size / 3) for image in images)
    return max(1, math.ceil(max(size, 0) / BYTES_PER_TOKEN)) + IMAGE_TOKENS * len(images)


def completion_wanted(options: dict | None) -> tuple[int, bool]:
    """What the request may produce: (its num_predict, True) when it names one, else (the estimate, False);
    nothing for a request without options to produce (an embedding: None)."""
    if options is None:
        return 0, True
    value = options.get("num_predict")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, True
    return settings.BUDGET_COMPLETION_ESTIMATE, False


def admit(*, consumer: Consumer, estimate: int, options: dict | None) -> Reservation | None:
    """Reserve a call's tokens against the consumer's budgets (None: no budget applies): its prompt `estimate`
    (prompt_estimate()) and what its Ollama `options` may produce (None: nothing, as for an embedding).

    Raises BudgetExceeded when it does not fit (never in shadow mode). Caps options["num_predict"] at the room left
    when that is less than what the request may produce. Called in a database step.
    """
    global _redis_failed_at
    if not applies(consumer):
        return None
    now = clock()
    day, month = windows_at(now)
    budgets = [(window, budget) for window, budget in ((day, consumer.tokens_per_day),
                                                         (month, consumer.tokens_per_month)) if budget is not None]
    wanted, named = completion_wanted(options)
    # The least it needs: its prompt, and one token of reply when it makes one.
    minimum = max(1, estimate + (1 if options is not None else 0))
    shadow = settings.BUDGET_SHADOW_MODE
    reservation = Reservation(consumer_id=consumer.pk, id=uuid.uuid4().hex, windows=tuple(w for w, _ in budgets),
                              prompt_estimate=estimate, tokens=0, remaining=0, window=DAY, redis=False)
    left = None
    client = _redis()
    if client is not None:
        try:
            left = _reserve_in_redis(client, consumer, reservation, budgets, estimate + wanted, minimum, shadow, now)
            reservation.redis = True
        except Exception as exc:  # noqa: BLE001 - each redis error class; counted from the database instead
            _redis_failed_at = time.monotonic()
            REDIS_DOWN.occurred("token budgets counted per process from the database: Redis is unavailable; it is "
                                f"asked again every {RETRY_REDIS_AFTER:g}s", error=f"{exc.__class__.__name__}: {exc}")
        else:
            REDIS_DOWN.cleared("token budgets counted in Redis again")
    if left is None:
        left = _reserve_locally(consumer, reservation, budgets, estimate + wanted, minimum, shadow)
    tightest = min(left, key=lambda item: item[1])
    reservation.window, reservation.remaining = tightest[0].kind, max(0, tightest[1])
    if reservation.tokens == 0:
        _refuse(consumer, left, minimum)
    if shadow and reservation.remaining < minimum:
        logger.info("token budget spent; served all the same (BUDGET_SHADOW_MODE)",
                    extra={"consumer": consumer.name, "window": reservation.window})
    if options is None or shadow:
        return reservation
    if reservation.tokens < estimate + wanted:
        # The room left is less than the reply may take: Ollama stops there (done_reason "length").
        options["num_predict"] = reservation.tokens - estimate
    elif not named:
        # Nothing named: the reply may run on past the estimate, but never past the room left.
        options["num_predict"] = max(1, reservation.remaining - estimate)
    return reservation


def _refuse(consumer: Consumer, left: list, minimum: int) -> None:
    # Of the budgets without room, the one that resets last: only then is the consumer served again.
    spent = [window for window, room in left if room < minimum]
    window = max(spent, key=lambda w: w.end)
    budget = consumer.tokens_per_day if window.kind == DAY else consumer.tokens_per_month
    retry_after = max(1, math.ceil((window.end - clock()).total_seconds()))
    which = "daily" if window.kind == DAY else "monthly"
    raise BudgetExceeded(
        f"Consumer {consumer.name!r} has spent its {which} token budget ({budget} tokens per {window.kind}, "
        f"prompt and completion); it resets at {window.end:%Y-%m-%d %H:%M} UTC, in {retry_after}s.",
        retry_after=retry_after, window=window.kind)


def charged(row: Generation, prompt_estimate: int) -> int:
    """The tokens a finished row counts: prompt plus completion (thinking is in completion).

    A prompt Ollama did not count (cached, or a stream cut short) counts its estimate, when the model ran at all; a
    failure counts what Ollama reported.
    """
    completion = row.completion_tokens or 0
    prompt = row.prompt_tokens
    if prompt is None:
        ran = row.status == Generation.Status.SUCCEEDED or completion > 0
        prompt = prompt_estimate if ran else 0
    return prompt + completion


def settle(reservation: Reservation | None, tokens: int) -> None:
    """Replace the reservation by the tokens really used (0 for a request refused after admission). Once only."""
    if reservation is None or reservation.settled:
        return
    reservation.settled = True
    if reservation.redis:
        client = _redis()
        if client is None:
            return  # the cache is no longer Redis (tests): the reservation expires on its own
        keys = []
        for window in reservation.windows:
            keys += _keys(reservation.consumer_id, window)
        # In the caller's thread: handing it to a thread of its own was measured slower (the GIL's hand-overs).
        _settle_in_redis(client, keys, f"{reservation.id}:{reservation.tokens}", tokens)
        return
    with _local_lock:
        held = _local_held.get(reservation.consumer_id)
        if held is not None:
            held.pop(reservation.id, None)
            if not held:
                _local_held.pop(reservation.consumer_id, None)
        for window in reservation.windows:
            key = (reservation.consumer_id, window.kind, window.key)
            if key in _local_used:
                used, read_at = _local_used[key]
                _local_used[key] = (used + tokens, read_at)


# -- use, for the admin and /metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    window: Window
    budget: int
    used: int

    @property
    def share(self) -> float:
        return 1.0 if self.budget == 0 else self.used / self.budget

    @property
    def warning(self) -> bool:
        return self.share >= WARNING_SHARE


def use_of(consumer: Consumer) -> list[Use]:
    """Today's and this month's use against each budget the consumer has (settled tokens)."""
    day, month = windows_at(clock())
    budgets = [(w, b) for w, b in ((day, consumer.tokens_per_day), (month, consumer.tokens_per_month))
               if b is not None]
    if not budgets:
        return []
    used = None
    client = _redis()
    if client is not None:
        try:
            values = client.mget([_total_key(consumer.pk, w) for w, _ in budgets])
            if all(v is not None for v in values):
                used = [int(v) for v in values]
        except Exception:  # noqa: BLE001 - shown from the rows instead
            used = None
    if used is None:
        sums = used_in_database(consumer.pk, [w for w, _ in budgets])
        used = [sums[w.kind] for w, _ in budgets]
    return [Use(window, budget, count) for (window, budget), count in zip(budgets, used)]


def consumers_past_warning() -> int:
    """How many active consumers have used WARNING_SHARE or more of a budget in its current window."""
    budgeted = Consumer.objects.filter(is_active=True).filter(
        Q(tokens_per_day__isnull=False) | Q(tokens_per_month__isnull=False))
    return sum(1 for consumer in budgeted if any(use.warning for use in use_of(consumer)))


def used_in_database(consumer_id: int, windows) -> dict[str, int]:
    """The tokens the audit rows of the consumer count in each window (by kind), in one query."""
    counted = Coalesce(F("budget_tokens"),
                       Coalesce(F("prompt_tokens"), Value(0)) + Coalesce(F("completion_tokens"), Value(0)),
                       output_field=IntegerField())
    earliest = min(w.start for w in windows)
    latest = max(w.end for w in windows)
    rows = Generation.objects.filter(consumer_id=consumer_id, created_at__gte=earliest, created_at__lt=latest)
    sums = rows.aggregate(
        **{w.kind: Coalesce(Sum(counted, filter=Q(created_at__gte=w.start, created_at__lt=w.end)), Value(0))
           for w in windows})
    return {kind: int(value) for kind, value in sums.items()}


# -- Redis ------------------------------------------------------------------------------------------------------------


def _redis():
    """The raw client of the cache when it is Redis (Django's RedisCache), else None."""
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return None
    if _redis_failed_at is not None and time.monotonic() - _redis_failed_at < RETRY_REDIS_AFTER:
        return None  # it did not answer a moment ago: no request waits for its timeout again meanwhile
    # Django's get_client() builds a new Redis object around the pool on every call (0.2 ms): one per pool here.
    pool = backend._cache._get_connection_pool(True)
    client = _clients.get(pool)
    if client is None:
        client = _clients[pool] = backend._cache._client(connection_pool=pool)
    return client


_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_redis_failed_at: float | None = None


def _keys(consumer_id: int, window: Window) -> list[str]:
    """The window's total and its set of reservations held, under the cache's KEY_PREFIX."""
    backend = caches["default"]
    base = f"llm:budget:{consumer_id}:{window.kind}:{window.key}"
    return [backend.make_key(f"{base}:used"), backend.make_key(f"{base}:held")]


def _total_key(consumer_id: int, window: Window) -> str:
    return _keys(consumer_id, window)[0]


# KEYS: for each budget, its total and its held set. ARGV: now, expiry of the reservation, its id, tokens wanted,
# minimum (the prompt estimate plus one), shadow (1/0), then for each budget: its size and its keys' expiry.
# Returns {-1, i} when budget i's total is missing (to be rebuilt), else {tokens reserved, room left of each...}.
_RESERVE = """
local now, expires, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local wanted, minimum, shadow = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local n = #KEYS / 2
local rooms, room = {}, nil
for i = 1, n do
  local used = redis.call('GET', KEYS[2 * i - 1])
  if not used then return {-1, i} end
  local heldkey = KEYS[2 * i]
  redis.call('ZREMRANGEBYSCORE', heldkey, '-inf', now)
  local held = 0
  for _, member in ipairs(redis.call('ZRANGE', heldkey, 0, -1)) do
    held = held + tonumber(string.match(member, ':(%d+)$'))
  end
  local left = tonumber(ARGV[6 + 2 * i - 1]) - tonumber(used) - held
  rooms[i] = left
  if room == nil or left < room then room = left end
end
local tokens = wanted
if not shadow then
  if room < minimum then tokens = 0 elseif room < wanted then tokens = room end
end
if tokens > 0 then
  for i = 1, n do
    redis.call('ZADD', KEYS[2 * i], expires, id .. ':' .. tokens)
    redis.call('EXPIREAT', KEYS[2 * i], tonumber(ARGV[6 + 2 * i]))
  end
end
local result = {tokens}
for i = 1, n do result[i + 1] = rooms[i] end
return result
"""

# KEYS: for each budget, its total and its held set. ARGV: the reservation's member, tokens used.
# A total that is missing stays missing: the next admission rebuilds it from the rows, this one's included.
_SETTLE = """
for i = 1, #KEYS / 2 do
  redis.call('ZREM', KEYS[2 * i], ARGV[1])
  if tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then
    redis.call('INCRBY', KEYS[2 * i - 1], ARGV[2])
  end
end
return 1
"""

# Run with EVALSHA by whichever client is passed; loaded again if Redis forgot them (a restart).
_RESERVE_SCRIPT = Script(None, _RESERVE.encode())
_SETTLE_SCRIPT = Script(None, _SETTLE.encode())


def _reserve_in_redis(client, consumer, reservation: Reservation, budgets, wanted: int, minimum: int, shadow: bool,
                      now):
    keys, sizes = [], []
    for window, budget in budgets:
        keys += _keys(consumer.pk, window)
        # Kept a day past the window: a generation that started in it may settle a little later.
        sizes += [budget, int((window.end + timedelta(days=1)).timestamp())]
    now_s = now.timestamp()
    expires = now_s + settings.GENERATION_DEADLINE + RESERVATION_MARGIN
    args = [now_s, expires, reservation.id, wanted, minimum, "1" if shadow else "0", *sizes]
    for _ in range(3):
        result = _RESERVE_SCRIPT(keys=keys, args=args, client=client)
        if result[0] != -1:
            break
        # Redis lost (or never had) this window's total: rebuilt from the audit rows; NX, as another process may
        # be doing the same.
        window, _ = budgets[int(result[1]) - 1]
        used = used_in_database(consumer.pk, [window])[window.kind]
        client.set(_total_key(consumer.pk, window), used, nx=True,
                   exat=int((window.end + timedelta(days=1)).timestamp()))
    else:
        raise RuntimeError("the budget totals could not be rebuilt")
    reservation.tokens = int(result[0])
    return [(window, int(room)) for (window, _), room in zip(budgets, result[1:])]


def _settle_in_redis(client, keys: list[str], member: str, tokens: int) -> None:
    try:
        _SETTLE_SCRIPT(keys=keys, args=[member, tokens], client=client)
    except Exception as exc:  # noqa: BLE001 - the reservation expires; a lost total is rebuilt from the rows
        REDIS_DOWN.occurred("token budget not settled in Redis: the reservation expires on its own",
                            error=f"{exc.__class__.__name__}: {exc}")



# -- without Redis: the rows, and this process's reservations ---------------------------------------------------------

_local_lock = threading.Lock()
_local_held: dict[int, dict[str, Reservation]] = {}
# (consumer, window kind, window key) -> (tokens used, time.monotonic() of the sum it started from)
_local_used: dict[tuple[int, str, str], tuple[int, float]] = {}
_consumer_locks: dict[int, threading.Lock] = {}


def _used_locally(consumer_id: int, windows) -> dict[str, int]:
    """The windows' tokens used: the rows' sum, read again once DB_REFRESH_SECONDS old, plus this process's
    settlements since. A settlement between the rows' read and its own addition counts twice until the next read:
    never less than what was used."""
    now = time.monotonic()
    with _local_lock:
        stale = [w for w in windows if now - _local_used.get((consumer_id, w.kind, w.key), (0, -1e9))[1]
                 > DB_REFRESH_SECONDS]
    if stale:
        sums = used_in_database(consumer_id, stale)
        with _local_lock:
            for window in stale:
                _local_used[(consumer_id, window.kind, window.key)] = (sums[window.kind], now)
            if len(_local_used) > 10_000:  # past windows of many consumers: start over
                current = {(consumer_id, w.kind, w.key) for w in windows}
                for key in [k for k in _local_used if k not in current]:
                    del _local_used[key]
    with _local_lock:
        return {w.kind: _local_used[(consumer_id, w.kind, w.key)][0] for w in windows}


def _reserve_locally(consumer, reservation: Reservation, budgets, wanted: int, minimum: int, shadow: bool):
    with _local_lock:
        lock = _consumer_locks.setdefault(consumer.pk, threading.Lock())
    # One admission of a consumer at a time in this process: the rows' sum and the reservations held agree.
    with lock:
        used = _used_locally(consumer.pk, [w for w, _ in budgets])
        with _local_lock:
            held = list(_local_held.get(consumer.pk, {}).values())
        rooms = []
        for window, budget in budgets:
            in_flight = sum(r.tokens for r in held if window in r.windows)
            rooms.append((window, budget - used[window.kind] - in_flight))
        room = min(r for _, r in rooms)
        tokens = wanted
        if not shadow:
            if room < minimum:
                tokens = 0
            elif room < wanted:
                tokens = room
        reservation.tokens = tokens
        if tokens:
            with _local_lock:
                _local_held.setdefault(consumer.pk, {})[reservation.id] = reservation
    return rooms


def forget_local() -> None:
    """Drop this process's reservations (tests: a fresh process)."""
    global _redis_failed_at
    with _local_lock:
        _local_held.clear()
        _local_used.clear()
    _redis_failed_at = None
