"""Retention of the audit log: pending rows whose process died become `abandoned`; old rows are deleted in batches.

The backstop for rows left pending: the audit spool is replayed first, and gunicorn's master marks a dead worker's
rows `worker_lost` at once (gunicorn.conf.py), so what is left is what a master that died too left behind.

Nothing is deleted before the usage rollup has counted it, and prompt template versions are never deleted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from diagnostics.models import ConnectionCheck
from llm import audit_spool, failed_keys, usage
from llm.models import Generation, ToolSet, UsageRollupState

# Beyond GENERATION_DEADLINE, after which the request path answers 504: the final audit UPDATE after that
# answer, a worker busy with other requests, and clocks of several gateway hosts a few seconds apart.
DEADLINE_MARGIN = timedelta(seconds=60)
# Rows per DELETE: each batch is its own short transaction, so writers wait at most one batch
# (measured: about 0.1 s for 2,000 rows on SQLite with the audit table's indexes).
BATCH_SIZE = 2_000

ABANDONED_MESSAGE = ("No outcome was recorded: the process serving this request stopped before it finished "
                     "(marked by prune_audit).")


def longest_request() -> timedelta:
    """The longest a row can legitimately change: older pending rows belong to a process that died.

    The row of a client address's throttled requests (llm.failed_keys) counts them for a whole minute.
    """
    return timedelta(seconds=max(settings.GENERATION_DEADLINE, failed_keys.WINDOW_SECONDS)) + DEADLINE_MARGIN


def stale_pending(now: datetime):
    return Generation.objects.filter(status=Generation.Status.PENDING, created_at__lt=now - longest_request())


def abandon_stale(*, now: datetime, batch_size: int = BATCH_SIZE) -> int:
    """Mark pending rows older than the longest request `abandoned`; returns how many."""
    marked = 0
    while True:
        ids = list(stale_pending(now).order_by("created_at").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return marked
        # status=PENDING again: a row that a slow process completed meanwhile keeps its real outcome.
        marked += Generation.objects.filter(pk__in=ids, status=Generation.Status.PENDING).update(
            status=Generation.Status.ABANDONED, error_type="abandoned", error_message=ABANDONED_MESSAGE)


def fold_finished(*, now: datetime) -> int:
    """Fold every hour into the usage rollup whose rows can no longer change (see rollup_usage)."""
    return usage.fold(until=now - longest_request())


@dataclass
class PruneResult:
    cutoff: datetime | None
    replayed: int = 0
    abandoned: int = 0
    folded_hours: int = 0
    generations: int = 0
    checks: int = 0
    tool_sets: int = 0
    batches: int = 0
    seconds: float = 0.0


def prune(*, older_than: timedelta | None, now: datetime | None = None, dry_run: bool = False,
          batch_size: int = BATCH_SIZE) -> PruneResult:
    """Abandon stale pending rows, fold finished hours, then delete generations and connection checks
    created before now - older_than (None: keep everything) in batches. A dry run only counts."""
    now = now or timezone.now()
    cutoff = now - older_than if older_than is not None else None
    started = time.monotonic()
    result = PruneResult(cutoff=cutoff)
    if dry_run:
        result.abandoned = stale_pending(now).count()
        if cutoff is not None:
            result.generations = Generation.objects.filter(created_at__lt=cutoff).count()
            result.checks = ConnectionCheck.objects.filter(created_at__lt=cutoff).count()
        result.seconds = time.monotonic() - started
        return result

    # Outcomes kept while the database was down are the truth about rows that still look pending: written first.
    result.replayed = audit_spool.replay().written
    result.abandoned = abandon_stale(now=now, batch_size=batch_size)
    result.folded_hours = fold_finished(now=now)
    if cutoff is not None:
        # Rows the rollup has not counted yet stay, whatever their age (only a cutoff under an hour reaches them).
        limit = min(cutoff, usage.folded_until() or cutoff)
        with transaction.atomic():
            state = UsageRollupState.objects.select_for_update().get(pk=1)
            if state.pruned_before is None or state.pruned_before < limit:
                # Recorded before the rows go: a rebuild must never recount an hour that is being emptied.
                state.pruned_before = limit
                state.save(update_fields=["pruned_before"])
        result.generations, batches = _delete_in_batches(Generation, limit, batch_size)
        result.batches += batches
        result.checks, batches = _delete_in_batches(ConnectionCheck, cutoff, batch_size)
        result.batches += batches
        result.tool_sets = _delete_unused_tool_sets(limit)
    result.seconds = time.monotonic() - started
    return result


def unused_tool_sets(cutoff: datetime):
    """Tool sets first seen before the cutoff that no remaining generation offered (read through the partial
    index on Generation.tool_set)."""
    used = Generation.objects.filter(tool_set__isnull=False).values("tool_set")
    return ToolSet.objects.filter(created_at__lt=cutoff).exclude(pk__in=used)


def _delete_unused_tool_sets(cutoff: datetime) -> int:
    count, _ = unused_tool_sets(cutoff).delete()
    return count


def _delete_in_batches(model, cutoff: datetime, batch_size: int) -> tuple[int, int]:
    deleted = batches = 0
    while True:
        batch = model.objects.filter(created_at__lt=cutoff).order_by("created_at").values("pk")[:batch_size]
        # One DELETE … WHERE pk IN (SELECT … LIMIT n) per batch, committed on its own (autocommit).
        count, _ = model.objects.filter(pk__in=batch).delete()
        if not count:
            return deleted, batches
        deleted += count
        batches += 1


@dataclass
class StripResult:
    generations: int = 0
    batches: int = 0
    skipped_pending: int = 0
    tool_sets: int = 0
    seconds: float = 0.0


def strip_content(*, consumer, batch_size: int = BATCH_SIZE) -> StripResult:
    """Replace the content of a consumer's rows that still hold it by HMACs and lengths (Generation.stored_form),
    keeping the rows; each batch is its own short transaction. Pending rows are left: their process still writes
    their outcome, content included (run it again later)."""
    started = time.monotonic()
    result = StripResult()
    stored = Generation.objects.filter(consumer=consumer, content_stored=True)
    last = None
    while True:
        batch = stored.exclude(status=Generation.Status.PENDING).order_by("created_at", "id")
        if last is not None:
            # Past the last batch by (created_at, id): each batch reads just its rows through gen_consumer_created.
            batch = batch.filter(models.Q(created_at__gt=last[0]) | models.Q(created_at=last[0], id__gt=last[1]))
        with transaction.atomic():
            rows = list(batch.select_for_update()[:batch_size])
            if not rows:
                break
            _write_stripped(rows)
        result.generations += len(rows)
        result.batches += 1
        last = (rows[-1].created_at, rows[-1].id)
    result.skipped_pending = stored.filter(status=Generation.Status.PENDING).count()
    # The tool sets only these rows offered: content no row points to any more. Not those first seen within the
    # longest request: a request in flight may have stored its set and not yet written the row that points to it.
    result.tool_sets = _delete_unused_tool_sets(timezone.now() - longest_request())
    result.seconds = time.monotonic() - started
    return result


def _write_stripped(rows: list[Generation]) -> None:
    """Each row as a metadata-only row is stored (Generation.stored_form), in one executemany of UPDATEs by id:
    bulk_update's CASE expressions cost the batch squared (24 s for 2,000 rows on PostgreSQL) and an UPDATE per
    row through the ORM a round trip each."""
    names = [*Generation.WITHHELD_FIELDS, "content_stored", "content_hmac", "tool_set"]
    fields = [Generation._meta.get_field(name) for name in names]
    key = Generation._meta.pk
    params = []
    for row in rows:
        row.content_stored = False
        row.tool_set_id = None
        with row.stored_form():
            params.append([*(field.get_db_prep_save(getattr(row, field.attname), connection) for field in fields),
                           key.get_db_prep_save(row.pk, connection)])
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    statement = f"UPDATE {quote(Generation._meta.db_table)} SET {assignments} WHERE {quote(key.column)} = %s"
    with connection.cursor() as cursor:
        cursor.executemany(statement, params)
