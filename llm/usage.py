"""The usage rollup: generations counted per hour × consumer × model, with a latency histogram.

`fold()` recomputes whole hours from the audit table once nothing in them can change any more (run every minute
by `rollup_usage`, and by `prune_audit` before it deletes). The request path never writes here. The dashboard
reads the rollup, plus the rows created since the last folded hour, aggregated on the fly (`usage()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import ExpressionWrapper, F, FloatField, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone

from llm.models import LATENCY_BOUNDS_MS, LATENCY_BUCKET_FIELDS, Generation, UsageHour, UsageRollupState

HOUR = timedelta(hours=1)
# The most raw rows a dashboard view counts itself. rollup_usage, run every minute, leaves just over an hour
# unfolded; a longer gap means it is not running, and the dashboard says so instead of scanning days of rows.
LIVE_WINDOW = timedelta(hours=3)
# A fold commits every this many hours, so a long backfill neither holds the write lock for long nor starts over.
FOLD_BATCH = timedelta(hours=24)
Status = Generation.Status


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _state(*, lock: bool) -> UsageRollupState:
    # get_or_create: two first runs at once must not both insert the row.
    state, _ = UsageRollupState.objects.get_or_create(pk=1)
    return UsageRollupState.objects.select_for_update().get(pk=1) if lock else state


def folded_until() -> datetime | None:
    """Where the rollup ends: generations created from then on are not counted in it yet."""
    return _state(lock=False).folded_until


def _bucket_filters() -> list[Q]:
    filters, lower = [], None
    for bound in LATENCY_BOUNDS_MS:
        filters.append(Q(latency_ms__lte=bound) if lower is None else Q(latency_ms__gt=lower, latency_ms__lte=bound))
        lower = bound
    filters.append(Q(latency_ms__gt=lower))
    return filters


def _requests(condition: Q | None = None):
    """How many requests the matching rows stand for: a row counts `repeat_count` (llm.failed_keys), usually 1."""
    return Coalesce(Sum("repeat_count", filter=condition), 0)


def _aggregate(rows) -> list[dict]:
    """Rows grouped by hour, consumer and model: the UsageHour fields of each group."""
    buckets = {name: _requests(q) for name, q in zip(LATENCY_BUCKET_FIELDS, _bucket_filters())}
    # A row standing for several requests holds their mean latency.
    latency_sum = Sum(ExpressionWrapper(F("latency_ms") * F("repeat_count"), output_field=FloatField()))
    groups = (rows.annotate(hour=TruncHour("created_at")).values("hour", "consumer_id", "model").order_by()
              .annotate(requests=_requests(),
                        succeeded=_requests(Q(status=Status.SUCCEEDED)),
                        failed=_requests(Q(status=Status.FAILED)),
                        abandoned=_requests(Q(status=Status.ABANDONED)),
                        prompt_tokens_sum=Coalesce(Sum("prompt_tokens"), 0),
                        completion_tokens_sum=Coalesce(Sum("completion_tokens"), 0),
                        latency_count=_requests(Q(latency_ms__isnull=False)),
                        latency_sum_ms=Coalesce(latency_sum, Value(0.0), output_field=FloatField()),
                        **buckets))
    result = []
    for group in groups:
        group["prompt_tokens"] = group.pop("prompt_tokens_sum")
        group["completion_tokens"] = group.pop("completion_tokens_sum")
        result.append(group)
    return result


def fold(*, until: datetime) -> int:
    """Count every hour that ends by `until` and is not counted yet, a day per transaction; returns the hours.

    Idempotent: an hour is recomputed whole (its rollup rows deleted and written again) and the state row,
    locked meanwhile, moves past it in the same transaction, so a second or concurrent run finds nothing to do.
    """
    end = floor_hour(until)
    folded = 0
    while True:
        with transaction.atomic():
            state = _state(lock=True)
            start = state.folded_until
            if start is None:
                oldest = Generation.objects.order_by("created_at").values_list("created_at", flat=True).first()
                start = floor_hour(oldest) if oldest is not None else end
            if start >= end:
                if state.folded_until is None:
                    state.folded_until = end
                    state.save(update_fields=["folded_until"])
                return folded
            stop = min(start + FOLD_BATCH, end)
            _recompute(start, stop)
            state.folded_until = stop
            state.save(update_fields=["folded_until"])
            folded += int((stop - start) / HOUR)


def _recompute(start: datetime, stop: datetime) -> None:
    UsageHour.objects.filter(hour__gte=start, hour__lt=stop).delete()
    groups = _aggregate(Generation.objects.filter(created_at__gte=start, created_at__lt=stop))
    UsageHour.objects.bulk_create([UsageHour(**group) for group in groups], batch_size=500)


def rebuild(*, since: datetime, until: datetime) -> int:
    """Recompute the hours from `since` on (e.g. after rows changed late); never hours whose rows were pruned."""
    with transaction.atomic():
        state = _state(lock=True)
        start = floor_hour(since)
        if state.pruned_before is not None:
            # The hour prune_audit cut through has lost some of its rows: its rollup is the only full count left.
            start = max(start, floor_hour(state.pruned_before) + HOUR)
        if state.folded_until is not None and start < state.folded_until:
            state.folded_until = start
            state.save(update_fields=["folded_until"])
    return fold(until=until)


def percentile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (0–1) of a latency histogram, interpolated within its bucket; None when it is empty.

    A quantile in the overflow bucket is reported as that bucket's lower bound: "at least this slow".
    """
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0
            if index == len(LATENCY_BOUNDS_MS):
                return float(lower)
            return lower + (LATENCY_BOUNDS_MS[index] - lower) * (rank - seen) / count
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


@dataclass
class Tally:
    """Usage added up over some hours, consumers and models."""

    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    abandoned: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    def add(self, row: dict) -> None:
        self.requests += row["requests"] or 0
        self.succeeded += row["succeeded"] or 0
        self.failed += row["failed"] or 0
        self.abandoned += row["abandoned"] or 0
        self.prompt_tokens += row["prompt_tokens"] or 0
        self.completion_tokens += row["completion_tokens"] or 0
        for index, name in enumerate(LATENCY_BUCKET_FIELDS):
            self.latency_buckets[index] += row[name] or 0

    @property
    def errors(self) -> int:
        return self.failed + self.abandoned

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def p50(self) -> float | None:
        return percentile(self.latency_buckets, 0.50)

    @property
    def p95(self) -> float | None:
        return percentile(self.latency_buckets, 0.95)


SUMMED = ("requests", "succeeded", "failed", "abandoned", "prompt_tokens", "completion_tokens",
          *LATENCY_BUCKET_FIELDS)


def _sums(rows, *group_by: str) -> list[dict]:
    # Same names as the columns, so a group adds to a Tally like a row of the live aggregate does.
    return list(rows.values(*group_by).order_by().annotate(**{f"{name}__s": Sum(name) for name in SUMMED})
                .values(*group_by, *(f"{name}__s" for name in SUMMED)))


def _renamed(groups: list[dict]) -> list[dict]:
    return [{key.removesuffix("__s"): value for key, value in group.items()} for group in groups]


@dataclass
class Usage:
    """What the dashboard shows: hourly and daily series, totals, and the top consumers and models."""

    hours: list[tuple[datetime, Tally]]
    days: list[tuple[datetime, Tally]]
    total_24h: Tally
    total_30d: Tally
    consumers: list[tuple[int | None, Tally]]
    models: list[tuple[str, Tally]]
    live_since: datetime
    # (from, to) of the hours neither folded nor counted live, when rollup_usage has fallen behind.
    missing: tuple[datetime | None, datetime] | None


def usage(*, now: datetime | None = None, consumer_id: int | None = None, model: str | None = None,
          days: int = 30) -> Usage:
    """The last 24 hours by hour and the last `days` days by day, from the rollup and the rows not folded yet.

    The unfolded rows are at most the last hour and the longest a request takes (see rollup_usage), read
    through the created_at index, so the cost does not grow with the table; never more than LIVE_WINDOW.
    """
    now = now or timezone.now()
    this_hour = floor_hour(now)
    first_hour = this_hour - timedelta(hours=23)
    today = this_hour.replace(hour=0)
    first_day = today - timedelta(days=days - 1)

    rolled = UsageHour.objects.filter(hour__gte=first_day, hour__lte=this_hour)
    folded = folded_until()
    live_since = max(folded or now - LIVE_WINDOW, now - LIVE_WINDOW)
    missing = (folded, live_since) if folded is None or folded < live_since else None
    live = Generation.objects.filter(created_at__gte=live_since)
    if consumer_id is not None:
        rolled, live = rolled.filter(consumer_id=consumer_id), live.filter(consumer_id=consumer_id)
    if model is not None:
        rolled, live = rolled.filter(model=model), live.filter(model=model)
    if folded is not None:
        rolled = rolled.filter(hour__lt=folded)
    # The database adds up the rollup's hours (a month is some 20,000 rows at 8 consumers × 3 models);
    # Python only adds the live groups to them.
    hours = {first_hour + timedelta(hours=i): Tally() for i in range(24)}
    day_tallies = {first_day + timedelta(days=i): Tally() for i in range(days)}
    total_24h, total_30d = Tally(), Tally()
    consumers: dict[int | None, Tally] = {}
    models: dict[str, Tally] = {}
    for group in _renamed(_sums(rolled.filter(hour__gte=first_hour), "hour")):
        hours[group["hour"]].add(group)
        total_24h.add(group)
    for group in _renamed(_sums(rolled.annotate(day=TruncDay("hour")), "day")):
        day_tallies[group["day"]].add(group)
        total_30d.add(group)
    for group in _renamed(_sums(rolled, "consumer_id")):
        consumers.setdefault(group["consumer_id"], Tally()).add(group)
    for group in _renamed(_sums(rolled, "model")):
        models.setdefault(group["model"], Tally()).add(group)
    for row in _aggregate(live):
        hour = row["hour"]
        day = hour.replace(hour=0)
        if day in day_tallies:
            day_tallies[day].add(row)
            total_30d.add(row)
            consumers.setdefault(row["consumer_id"], Tally()).add(row)
            models.setdefault(row["model"], Tally()).add(row)
        if hour in hours:
            hours[hour].add(row)
            total_24h.add(row)
    by_requests = lambda item: -item[1].requests  # noqa: E731
    return Usage(hours=list(hours.items()), days=list(day_tallies.items()), total_24h=total_24h,
                 total_30d=total_30d, consumers=sorted(consumers.items(), key=by_requests),
                 models=sorted(models.items(), key=by_requests), live_since=live_since, missing=missing)
